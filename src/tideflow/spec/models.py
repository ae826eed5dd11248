"""Pydantic models of the pipeline file.

The top-level model is built from the registry: each registered component contributes a model
that joins the common envelope (``type``, ``name``, ``input``, ``when``) with its own settings,
and ``sources`` / ``steps`` / ``sinks`` are unions discriminated by ``type``. The same models
drive validation, ``tideflow schema`` and ``tideflow connectors describe``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from typing import Annotated, Any, Literal, Optional, Union, cast

from pydantic import ConfigDict, Field, create_model, model_validator

from tideflow.core.contracts import KINDS, Kind
from tideflow.core.expressions import SqlExpression
from tideflow.core.settings import CheckpointSpec, Settings
from tideflow.registry import Registry

NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_\-]*$"


class FieldIssue(ValueError):
    """A rule broken by a whole model, reported at the field where the user can fix it."""

    def __init__(self, path: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.path = path


class SourceSpec(Settings):
    """Keys every source accepts."""

    type: str = Field(description="The source type, e.g. `file` or `generate`.")
    name: str | None = Field(
        None, pattern=NAME_PATTERN, description="Unique name; defaults to the type."
    )


class StepSpec(Settings):
    """Keys every step accepts."""

    type: str = Field(description="The step type, e.g. `filter` or `sql`.")
    name: str | None = Field(
        None, pattern=NAME_PATTERN, description="Unique name; defaults to the type."
    )
    input: str | list[str] | None = Field(
        None,
        description="Where records come from: a source, step, or `step.port`; "
        "several names merge their records. Defaults to the previous step (or all sources).",
    )


class SinkSpec(StepSpec):
    """Keys every sink accepts."""

    type: str = Field(description="The sink type, e.g. `file` or `stdout`.")
    when: SqlExpression | None = Field(
        None, description="SQL-like condition; only matching records reach this sink."
    )


ENVELOPES: dict[Kind, type[Settings]] = {"source": SourceSpec, "step": StepSpec, "sink": SinkSpec}


class OnErrorSpec(Settings):
    """What happens to a record that cannot be parsed, cast or processed."""

    action: Literal["fail", "skip", "dead_letter"] = Field(
        "dead_letter",
        description="`fail` stops the run; `skip` drops and counts the record; `dead_letter` "
        "stores it with its reason (the default).",
    )
    sink: SinkSpec | None = Field(
        None,
        description="Where dead letters go; default is the ledger in the state store, "
        "read with `tideflow deadletters`.",
    )

    @model_validator(mode="before")
    @classmethod
    def _from_word(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"action": value}
        return value


class ScheduleSpec(Settings):
    """When `tideflow serve` starts a bounded pipeline on its own: a cron expression or an
    interval. A run that falls due while the previous one is still going is recorded as
    missed, never started beside it."""

    cron: str | None = Field(
        None, description="Five-field cron expression in UTC, e.g. `*/5 * * * *`."
    )
    every: float | None = Field(None, gt=0, description="Seconds between run starts.")

    @model_validator(mode="after")
    def _exactly_one(self) -> ScheduleSpec:
        if (self.cron is None) == (self.every is None):
            raise FieldIssue((), "give exactly one of `cron` or `every`")
        if self.cron is not None and len(self.cron.split()) not in (5, 6):
            raise FieldIssue(
                ("cron",),
                f"{self.cron!r} is not a cron expression: expected five fields "
                "(minute hour day-of-month month day-of-week), e.g. `*/5 * * * *`",
            )
        return self


class NotifySpec(Settings):
    """Where an alert goes: a webhook (JSON, or Slack's `{"text": ...}` shape) or the log."""

    type: Literal["webhook", "log"] = Field(description="`webhook` or `log`.")
    url: str | None = Field(None, description="The webhook's URL (for `webhook`).")
    format: Literal["json", "slack"] = Field(
        "json", description='`json`: the full alert event; `slack`: `{"text": ...}`.'
    )

    @model_validator(mode="after")
    def _url_for_webhook(self) -> NotifySpec:
        if self.type == "webhook" and not self.url:
            raise FieldIssue(("url",), "a webhook needs a `url`")
        return self


class AlertSpec(Settings):
    """A rule checked by `tideflow serve` while the pipeline runs."""

    name: str = Field(pattern=NAME_PATTERN, description="The alert's name, shown in messages.")
    metric: Literal[
        "dead_letter_rate", "no_records", "source_lag", "source_lag_records", "matching_records"
    ] = Field(
        description="`dead_letter_rate`: dead-lettered / records read over the window; "
        "`no_records`: no record read for the whole window; `source_lag`: seconds a source "
        "reports it is behind (topic and kafka sources: the age of the newest record read "
        "while a backlog remains); `source_lag_records`: records a source reports it is "
        "behind (topic and kafka: high watermark minus position over its partitions); "
        "`matching_records`: records at `step`'s output matching `where` over the window "
        "(a rule on the data itself)."
    )
    above: float | None = Field(
        None,
        ge=0,
        description="Threshold: a rate for `dead_letter_rate` (0.01 = 1%), seconds for "
        "`source_lag`, records for `source_lag_records` and `matching_records`.",
    )
    step: str | None = Field(
        None,
        description="For `matching_records`: the step (or `step.port`) whose output is checked.",
    )
    where: SqlExpression | None = Field(
        None, description="For `matching_records`: SQL condition a record must match to count."
    )
    for_: float = Field(
        60.0, gt=0, alias="for", description="Seconds the condition must hold before firing."
    )
    repeat: float | None = Field(
        None, gt=0, description="Send again this often while the alert holds; once if omitted."
    )
    notify: list[NotifySpec] = Field(
        default_factory=lambda: [NotifySpec(type="log")],
        description="Notifications; the log by default.",
    )

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _threshold(self) -> AlertSpec:
        if self.metric != "no_records" and self.above is None:
            raise FieldIssue(("above",), f"`{self.metric}` needs a threshold in `above`")
        if self.metric == "matching_records":
            for key in ("step", "where"):
                if getattr(self, key) is None:
                    raise FieldIssue((key,), f"`matching_records` needs `{key}`")
        return self


class PipelineSpec(Settings):
    """A whole pipeline file."""

    name: str = Field(pattern=NAME_PATTERN, description="The pipeline's name; keys its state.")
    description: str | None = None
    vars: dict[str, Any] = Field(
        default_factory=dict, description="Values for `${NAME}` interpolation."
    )
    source: SourceSpec | None = Field(None, description="The source (or use `sources`).")
    sources: list[SourceSpec] | None = Field(None, description="Several sources, merged.")
    steps: list[StepSpec] = Field(default_factory=list, description="Steps, in order.")
    sink: SinkSpec | None = Field(None, description="The sink (or use `sinks`).")
    sinks: list[SinkSpec] | None = Field(None, description="Several sinks; each gets the data.")
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    on_error: OnErrorSpec = Field(default_factory=OnErrorSpec)
    state: str | None = Field(
        None,
        description="State store: a SQLite file path (default `.tideflow/state.db` beside the "
        "pipeline file), or a `postgresql://` URL to share state between workers; unset: "
        "the `TIDEFLOW_STATE` environment variable, if set.",
    )
    queue_size: int = Field(
        4, ge=1, le=1024, description="Batches buffered per source (back-pressure)."
    )
    schedule: ScheduleSpec | None = Field(
        None, description="Runs started by `tideflow serve` (bounded pipelines only)."
    )
    alerts: list[AlertSpec] = Field(
        default_factory=list, description="Alert rules checked by `tideflow serve`."
    )

    @model_validator(mode="after")
    def _one_of_each(self) -> PipelineSpec:
        for one, many in (("source", "sources"), ("sink", "sinks")):
            single, several = getattr(self, one), getattr(self, many)
            if (single is None) == (several is None):
                where = many if several is not None else one
                raise FieldIssue((where,), f"give exactly one of `{one}` or `{many}`")
            if several is not None and not several:
                raise FieldIssue((many,), f"`{many}` must list at least one {one}")
        self._name_nodes()
        self._check_alert_steps()
        return self

    def _check_alert_steps(self) -> None:
        names = [str(node.name) for _, node in self._located_nodes()]
        for i, alert in enumerate(self.alerts):
            if alert.step is not None and alert.step.split(".")[0] not in names:
                raise FieldIssue(
                    ("alerts", i, "step"),
                    f"no step named {alert.step!r}; the pipeline has: {', '.join(names)}",
                )

    def _located_nodes(self) -> list[tuple[tuple[str | int, ...], SourceSpec | StepSpec]]:
        """Every component with its place in the file."""
        located: list[tuple[tuple[str | int, ...], SourceSpec | StepSpec]] = []
        groups: list[tuple[str, str, Sequence[SourceSpec | StepSpec]]] = [
            ("source", "sources", self.all_sources),
            ("steps", "steps", self.steps),
            ("sink", "sinks", self.all_sinks),
        ]
        for one, many, items in groups:
            several = one == "steps" or getattr(self, many) is not None
            for i, node in enumerate(items):
                where: tuple[str | int, ...] = (many, i) if several else (one,)
                located.append((where, node))
        return located

    def _name_nodes(self) -> None:
        """Give unnamed components a unique default name; reject duplicate explicit names."""
        taken: set[str] = set()
        located = self._located_nodes()
        nodes = [node for _, node in located]
        for where, node in located:
            if node.name is not None:
                if node.name in taken:
                    raise FieldIssue(
                        (*where, "name"),
                        f"two components are named {node.name!r}; names must be unique",
                    )
                taken.add(node.name)
        for node in nodes:
            if node.name is None:
                base = re.sub(r"[^A-Za-z0-9_\-]", "_", node.type)
                candidate, n = base, 1
                while candidate in taken:
                    n += 1
                    candidate = f"{base}_{n}"
                object.__setattr__(node, "name", candidate)
                taken.add(candidate)

    @property
    def all_sources(self) -> list[SourceSpec]:
        """Sources, whether given as `source` or `sources`."""
        return [self.source] if self.source is not None else list(self.sources or [])

    @property
    def all_sinks(self) -> list[SinkSpec]:
        """Sinks, whether given as `sink` or `sinks`."""
        return [self.sink] if self.sink is not None else list(self.sinks or [])


_model_cache: dict[tuple[int, int, frozenset[str] | None, bool], type[PipelineSpec]] = {}
_component_cache: dict[tuple[int, int, Kind, str], type[Settings]] = {}


def component_model(registry: Registry, kind: Kind, type_name: str) -> type[Settings]:
    """The full model of one component: the envelope joined with its settings."""
    key = (id(registry), registry.version, kind, type_name)
    if key in _component_cache:
        return _component_cache[key]
    reg = registry.get(kind, type_name)
    fields: dict[str, Any] = {
        "type": (Literal[type_name], Field(description=reg.summary or type_name)),
        "__base__": (ENVELOPES[kind], reg.config_model),
        "__doc__": reg.cls.__doc__,
    }
    model = cast(type[Settings], create_model(f"{kind}:{type_name}", **fields))
    _component_cache[key] = model
    return model


_UNUSED_TYPE = "<no type of this kind is used>"


class _NotUsed(Settings):
    """The member of a narrowed model's union for a kind its pipeline does not use.

    It accepts nothing, so any component of that kind fails the narrowed validation and the
    full model reports it as it always has.
    """

    @model_validator(mode="before")
    @classmethod
    def _refuse(cls, data: Any) -> Any:
        raise ValueError("no component of this kind is expected")


_unused_cache: dict[Kind, type[Settings]] = {}


def _unused_model(kind: Kind) -> type[Settings]:
    """The placeholder member (see :class:`_NotUsed`) for ``kind``'s union."""
    if kind not in _unused_cache:
        fields: dict[str, Any] = {
            "type": (Literal[_UNUSED_TYPE], Field(description="Not used.")),
            "__base__": (_NotUsed, ENVELOPES[kind]),
        }
        _unused_cache[kind] = create_model(f"{kind}:unused", **fields)
    return _unused_cache[kind]


def _union(models: list[type[Settings]]) -> Any:
    """A union of component models discriminated by their ``type`` literal."""
    if not models:
        raise RuntimeError("a component kind has no registered types")
    return Annotated[Union[tuple(models)], Field(discriminator="type")]  # noqa: UP007


def pipeline_model(
    registry: Registry, only: AbstractSet[str] | None = None, *, listed_only: bool = False
) -> type[PipelineSpec]:
    """The top-level model whose component lists are unions over the registered types.

    ``only`` narrows each union to the types named there (those a pipeline uses): building
    the model of every registered component costs about 0.1 s at start-up. A narrowed model
    accepts exactly what the full one accepts for a pipeline using only those types (each
    component is validated by its own ``type``'s model); for anything else, such as an
    unknown type, validate with the full model, whose errors list every type.

    Validation accepts every registered type; ``listed_only`` leaves out the unlisted ones
    (the test kit's ``memory``), for the JSON Schema users' editors complete from.
    """
    registry.load_plugins()
    key = (
        id(registry),
        registry.version,
        None if only is None else frozenset(only),
        listed_only,
    )
    if key in _model_cache:
        return _model_cache[key]

    def models(kind: Kind) -> list[type[Settings]]:
        every = sorted(registry.items(kind, unlisted=not listed_only))
        chosen = every if only is None else [n for n in every if n in only]
        if not chosen and only is not None:
            # A union needs a member, and a real type would import its module (numpy, an
            # HTTP client, ...) for a kind the pipeline does not use.
            return [_unused_model(kind)]
        return [component_model(registry, kind, name) for name in chosen or every[:1]]

    source_union, step_union, sink_union = (_union(models(kind)) for kind in KINDS)
    dead_letter_model = create_model(
        "OnError",
        __base__=OnErrorSpec,
        sink=(Optional[sink_union], None),  # noqa: UP045
    )
    fields: dict[str, Any] = {
        "source": (Optional[source_union], None),  # noqa: UP045
        "sources": (Optional[list[source_union]], None),  # type: ignore[valid-type]  # noqa: UP045
        "steps": (list[step_union], Field(default_factory=list)),  # type: ignore[valid-type]
        "sink": (Optional[sink_union], None),  # noqa: UP045
        "sinks": (Optional[list[sink_union]], None),  # type: ignore[valid-type]  # noqa: UP045
        "on_error": (dead_letter_model, Field(default_factory=dead_letter_model)),
    }
    model: type[PipelineSpec] = create_model("Pipeline", __base__=PipelineSpec, **fields)
    _model_cache[key] = model
    return model

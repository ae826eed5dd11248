"""The ``aggregate`` step: keyed running aggregates without windows, for upsert sinks.

When the step emits is its ``emit`` setting: after every batch (``on_update``), once when
the bounded input ends (``on_end``), or at most once per period (``{every: 1m}``). Each key's
state row carries a flag, *changed since it was last emitted*; an emission is the flagged rows,
and clears the flags. The flags are in the snapshot, so a checkpoint holds exactly what has
not been emitted yet: after a crash the restored step emits those keys, and no others.

Checkpoints are incremental (:meth:`Aggregate.snapshot_changes`): a second flag per row,
*changed since the last checkpoint*, selects the rows to store; keys forgotten by
``expire_after`` are stored as removed, and an emission (which clears every key's first
flag) as that one reset, so the state store rebuilds exactly the state checkpointed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

import polars as pl
from pydantic import BeforeValidator, Field, ValidationError, field_validator, model_validator

from tideflow.core.contracts import JSON, MAIN_PORT, Context, Step, StepOutput
from tideflow.core.delta import FrameDelta, StateDelta
from tideflow.core.settings import Settings
from tideflow.operators.timeseries._common import (
    ALL,
    Duration,
    PositiveDuration,
    T,
    key_frame,
    parse_duration,
    require_columns,
)
from tideflow.operators.timeseries.aggs import (
    columns_used,
    final_exprs,
    merge_exprs,
    parse_aggregations,
    row_exprs,
)
from tideflow.registry import component

SEEN = "__seen"
"""Internal column: newest event time (or arrival number) of a key, for expiry."""

DIRTY = "__dirty"
"""Internal column: the key changed since its row was last emitted."""

CHANGED = "__changed"
"""Internal column: the key changed since the last checkpoint (never stored: a restored row
is as checkpointed)."""


class EmitEvery(Settings):
    """Periodic emission: ``emit: {every: 1m}``."""

    every: PositiveDuration = Field(
        description="Emit the keys changed since the last emission at most once per this "
        "period (wall clock, checked about twice a second), e.g. `30s`."
    )


EMIT_MODES = ("on_update", "on_end")


def _emit_setting(value: Any) -> Any:
    """Check ``emit`` as the form it is written in, so that an error names that form's
    problem only (a union would report a mismatch with every form)."""
    if isinstance(value, dict):
        try:
            return EmitEvery.model_validate(value)
        except ValidationError as exc:
            words = {"missing": "required, e.g. `{every: 30s}`", "extra_forbidden": "unknown key"}
            problems = [
                f"{'.'.join(map(str, e['loc']))}: "
                + words.get(e["type"], e["msg"].removeprefix("Value error, "))
                for e in exc.errors()
            ]
            raise ValueError("; ".join(problems)) from None
    if isinstance(value, EmitEvery) or value in EMIT_MODES:
        return value
    raise ValueError("write `on_update`, `on_end` or `{every: <duration>}` (e.g. `{every: 30s}`)")


EmitSetting = Annotated[Literal["on_update", "on_end"] | EmitEvery, BeforeValidator(_emit_setting)]
"""``on_update``, ``on_end`` or ``{every: <duration>}``."""


class AggregateConfig(Settings):
    """Settings of ``aggregate``."""

    keys: list[str] = Field(default_factory=list, description="Columns to aggregate by.")
    aggregations: dict[str, str] = Field(
        min_length=1,
        description="Output column -> `func(column)`: count() / count(col), sum, mean, min, "
        "max, first, last, stddev, variance.",
    )
    time_column: str | None = Field(
        None,
        description="Event time; orders `first`/`last` (arrival order without it) and drives "
        "`expire_after`.",
    )
    expire_after: Duration | None = Field(
        None,
        description="Forget a key when the newest event time seen is this much past the key's "
        "newest record (bounds state for streams of ever-new keys). A key with changes not "
        "yet emitted (`on_end`, `every`) is emitted as it is forgotten.",
    )
    emit: EmitSetting = Field(
        "on_update",
        description="When rows go out. `on_update`: after each batch, the current row of "
        "every key it changed (an upsert sink keeps the newest). `on_end`: one final row per "
        "key when the input ends; only for bounded sources (refused with a source that never "
        "ends; a run that is stopped emits at the end of the run that completes the input). "
        "`{every: 30s}`: for streams, the keys changed since the last emission, at most once "
        "per period, and the rest when a bounded input ends. Keys not yet emitted are kept "
        "in the checkpoint, so a crash neither loses nor repeats them.",
    )

    @field_validator("aggregations")
    @classmethod
    def _mergeable(cls, value: dict[str, str]) -> dict[str, str]:
        for spec in parse_aggregations(value):
            if spec.holistic:
                raise ValueError(
                    f"{spec.output}: {spec.func} needs every value of a key for ever; use it in "
                    "a `window` step, which keeps values only while a window is open"
                )
        return value

    @model_validator(mode="after")
    def _expiry_needs_time(self) -> AggregateConfig:
        if self.expire_after is not None and self.time_column is None:
            raise ValueError("expire_after needs time_column (expiry runs on event time)")
        return self


@component("step", "aggregate")
class Aggregate(Step[AggregateConfig]):
    """Running aggregates per key, emitted after each batch, at the end, or periodically.

    The output (keys + one column per aggregation) is meant for an upsert sink keyed on the
    keys. State is one row of partial aggregates per key, with a flag for keys changed since
    they were last emitted. Input records count as ``consumed`` and emitted rows as
    ``generated``.
    """

    config_model = AggregateConfig

    def __init__(self, config: AggregateConfig) -> None:
        super().__init__(config)
        self.specs = parse_aggregations(config.aggregations)
        self.gkeys = list(config.keys) or [ALL]
        self.state: pl.DataFrame | None = None
        self.arrivals = 0
        self.max_seen: int | None = None
        self.expiry = parse_duration(config.expire_after) if config.expire_after else None
        emit = config.emit
        self.period = parse_duration(emit.every) / 1e6 if isinstance(emit, EmitEvery) else None
        self.clock: Callable[[], float] = time.monotonic
        """Seconds of a monotonic clock, for ``every`` (tests set their own)."""
        self.last_emit = 0.0
        self.pending = False
        """Some key may be flagged as not emitted yet (saves a scan when none is)."""
        self.removed: list[pl.DataFrame] = []
        """Keys forgotten (expired) since the last checkpoint."""
        self.emitted = False
        """An emission cleared the not-emitted flags since the last checkpoint."""

    def open(self, ctx: Context, state: JSON | None) -> None:
        """Restore the per-key partials and what of them is not emitted yet."""
        self.last_emit = self.clock()
        if state:
            self.state = state["partials"]
            self.arrivals = state["arrivals"]
            self.max_seen = state["max_seen"]
        if self.state is not None:
            if DIRTY not in self.state.columns:  # state of a version that emitted every batch
                self.state = self.state.with_columns(pl.lit(False).alias(DIRTY))
            self.pending = bool(self.state.get_column(DIRTY).any())
            self.state = self.state.with_columns(pl.lit(False).alias(CHANGED))

    @classmethod
    def bounded_input_only(cls, config: AggregateConfig) -> tuple[str, str] | None:
        """``on_end`` waits for the end of the input: refused for sources that never end."""
        if config.emit != "on_end":
            return None
        return (
            "emit",
            "`on_end` emits when the input ends, and this step reads from a source that "
            "never ends, so it would never emit; use `emit: {every: 1m}` for periodic upserts, "
            "or `on_update`",
        )

    def snapshot(self) -> JSON:
        """Per-key partial aggregates (a frame) and counters; starts a new interval of
        changes."""
        partials = None
        if self.state is not None:
            partials = self.state.drop(CHANGED)
            self._checkpointed()
        return {"partials": partials, "arrivals": self.arrivals, "max_seen": self.max_seen}

    def snapshot_changes(self) -> StateDelta:
        """The rows of the keys changed since the last snapshot, the keys forgotten, and
        whether an emission cleared the not-emitted flags meanwhile."""
        values = {"arrivals": self.arrivals, "max_seen": self.max_seen}
        if self.state is None:
            return StateDelta(values=values)
        delete = pl.concat(self.removed).unique() if self.removed else None
        change = FrameDelta(
            keys=self.gkeys,
            upsert=self.state.filter(pl.col(CHANGED)).drop(CHANGED),
            delete=delete,
            reset={DIRTY: False} if self.emitted else {},
        )
        self._checkpointed()
        return StateDelta(values=values, frames={"partials": change})

    def _checkpointed(self) -> None:
        """Start a new interval of changes (the rows are as the checkpoint stores them)."""
        assert self.state is not None
        if self.state.get_column(CHANGED).any():
            self.state = self.state.with_columns(pl.lit(False).alias(CHANGED))
        self.removed = []
        self.emitted = False

    def process(self, batch: pl.DataFrame) -> StepOutput:
        """Merge the batch into the per-key state and emit the changed keys."""
        needed = [*self.config.keys, *columns_used(self.specs)]
        if self.config.time_column:
            needed.append(self.config.time_column)
        require_columns(batch, needed, "aggregate")
        if batch.height == 0:
            return StepOutput(outputs={MAIN_PORT: batch.head(0)})
        frame, _ = key_frame(batch, self.config.keys)
        if self.config.time_column:
            time = pl.col(self.config.time_column).dt.epoch("us")
        else:  # arrival order stands in for time
            time = pl.int_range(pl.len(), dtype=pl.Int64) + self.arrivals
        frame = frame.with_columns(time.alias(T))
        self.arrivals += batch.height
        rows = frame.select(
            *self.gkeys,
            pl.col(T).alias(SEEN),
            pl.lit(True).alias(DIRTY),
            pl.lit(True).alias(CHANGED),
            *row_exprs(self.specs),
        )
        if self.state is not None:  # a restored state may hold its columns in another order
            rows = rows.select(self.state.columns)
        both = rows if self.state is None else pl.concat([self.state, rows], how="vertical_relaxed")
        self.state = both.group_by(self.gkeys, maintain_order=True).agg(
            pl.col(SEEN).max(),
            pl.col(DIRTY).any(),
            pl.col(CHANGED).any(),
            *merge_exprs(self.specs),
        )
        self.pending = True
        parts = [self._emit()] if self.config.emit == "on_update" else []
        parts.append(self._expire(frame.get_column(T)))
        out = pl.concat(parts) if len(parts) > 1 else parts[0]
        return StepOutput(outputs={MAIN_PORT: out}, consumed=batch.height, generated=out.height)

    def finish(self) -> StepOutput:
        """The bounded input ended: emit every key not emitted since it last changed."""
        out = self._emit()
        return StepOutput(outputs={MAIN_PORT: out}, generated=out.height)

    def idle(self, seconds: float) -> StepOutput:
        """Called about twice a second, records or not: with ``every``, once the period has
        passed since the last emission, emit the keys changed since."""
        if not self.pending or self.config.emit == "on_end":
            return StepOutput()
        now = self.clock()
        if self.period is not None and now - self.last_emit < self.period:
            return StepOutput()
        self.last_emit = now
        out = self._emit()
        return StepOutput(outputs={MAIN_PORT: out}, generated=out.height)

    def _emit(self) -> pl.DataFrame:
        """The rows of the flagged keys (clearing the flags)."""
        self.pending = False
        if self.state is None:
            return pl.DataFrame(schema={k: pl.Null for k in self.config.keys})
        dirty = pl.col(DIRTY)
        out = self._final(self.state.filter(dirty))
        if out.height:
            self.state = self.state.with_columns(pl.lit(False).alias(DIRTY))
            self.emitted = True
        return out

    def _final(self, partials: pl.DataFrame) -> pl.DataFrame:
        return partials.select(*self.config.keys, *final_exprs(self.specs))

    def _expire(self, times: pl.Series) -> pl.DataFrame:
        """Forget keys past ``expire_after``; returns the rows of those not emitted yet."""
        assert self.state is not None
        top = times.max()
        if self.expiry is None or top is None:
            return self._final(self.state.head(0))
        self.max_seen = max(int(top), self.max_seen or int(top))  # type: ignore[arg-type]
        live = pl.col(SEEN) > self.max_seen - self.expiry
        gone = self.state.filter(~live & pl.col(DIRTY))
        expired = self.state.filter(~live).select(self.gkeys)
        if expired.height:
            self.removed.append(expired)
            self.state = self.state.filter(live)
        return self._final(gone)

"""The Python API: build the same pipeline model as a YAML file, in code.

::

    import tideflow as tf

    p = (tf.Pipeline("readings")
           .source(tf.generate(shape="sensors", count=1_000))
           .filter("temperature_c > 0")
           .with_columns(temp_f="temperature_c * 9 / 5 + 32")
           .sink(tf.file("out/", format="parquet")))
    result = p.run()

Every method appends plain data that is validated by the same models as YAML, so errors read
the same and ``to_yaml()`` / ``Pipeline.from_yaml()`` round-trip.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self, Unpack

import polars as pl
from ruamel.yaml import YAML

from tideflow.api import PipelineSettings, StepMethods, file, generate, stdout
from tideflow.core.observer import RunObserver
from tideflow.errors import ConfigError
from tideflow.registry import Registry, default_registry
from tideflow.results import DEFAULT_KEEP_ROWS, OutputTap, PipelineResult
from tideflow.spec.loader import LoadedYaml, load_pipeline, load_pipeline_text, validate
from tideflow.spec.models import PipelineSpec

if TYPE_CHECKING:
    import pandas
    import pyarrow

__all__ = [
    "Pipeline",
    "collect",
    "connector",
    "file",
    "generate",
    "records",
    "stdout",
]


def connector(type_name: str, **settings: Any) -> dict[str, Any]:
    """A source or sink of any registered type, e.g. ``connector("file", path="in/*.csv")``:
    the untyped form, for plugins (built-in types have typed constructors)."""
    return {"type": type_name, **settings}


def records(
    data: Sequence[Mapping[str, Any]] | pl.DataFrame | pandas.DataFrame | pyarrow.Table,
    *,
    batch_size: int = 10_000,
    name: str | None = None,
) -> dict[str, Any]:
    """A ``memory`` source of the given records: a list of dicts, or a Polars or pandas
    DataFrame, or an Arrow table (pandas and Arrow are converted to Polars; a frame is
    read as it is, without a copy and with its column types)."""
    rows = as_records(data)
    settings: dict[str, Any] = {"type": "memory", "records": rows}
    if batch_size != 10_000:
        settings["batch_size"] = batch_size
    if name is not None:
        settings["name"] = name
    return settings


def as_records(data: Any) -> list[dict[str, Any]] | pl.DataFrame:
    """What :func:`records` keeps of its argument: a Polars frame, or a list of records."""
    if isinstance(data, pl.DataFrame):
        return data
    if isinstance(data, pl.LazyFrame):
        return data.collect()
    module = type(data).__module__.split(".")[0]
    if module == "pandas" and hasattr(data, "columns"):
        # A named or non-default index is data (a group_by key): keep it as a column.
        return pl.from_pandas(data, include_index=True)
    if module == "pyarrow":
        frame = pl.from_arrow(data)
        if isinstance(frame, pl.DataFrame):
            return frame
    if isinstance(data, Mapping | str | bytes) or not isinstance(data, Iterable):
        raise ConfigError(
            "tf.records() takes a list of dicts, a Polars or pandas DataFrame or an Arrow "
            f"table; got {type(data).__module__}.{type(data).__qualname__}"
        )
    return list(data)  # checked record by record by the memory source's model


def collect(collector: str, *, name: str | None = None) -> dict[str, Any]:
    """A ``memory`` sink; read it with :func:`tideflow.testing.collected` (or use the run's
    ``result.to_polars(sink)``)."""
    return {"type": "memory", "collector": collector, **({"name": name} if name else {})}


def _function_ref(fn: Callable[..., Any] | str) -> str:
    if isinstance(fn, str):
        return fn
    qualname = getattr(fn, "__qualname__", "")
    if "<" in qualname or "." in qualname:
        raise ConfigError(
            f"{qualname or fn!r} cannot be referenced by name; use a top-level function "
            "(`def` in a module) so the pipeline can be saved and re-run"
        )
    return f"{fn.__module__}:{qualname}"


def _keys_first(component: dict[str, Any]) -> dict[str, Any]:
    """Put ``type``, ``name``, ``input`` and ``when`` first, as people write them."""
    head = {k: component[k] for k in ("type", "name", "input", "when") if k in component}
    return head | {k: v for k, v in component.items() if k not in head}


def _looks_like_yaml_text(text: str) -> bool:
    """Whether a string given as a pipeline is YAML text rather than a path: it has a line
    break, or a ``key:`` mapping and names no existing file (a path never needs either)."""
    if "\n" in text:
        return True
    if ": " not in text and not text.rstrip().endswith(":"):
        return False
    try:
        return not Path(text).exists()
    except OSError:  # too long or otherwise not a usable path name
        return True


class Pipeline(StepMethods):
    """A pipeline built in code; ``build()`` gives the same model a YAML file does.

    Every built-in step has a typed method (``.filter()``, ``.window()``, ``.aggregate()``...);
    a step type from a plugin is added with :meth:`step` (or, untyped, as a method of its
    name).
    """

    def __init__(self, name: str, **settings: Unpack[PipelineSettings]) -> None:
        """``settings`` are top-level keys: ``checkpoint``, ``on_error``, ``state``, ..."""
        self._data: dict[str, Any] = {"name": name, **settings}
        self._data.setdefault("sources", [])
        self._data.setdefault("steps", [])
        self._data.setdefault("sinks", [])
        self._base_dir: Path | None = None

    # -- building ------------------------------------------------------------------------

    def source(self, spec: Mapping[str, Any], name: str | None = None) -> Self:
        """Add a source (several sources are merged)."""
        self._data["sources"].append({**spec, **({"name": name} if name else {})})
        return self

    def step(
        self,
        type_name: str,
        name: str | None = None,
        input: str | list[str] | None = None,
        **settings: Any,
    ) -> Self:
        """Add a step of any registered type (the untyped form, for plugins)."""
        entry: dict[str, Any] = {"type": type_name, **settings}
        if name:
            entry["name"] = name
        if input is not None:
            entry["input"] = input
        self._data["steps"].append(entry)
        return self

    def sink(
        self,
        spec: Mapping[str, Any],
        name: str | None = None,
        input: str | list[str] | None = None,
        when: str | None = None,
    ) -> Self:
        """Add a sink; every sink gets the data (``when`` filters, ``input`` picks a branch)."""
        entry = dict(spec)
        for key, value in (("name", name), ("input", input), ("when", when)):
            if value is not None:
                entry[key] = value
        self._data["sinks"].append(entry)
        return self

    if not TYPE_CHECKING:
        # Hidden from type checkers, so that a misspelt method is an error there; at run
        # time a plugin's step type is a method of its name.

        def __getattr__(self, type_name: str) -> Callable[..., Pipeline]:
            """Every registered step has a method of its name: ``p.negate(column="x")`` is
            ``p.step("negate", column="x")``, so plugins get a Python form for free."""
            if type_name.startswith("_") or type_name not in default_registry.items("step"):
                raise AttributeError(
                    f"Pipeline has no attribute {type_name!r} and no step type of that name"
                )

            def add(name: str | None = None, **settings: Any) -> Pipeline:
                return self.step(type_name, name=name, **settings)

            add.__doc__ = default_registry.get("step", type_name).summary
            return add

    def select(
        self, *columns: str, name: str | None = None, input: str | list[str] | None = None
    ) -> Self:
        """Keep only these columns."""
        return self.step("select", name, input, columns=list(columns))

    def rename(
        self,
        mapping: Mapping[str, str],
        name: str | None = None,
        *,
        input: str | list[str] | None = None,
    ) -> Self:
        """Rename columns (old -> new)."""
        return self.step("rename", name, input, columns=dict(mapping))

    def drop(
        self,
        *columns: str,
        strict: bool = True,
        name: str | None = None,
        input: str | list[str] | None = None,
    ) -> Self:
        """Remove columns; with ``strict`` a column that is not there is an error."""
        return self.step("drop", name, input, columns=list(columns), strict=strict)

    def cast(
        self,
        mapping: Mapping[str, str],
        strict: bool = True,
        name: str | None = None,
        *,
        formats: Mapping[str, str] | None = None,
        input: str | list[str] | None = None,
    ) -> Self:
        """Convert column types (column -> type); failures are dead-lettered when ``strict``.
        ``formats`` gives a column's date/time format (column -> strftime pattern)."""
        extra = {"formats": dict(formats)} if formats else {}
        return self.step("cast", name, input, columns=dict(mapping), strict=strict, **extra)

    def filter(
        self, expr: str, name: str | None = None, *, input: str | list[str] | None = None
    ) -> Self:
        """Keep records matching a SQL condition; the others are counted as filtered."""
        return self.step("filter", name, input, expr=expr)

    def with_columns(self, name: str | None = None, **columns: str) -> Self:
        """Add or replace columns from SQL expressions (``column="expression"``); to read
        another branch, use ``.step("with_columns", input=..., columns={...})``."""
        return self.step("with_columns", name, columns=columns)

    def sql(
        self,
        query: str,
        name: str | None = None,
        engine: Literal["duckdb", "polars"] = "duckdb",
        *,
        input: str | list[str] | None = None,
    ) -> Self:
        """Run a SQL query over each batch (table ``batch``)."""
        return self.step("sql", name, input, query=query, engine=engine)

    def map(self, fn: Callable[..., Any] | str, name: str | None = None, **kwargs: Any) -> Self:
        """A per-record Python function ``fn(dict) -> dict | None`` (the slow path)."""
        return self._python(fn, "record", name, kwargs)

    def map_batch(
        self, fn: Callable[..., Any] | str, name: str | None = None, **kwargs: Any
    ) -> Self:
        """A per-batch function ``fn(DataFrame) -> DataFrame`` (the fast path)."""
        return self._python(fn, "batch", name, kwargs)

    def _python(
        self, fn: Callable[..., Any] | str, mode: str, name: str | None, kwargs: dict[str, Any]
    ) -> Self:
        extra: dict[str, Any] = {"kwargs": kwargs} if kwargs else {}
        return self.step("python", name, function=_function_ref(fn), mode=mode, **extra)

    def route(self, name: str, default: str | None = None, **routes: str) -> Self:
        """Split records by condition; read a branch with ``input="<name>.<route>"``."""
        return self.step("route", name, routes=routes, **({"default": default} if default else {}))

    # -- using ---------------------------------------------------------------------------

    def build(self, registry: Registry | None = None) -> PipelineSpec:
        """Validate into the pipeline model (raises :class:`ConfigError` like a YAML file)."""
        data = {k: v for k, v in self._data.items() if v != [] or k == "steps"}
        for single, many in (("source", "sources"), ("sink", "sinks")):
            if len(data.get(many, ())) == 1:
                data[single] = data.pop(many)[0]
        return validate(LoadedYaml(data, {}, None), registry or default_registry)

    def run(
        self,
        base_dir: str | Path | None = None,
        observer: RunObserver | None = None,
        from_scratch: bool = False,
        *,
        fresh: bool = False,
        keep_rows: int | None = DEFAULT_KEEP_ROWS,
    ) -> PipelineResult:
        """Build and run; the result has each step's counts and output (``to_polars``).

        Relative paths and the state store resolve against ``base_dir``: by default the
        folder of the file :meth:`from_yaml` read, else the working directory. A run
        resumes where the last one stopped, so a second run over the same records reads
        nothing, and ``result.notices`` says why. When the state store was lost but the
        sinks hold output of earlier runs, the run raises
        :class:`~tideflow.errors.StateLostError` instead of reading everything again;
        ``from_scratch=True`` clears that output (what the sinks can clear), the state and
        the dead letters first, and runs from the beginning.

        ``fresh=True`` reads every source from its start with a state store of its own, in
        memory: it neither resumes from nor changes the pipeline's checkpoint, dead letters
        or run history, and empties the collectors of its ``memory`` sinks first; it is
        refused for sinks that keep output (anything but ``memory`` and ``stdout``: that
        output would be written a second time) and for sources that consume what they read
        (brokers, webhooks). ``keep_rows`` bounds the rows kept per source, step and sink
        for :meth:`PipelineResult.to_polars` (None: all, 0: none).
        """
        from tideflow.run.runner import run_kept

        if fresh and from_scratch:
            raise ConfigError(
                "give fresh=True (a throwaway state, output kept) or from_scratch=True (the "
                "pipeline's output and state cleared), not both"
            )
        spec = self.build()
        base = Path(base_dir) if base_dir is not None else self._base_dir or Path(".")
        tap = OutputTap(keep_rows)
        return run_kept(spec, base, tap, observer, fresh=fresh, from_scratch=from_scratch)

    def to_dict(self) -> dict[str, Any]:
        """The pipeline as plain data, in pipeline-file form."""
        data = self.build().model_dump(mode="json", exclude_defaults=True, exclude_none=True)
        for kind in ("source", "sink", "sources", "steps", "sinks"):
            if isinstance(data.get(kind), dict):
                data[kind] = _keys_first(data[kind])
            elif isinstance(data.get(kind), list):
                data[kind] = [_keys_first(item) for item in data[kind]]
        return data

    def to_yaml(self, path: str | Path | None = None) -> str:
        """The pipeline as YAML text; also written to ``path`` if given. A DataFrame given to
        :func:`records` is written as its records (YAML holds no column types)."""
        import io

        buffer = io.StringIO()
        yaml = YAML(typ="safe", pure=True)
        yaml.default_flow_style = False
        yaml.sort_base_mapping_type_on_output = False  # type: ignore[assignment]
        yaml.dump(self.to_dict(), buffer)
        text = buffer.getvalue()
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    @classmethod
    def from_yaml(cls, path: str | Path) -> Pipeline:
        """Load a pipeline file into a builder (to extend it in code); it runs with
        relative paths and its state beside the file, as ``tideflow run`` does. A string that
        is not an existing file and looks like YAML (a line break, or a ``key:``) is read as
        YAML text, as :meth:`from_yaml_text` does."""
        if isinstance(path, str) and _looks_like_yaml_text(path):
            return cls.from_yaml_text(path)
        builder = cls.from_spec(load_pipeline(path))
        builder._base_dir = Path(path).resolve().parent
        return builder

    @classmethod
    def from_yaml_text(cls, text: str) -> Pipeline:
        """Load a pipeline from YAML text (``${VAR}`` interpolated as in a file); relative
        paths resolve against ``run(base_dir=...)``, the working directory by default."""
        return cls.from_spec(load_pipeline_text(text))

    @classmethod
    def from_spec(cls, spec: PipelineSpec) -> Pipeline:
        """A builder holding an existing spec."""
        data = spec.model_dump(mode="json", exclude_defaults=True, exclude_none=True)
        name = data.pop("name")
        for single, many in (("source", "sources"), ("sink", "sinks")):
            if single in data:
                data[many] = [data.pop(single)]
        return cls(name, **data)

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

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from tideflow.core.engine import RunObserver, RunResult
from tideflow.errors import ConfigError
from tideflow.registry import Registry, default_registry
from tideflow.spec.loader import LoadedYaml, load_pipeline, validate
from tideflow.spec.models import PipelineSpec


def connector(type_name: str, **settings: Any) -> dict[str, Any]:
    """A source or sink of any registered type, e.g. ``connector("file", path="in/*.csv")``."""
    return {"type": type_name, **settings}


def generate(**settings: Any) -> dict[str, Any]:
    """A ``generate`` source."""
    return connector("generate", **settings)


def file(path: str, **settings: Any) -> dict[str, Any]:
    """A ``file`` source or sink."""
    return connector("file", path=path, **settings)


def stdout(**settings: Any) -> dict[str, Any]:
    """A ``stdout`` sink."""
    return connector("stdout", **settings)


def records(rows: list[dict[str, Any]], **settings: Any) -> dict[str, Any]:
    """A ``memory`` source with inline records."""
    return connector("memory", records=rows, **settings)


def collect(collector: str) -> dict[str, Any]:
    """A ``memory`` sink; read it with :func:`tideflow.testing.collected`."""
    return connector("memory", collector=collector)


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


class Pipeline:
    """A pipeline built in code; ``build()`` gives the same model a YAML file does."""

    def __init__(self, name: str, **settings: Any) -> None:
        """``settings`` are top-level keys: ``checkpoint``, ``on_error``, ``state``, ..."""
        self._data: dict[str, Any] = {"name": name, **settings}
        self._data.setdefault("sources", [])
        self._data.setdefault("steps", [])
        self._data.setdefault("sinks", [])

    # -- building ------------------------------------------------------------------------

    def source(self, spec: dict[str, Any], name: str | None = None) -> Pipeline:
        """Add a source (several sources are merged)."""
        self._data["sources"].append({**spec, **({"name": name} if name else {})})
        return self

    def step(
        self,
        type_name: str,
        name: str | None = None,
        input: str | list[str] | None = None,
        **settings: Any,
    ) -> Pipeline:
        """Add a step of any registered type."""
        entry: dict[str, Any] = {"type": type_name, **settings}
        if name:
            entry["name"] = name
        if input is not None:
            entry["input"] = input
        self._data["steps"].append(entry)
        return self

    def sink(
        self,
        spec: dict[str, Any],
        name: str | None = None,
        input: str | list[str] | None = None,
        when: str | None = None,
    ) -> Pipeline:
        """Add a sink; every sink gets the data (``when`` filters, ``input`` picks a branch)."""
        entry = dict(spec)
        for key, value in (("name", name), ("input", input), ("when", when)):
            if value is not None:
                entry[key] = value
        self._data["sinks"].append(entry)
        return self

    def __getattr__(self, type_name: str) -> Callable[..., Pipeline]:
        """Every registered step has a method of its name: ``p.window(size="1m", ...)`` is
        ``p.step("window", size="1m", ...)``, so plugins get a Python form for free."""
        if type_name.startswith("_") or type_name not in default_registry.items("step"):
            raise AttributeError(
                f"Pipeline has no attribute {type_name!r} and no step type of that name"
            )

        def add(name: str | None = None, **settings: Any) -> Pipeline:
            return self.step(type_name, name=name, **settings)

        add.__doc__ = default_registry.get("step", type_name).summary
        return add

    def select(self, *columns: str, name: str | None = None) -> Pipeline:
        """Keep only these columns."""
        return self.step("select", name, columns=list(columns))

    def rename(self, mapping: dict[str, str], name: str | None = None) -> Pipeline:
        """Rename columns (old -> new)."""
        return self.step("rename", name, columns=mapping)

    def drop(self, *columns: str, name: str | None = None) -> Pipeline:
        """Remove columns."""
        return self.step("drop", name, columns=list(columns))

    def cast(
        self, mapping: dict[str, str], strict: bool = True, name: str | None = None
    ) -> Pipeline:
        """Convert column types; failures are dead-lettered when ``strict``."""
        return self.step("cast", name, columns=mapping, strict=strict)

    def filter(self, expr: str, name: str | None = None) -> Pipeline:
        """Keep records matching a SQL condition."""
        return self.step("filter", name, expr=expr)

    def with_columns(self, name: str | None = None, **columns: str) -> Pipeline:
        """Add or replace columns from SQL expressions."""
        return self.step("with_columns", name, columns=columns)

    def sql(self, query: str, name: str | None = None, engine: str = "duckdb") -> Pipeline:
        """Run a SQL query over each batch (table ``batch``)."""
        return self.step("sql", name, query=query, engine=engine)

    def map(self, fn: Callable[..., Any] | str, name: str | None = None, **kwargs: Any) -> Pipeline:
        """A per-record Python function ``fn(dict) -> dict | None`` (the slow path)."""
        return self._python(fn, "record", name, kwargs)

    def map_batch(
        self, fn: Callable[..., Any] | str, name: str | None = None, **kwargs: Any
    ) -> Pipeline:
        """A per-batch function ``fn(DataFrame) -> DataFrame`` (the fast path)."""
        return self._python(fn, "batch", name, kwargs)

    def _python(
        self, fn: Callable[..., Any] | str, mode: str, name: str | None, kwargs: dict[str, Any]
    ) -> Pipeline:
        extra: dict[str, Any] = {"kwargs": kwargs} if kwargs else {}
        return self.step("python", name, function=_function_ref(fn), mode=mode, **extra)

    def route(self, name: str, default: str | None = None, **routes: str) -> Pipeline:
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

    def run(self, base_dir: str | Path = ".", observer: RunObserver | None = None) -> RunResult:
        """Build and run; relative paths and the state store resolve against ``base_dir``."""
        from tideflow.runner import run

        return run(self.build(), base_dir, observer=observer)

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
        """The pipeline as YAML text; also written to ``path`` if given."""
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
        """Load a pipeline file into a builder (to extend it in code)."""
        spec = load_pipeline(path)
        return cls.from_spec(spec)

    @classmethod
    def from_spec(cls, spec: PipelineSpec) -> Pipeline:
        """A builder holding an existing spec."""
        data = spec.model_dump(mode="json", exclude_defaults=True, exclude_none=True)
        name = data.pop("name")
        for single, many in (("source", "sources"), ("sink", "sinks")):
            if single in data:
                data[many] = [data.pop(single)]
        return cls(name, **data)

"""The ``python`` step: a user function, per record (slow path) or per batch (fast path).

A per-record function ``fn(record: dict) -> dict | None`` is called once per record: ``None``
filters the record, an exception dead-letters it with the exception as the reason, and the
batch goes on. A per-batch function ``fn(df: DataFrame) -> DataFrame`` runs on the whole batch;
an exception dead-letters the batch.

A per-value function (``mode: value``) gets each record as the JSON value it was published as
— an object, an array, a string, a number, ``true``/``false`` or ``null`` — decoded from one
column of JSON text (what a ``topic`` source with ``format: raw`` reads), and returns any
JSON-serialisable value, which leaves the step as JSON text in the same column. This is how
the Stream API (:mod:`tideflow.stream`) runs ``return data * 2`` over ``[1, 2, 3]``: no value
is forced into a table, so nothing is added to or taken from a record on the way.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import orjson
import polars as pl
from pydantic import Field, field_validator

from tideflow.core.contracts import (
    MAIN_PORT,
    Context,
    Step,
    StepOutput,
    dead_letters,
    raw_dead_letters,
)
from tideflow.core.settings import Settings
from tideflow.errors import ConfigError, PipelineError
from tideflow.registry import component


class PythonConfig(Settings):
    """Settings of ``python``."""

    function: str = Field(
        description="`module:function` (importable) or `path/to/file.py:function` (relative "
        "to the pipeline file)."
    )
    mode: Literal["record", "batch", "value"] = Field(
        "record",
        description="`record`: fn(dict) -> dict | None, called per record (slow path); "
        "`batch`: fn(DataFrame) -> DataFrame (fast path); `value`: fn(any JSON value) -> "
        "JSON value | None, over the JSON text in `column` (per record).",
    )
    column: str = Field(
        "value",
        description="`value` mode: the column holding each record's JSON text, replaced by the "
        "function's result as JSON text (a `topic` source with `format: raw` reads `value`).",
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Extra keyword arguments passed to every call."
    )

    @field_validator("function")
    @classmethod
    def _shape(cls, value: str) -> str:
        module, sep, name = value.rpartition(":")
        if not sep or not module or not name.isidentifier():
            raise ValueError("expected `module:function` or `file.py:function`")
        return value


def load_function(spec: str, base_dir: Path) -> Callable[..., Any]:
    """Import ``module:function`` or ``file.py:function``; errors name what is missing."""
    target, _, name = spec.rpartition(":")
    if target.endswith(".py"):
        path = Path(target)
        path = path if path.is_absolute() else base_dir / path
        if not path.is_file():
            raise ConfigError(f"python.function: file not found: {path}")
        module_name = f"tideflow_user_{path.stem}_{abs(hash(str(path)))}"
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        if module_spec is None or module_spec.loader is None:
            raise ConfigError(f"python.function: cannot load {path}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module
        module_spec.loader.exec_module(module)
    else:
        if str(base_dir) not in sys.path:
            sys.path.insert(0, str(base_dir))
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise ConfigError(f"python.function: cannot import {target!r}: {exc}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ConfigError(f"python.function: {target!r} has no function {name!r}")
    return fn  # type: ignore[no-any-return]


_VALUE_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY
"""How results of value-mode functions become JSON: dict keys that are not strings become
strings (as ``json.dumps`` does), numpy scalars and arrays become numbers and lists."""


def _record_json(record: dict[str, Any]) -> str:
    return orjson.dumps(record, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


@component("step", "python")
class Python(Step[PythonConfig]):
    """Run a user Python function per record or per batch."""

    config_model = PythonConfig

    def __init__(self, config: PythonConfig) -> None:
        super().__init__(config)
        self.fn: Callable[..., Any] | None = None

    def open(self, ctx: Context, state: Any) -> None:
        """Load the function."""
        self.fn = load_function(self.config.function, ctx.base_dir)

    def process(self, batch: pl.DataFrame) -> StepOutput:
        """Call the function."""
        if self.config.mode == "batch":
            return self._per_batch(batch)
        if self.config.mode == "value":
            return self._per_value(batch)
        return self._per_record(batch)

    def _per_batch(self, batch: pl.DataFrame) -> StepOutput:
        assert self.fn is not None
        try:
            result = self.fn(batch, **self.config.kwargs)
        except Exception as exc:  # noqa: BLE001 - user code; the batch is dead-lettered
            return StepOutput(dead=dead_letters(batch, f"{type(exc).__name__}: {exc}"))
        if not isinstance(result, pl.DataFrame):
            reason = f"function returned {type(result).__name__}, expected a polars DataFrame"
            return StepOutput(dead=dead_letters(batch, reason))
        return StepOutput.reshaped(result, batch.height)

    def _per_record(self, batch: pl.DataFrame) -> StepOutput:
        fn, kwargs = self.fn, self.config.kwargs
        assert fn is not None
        kept: list[dict[str, Any]] = []
        bad_records: list[str] = []
        bad_reasons: list[str] = []
        filtered = 0
        for record in batch.iter_rows(named=True):
            try:
                result = fn(record, **kwargs) if kwargs else fn(record)
            except Exception as exc:  # noqa: BLE001 - user code; the record is dead-lettered
                bad_records.append(_record_json(record))
                bad_reasons.append(f"{type(exc).__name__}: {exc}")
                continue
            if result is None:
                filtered += 1
            elif type(result) is dict or isinstance(result, dict):
                kept.append(result)
            else:
                bad_records.append(_record_json(record))
                bad_reasons.append(
                    f"function returned {type(result).__name__}, expected dict or None"
                )
        out = self._frame(kept, batch)
        dead = raw_dead_letters(bad_records, bad_reasons) if bad_records else None
        return StepOutput(outputs={MAIN_PORT: out}, filtered=filtered, dead=dead)

    def _per_value(self, batch: pl.DataFrame) -> StepOutput:
        fn, kwargs, column = self.fn, self.config.kwargs, self.config.column
        assert fn is not None
        if column not in batch.columns:
            raise PipelineError(
                f"python (mode value): no column {column!r} of JSON text in the batch "
                f"(columns: {', '.join(batch.columns) or 'none'}); read the topic with "
                "`format: raw`, or set `column`"
            )
        kept: list[str] = []
        bad_records: list[str] = []
        bad_reasons: list[str] = []
        filtered = 0
        for raw in batch.get_column(column).to_list():
            text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
            if raw is None:
                bad_records.append("")
                bad_reasons.append("the message has no value")
                continue
            try:
                value = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                bad_records.append(text)
                bad_reasons.append(f"not JSON: {exc}")
                continue
            try:
                result = fn(value, **kwargs) if kwargs else fn(value)
            except Exception as exc:  # noqa: BLE001 - user code; the record is dead-lettered
                bad_records.append(text)
                bad_reasons.append(f"{type(exc).__name__}: {exc}")
                continue
            if result is None:
                filtered += 1
                continue
            try:
                kept.append(orjson.dumps(result, option=_VALUE_OPTIONS).decode())
            except TypeError as exc:
                bad_records.append(text)
                bad_reasons.append(
                    f"function returned {type(result).__name__}, which is not JSON: {exc}"
                )
        out = pl.DataFrame({column: pl.Series(column, kept, dtype=pl.String)})
        dead = raw_dead_letters(bad_records, bad_reasons) if bad_records else None
        return StepOutput(outputs={MAIN_PORT: out}, filtered=filtered, dead=dead)

    @staticmethod
    def _frame(records: list[dict[str, Any]], batch: pl.DataFrame) -> pl.DataFrame:
        if not records:
            return batch.clear()
        try:
            return pl.from_dicts(records, infer_schema_length=1000)
        except (pl.exceptions.ComputeError, pl.exceptions.SchemaError, TypeError):
            # A value type changed after the first rows; infer over everything.
            return pl.from_dicts(records, infer_schema_length=None)

"""In-process ``memory`` source and sink: records given inline, records collected in memory.

They are the test kit's (:mod:`tideflow.testing`), registered unlisted: pipelines,
``tf.records`` / ``tf.collect``, ``tideflow test`` and replays use them, but ``tideflow
connectors``, "did you mean" suggestions and the generated reference do not show them. The
sink follows the two-phase commit like durable sinks, so tests observe exactly what a
checkpointed run would make visible.
"""

from __future__ import annotations

import threading
from typing import Annotated, Any

import polars as pl
from pydantic import (
    ConfigDict,
    Field,
    PlainSerializer,
    TypeAdapter,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)
from pydantic.json_schema import SkipJsonSchema

from tideflow.core.contracts import Context, Sink, Source, SourceBatch
from tideflow.core.settings import Settings
from tideflow.registry import component

_lock = threading.Lock()
_collected: dict[str, list[pl.DataFrame]] = {}


def collected(collector: str) -> pl.DataFrame:
    """Everything committed to a memory sink's collector, as one frame."""
    with _lock:
        frames = list(_collected.get(collector, []))
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


def clear(collector: str) -> None:
    """Forget a collector's records."""
    with _lock:
        _collected.pop(collector, None)


_RECORDS = TypeAdapter(list[dict[str, Any]])


def _records_or_frame(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    # A frame is kept as it is (no copy, its types kept); anything else must be records, and
    # its errors read as they always did (not as the two branches of a union).
    if isinstance(value, pl.DataFrame):
        return value
    return _RECORDS.validate_python(value)


def _frame_as_records(value: Any) -> Any:
    return value.to_dicts() if isinstance(value, pl.DataFrame) else value


Records = Annotated[
    list[dict[str, Any]] | SkipJsonSchema[pl.DataFrame],
    WrapValidator(_records_or_frame),
    # Written out (to_yaml, spec copies) as the records a frame holds: YAML has no frames.
    PlainSerializer(_frame_as_records, when_used="json"),
]
"""Inline records: a list of mappings or, from Python, a Polars DataFrame."""


class MemorySourceConfig(Settings):
    """Settings of the ``memory`` source."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    records: Records = Field(
        description="The records, inline; from Python also a Polars DataFrame "
        "(`tf.records(df)` takes pandas and Arrow too)."
    )
    batch_size: int = Field(10_000, ge=1, description="Records per batch.")


@component("source", "memory", listed=False)
class MemorySource(Source[MemorySourceConfig]):
    """Records given inline in the pipeline (for tests and examples)."""

    config_model = MemorySourceConfig

    def __init__(self, config: MemorySourceConfig) -> None:
        super().__init__(config)
        self.offset = 0
        self._start = 0
        self.rejected: pl.DataFrame | None = None
        """Dead letters (``record``, ``reason``) to hand over with the first batch: records a
        dead-letter replay found still unreadable, counted by the engine like a source's."""
        records = config.records
        if isinstance(records, pl.DataFrame):
            self.frame = records
        else:
            self.frame = (
                pl.from_dicts(records, infer_schema_length=None) if records else pl.DataFrame()
            )

    def open(self, ctx: Context, position: Any) -> None:
        """Resume after ``position`` records."""
        self.offset = int(position or 0)
        self._start = self.offset

    def notices(self) -> list[str]:
        """Why a run read nothing: earlier runs read every record already."""
        if self.frame.height and self._start >= self.frame.height:
            return [
                f"all {self.frame.height:,} records were read by earlier runs (`tideflow "
                "state reset` reads them again)"
            ]
        return []

    def expected_records(self) -> int | None:
        """The records not read by earlier runs."""
        return max(self.frame.height - self._start, 0)

    def read_batch(self) -> SourceBatch | None:
        """The next slice of records (the first one with the ``rejected`` letters)."""
        rejected, self.rejected = self.rejected, None
        if self.offset >= self.frame.height and rejected is None:
            return None
        batch = self.frame.slice(self.offset, self.config.batch_size)
        self.offset += batch.height
        return SourceBatch(batch, self.offset, rejected)


class MemorySinkConfig(Settings):
    """Settings of the ``memory`` sink."""

    collector: str = Field(description="Name under which committed records are collected.")


@component("sink", "memory", listed=False)
class MemorySink(Sink[MemorySinkConfig]):
    """Collect records in memory; read them with ``tideflow.testing.collected(name)``."""

    config_model = MemorySinkConfig

    def __init__(self, config: MemorySinkConfig) -> None:
        super().__init__(config)
        self._pending: list[pl.DataFrame] = []

    def open(self, ctx: Context, pending: Any) -> None:
        """In-memory data does not survive a crash; nothing to recover."""

    def write_batch(self, batch: pl.DataFrame) -> None:
        """Buffer until the checkpoint commits."""
        self._pending.append(batch)

    def commit(self, token: Any) -> None:
        """Make the buffered records visible."""
        with _lock:
            _collected.setdefault(self.config.collector, []).extend(self._pending)
        self._pending = []

"""In-process ``memory`` source and sink: records given inline, records collected in memory.

They back :mod:`tideflow.testing`, ``tideflow test`` and quick experiments. The sink follows
the two-phase commit like durable sinks, so tests observe exactly what a checkpointed run
would make visible.
"""

from __future__ import annotations

import threading
from typing import Any

import polars as pl
from pydantic import Field

from tideflow.core.contracts import Context, Sink, Source, SourceBatch
from tideflow.registry import component
from tideflow.spec.models import Settings

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


class MemorySourceConfig(Settings):
    """Settings of the ``memory`` source."""

    records: list[dict[str, Any]] = Field(description="The records, inline.")
    batch_size: int = Field(10_000, ge=1, description="Records per batch.")


@component("source", "memory")
class MemorySource(Source):
    """Records given inline in the pipeline (for tests and examples)."""

    config_model = MemorySourceConfig

    def __init__(self, config: MemorySourceConfig) -> None:
        super().__init__(config)
        self.offset = 0
        self.frame = (
            pl.from_dicts(config.records, infer_schema_length=None)
            if config.records
            else pl.DataFrame()
        )

    def open(self, ctx: Context, position: Any) -> None:
        """Resume after ``position`` records."""
        self.offset = int(position or 0)

    def read_batch(self) -> SourceBatch | None:
        """The next slice of records."""
        if self.offset >= self.frame.height:
            return None
        batch = self.frame.slice(self.offset, self.config.batch_size)
        self.offset += batch.height
        return SourceBatch(batch, self.offset)


class MemorySinkConfig(Settings):
    """Settings of the ``memory`` sink."""

    collector: str = Field(description="Name under which committed records are collected.")


@component("sink", "memory")
class MemorySink(Sink):
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

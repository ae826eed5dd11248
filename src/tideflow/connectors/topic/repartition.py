"""The internal ``repartition`` sink and source: how group workers move records to the worker
that keeps their key's state (``tideflow run --workers``, see :mod:`tideflow.run.stages`).

The sink puts each record in the partition murmur2 gives the text of its keys, and sends the
records of one partition as Arrow IPC blocks of at most :data:`BLOCK_BYTES` (one message per
block, not per record: every column type survives the trip exactly, and a batch costs a few
messages instead of one JSON document per record). The source reads the blocks back and checks
that every record sits in the partition its keys give, so a topic written any other way stops
the run instead of splitting a key's state. Neither is listed: a pipeline does not name them,
the stage planner does. On Kafka the sink is the exactly-once topic sink (one transaction per
checkpoint, with the source offsets), on the embedded log its transactional append.
"""

from __future__ import annotations

import io

import polars as pl
from pydantic import Field

from tideflow.connectors.topic.settings import TopicSinkConfig, TopicSourceConfig
from tideflow.connectors.topic.sink import TopicSink
from tideflow.connectors.topic.source import TopicSource
from tideflow.core.contracts import SourceBatch, empty_dead_letters
from tideflow.errors import PartitioningError, PipelineError
from tideflow.registry import component
from tideflow.topics.codec import Offsets, RawMessages
from tideflow.topics.partitioner import keyed_partitions

BLOCK_BYTES = 512 << 10
"""Most bytes (in memory, before encoding) of one message's block: below Kafka's default
message size limit of 1 MB, however the block compresses."""

_NULL = "\x00"
_SEPARATOR = "\x1f"


def key_text(frame: pl.DataFrame, by: list[str]) -> pl.Series:
    """The bytes a record's partition is picked by: its keys as text, joined; a null key
    has a text of its own, so records without a key still meet in one partition."""
    if not by:
        return pl.Series("key", [b""] * frame.height, dtype=pl.Binary)
    parts = [pl.col(c).cast(pl.String).fill_null(_NULL) for c in by]
    text = frame.select(pl.concat_str(parts, separator=_SEPARATOR).alias("key")).to_series()
    return text.cast(pl.Binary)


def partitions_by_keys(frame: pl.DataFrame, by: list[str], partitions: int) -> pl.Series:
    """The partition of each record: murmur2 of :func:`key_text` (0 when keyed by nothing)."""
    if not by or partitions == 1:
        return pl.Series("partition", [0] * frame.height, dtype=pl.Int32)
    return keyed_partitions(key_text(frame, by), partitions, "murmur2")


class RepartitionSinkConfig(TopicSinkConfig):
    """Settings of the internal ``repartition`` sink."""

    by: list[str] = Field(
        default_factory=list,
        description="The keys that pick each record's partition (none: one partition).",
    )


@component("sink", "repartition", listed=False)
class RepartitionSink(TopicSink):
    """Records to the partition of their keys, as Arrow IPC blocks."""

    config_model = RepartitionSinkConfig
    config: RepartitionSinkConfig  # narrowed, as TopicSink (not generic) is subclassed

    def write_batch(self, batch: pl.DataFrame) -> pl.DataFrame:
        """Group the batch by partition and send each partition's records in blocks."""
        assert self.producer is not None
        missing = [c for c in self.config.by if c not in batch.columns]
        if missing:
            raise PipelineError(
                f"repartition for {', '.join(self.config.by)}: the records have no column "
                f"{', '.join(map(repr, missing))} (they have: {', '.join(batch.columns)})"
            )
        if not batch.height:
            return empty_dead_letters()
        parts = partitions_by_keys(batch, self.config.by, self._partitions)
        targets: list[int] = []
        blocks: list[bytes] = []
        marked = batch.with_columns(parts.alias("_p"))
        for (part,), group in marked.group_by("_p", maintain_order=True):
            rows = group.drop("_p")
            count = max(1, -(-int(rows.estimated_size()) // BLOCK_BYTES))
            step = -(-rows.height // count)
            for start in range(0, rows.height, step):
                buffer = io.BytesIO()
                rows.slice(start, step).write_ipc(buffer, compression="lz4")
                targets.append(int(part))
                blocks.append(buffer.getvalue())
        self.producer.send(
            self.config.topic,
            pl.Series("partition", targets, dtype=pl.Int32),
            pl.Series("key", [None] * len(blocks), dtype=pl.Binary),
            pl.Series("value", blocks, dtype=pl.Binary),
            None,
        )
        return empty_dead_letters()


class RepartitionSourceConfig(TopicSourceConfig):
    """Settings of the internal ``repartition`` source."""

    by: list[str] = Field(
        default_factory=list,
        description="The keys each record's partition was picked by (none: one partition).",
    )


@component("source", "repartition", listed=False)
class RepartitionSource(TopicSource):
    """Arrow IPC blocks of a repartition topic back into records, each checked to be in the
    partition of its keys."""

    config_model = RepartitionSourceConfig
    config: RepartitionSourceConfig  # narrowed, as TopicSource (not generic) is subclassed

    def partition_keys(self) -> list[str] | None:
        """The keys the records were partitioned by ([]: one partition holds them all)."""
        return list(self.config.by)

    def _decode(self, raw: RawMessages, position: Offsets) -> SourceBatch:
        frames: list[pl.DataFrame] = []
        for i, value in enumerate(raw.values):
            where = f"topic {raw.topics[i]} partition {raw.partitions[i]} offset {raw.offsets[i]}"
            try:
                block = pl.read_ipc(io.BytesIO(value or b""))
            except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
                raise PipelineError(
                    f"{where}: not a block written by a repartition sink ({exc}); the topic "
                    "is internal to group workers, nothing else may write it"
                ) from exc
            self._check_block(block, raw, i, where)
            frames.append(block)
        frame = pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()
        stamps = [t for t in raw.timestamps if t is not None and t > 0]
        event_time = min(stamps) / 1000 if stamps else None
        return SourceBatch(frame, position, None, event_time=event_time)

    def _check_block(self, block: pl.DataFrame, raw: RawMessages, i: int, where: str) -> None:
        """Stop at a record in another partition than its keys give (a writer with another
        partition count, or not the repartition sink)."""
        count = self._partition_count(raw.topics[i], raw.partitions[i])
        if not block.height or count == 1:
            return
        want = partitions_by_keys(block, self.config.by, count)
        bad = (want != raw.partitions[i]).fill_null(True)
        if bad.any():
            row = block.row(int(bad.arg_true()[0]), named=True)
            keys = {c: row.get(c) for c in self.config.by}
            raise PartitioningError(
                f"{where}: a record with {keys} belongs in partition "
                f"{int(want[int(bad.arg_true()[0])])} of {count}: the repartition topic was "
                "written with another partition count or by another writer, so a key's state "
                "would be split. Nothing after it was read."
            )

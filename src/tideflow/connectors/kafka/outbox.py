"""The messages of a checkpoint interval, held until the checkpoint stores them (the outbox).

An exactly-once Kafka sink produces nothing while records arrive: it encodes each batch into
messages (partition, key, value, headers) and keeps them here, as Arrow IPC chunks, in memory
up to a budget and in spill files beyond it. At the checkpoint the chunks are written into the
state store in the checkpoint's own transaction (``core.contracts.Staged``), after a first
entry, the *manifest*, that says what the chunks are and where reading them back starts. Only
then are they produced, in one Kafka transaction; every message carries an id header
(``tag:transaction:sequence``) by which a recovery recognises what a broker already shows.
"""

from __future__ import annotations

import io
import os
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import polars as pl

MESSAGE_SCHEMA = {
    "partition": pl.Int32,
    "key": pl.Binary,
    "value": pl.Binary,
    "headers": pl.String,
}
"""Columns of an outbox chunk: the target partition, key and value bytes, and the user's
headers as a JSON object (or null)."""

ID_HEADER = "tideflow.id"
"""The header that names a message: ``<tag>:<transaction>:<sequence>``."""

CHUNK_BYTES = 8 << 20
"""Largest chunk aimed at: a state-store row each, so no single value gets near a
database's limit (SQLite's is 1 GB) and recovery reads one modest piece at a time."""


@dataclass
class Manifest:
    """The first outbox entry of a checkpoint: what its messages are and where a recovery
    starts reading the topic back."""

    topic: str
    tag: str
    transaction: int
    messages: int
    starts: dict[int, int]
    """Per partition, an offset at or before the first message of this transaction."""

    def encode(self) -> bytes:
        """As stored."""
        return orjson.dumps(
            {
                "version": 1,
                "topic": self.topic,
                "tag": self.tag,
                "transaction": self.transaction,
                "messages": self.messages,
                "starts": {str(p): o for p, o in self.starts.items()},
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> Manifest:
        """Inverse of :meth:`encode`."""
        raw = orjson.loads(data)
        if raw.get("version") != 1:
            raise ValueError(f"unknown outbox manifest version {raw.get('version')!r}")
        return cls(
            topic=raw["topic"],
            tag=raw["tag"],
            transaction=int(raw["transaction"]),
            messages=int(raw["messages"]),
            starts={int(p): int(o) for p, o in raw["starts"].items()},
        )


def message_id(tag: str, transaction: int, sequence: int) -> str:
    """The id header value of one message."""
    return f"{tag}:{transaction}:{sequence}"


def parse_id(value: bytes | str | None, tag: str, transaction: int) -> int | None:
    """The sequence number in an id header if it belongs to ``tag``'s ``transaction``."""
    if value is None:
        return None
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    prefix = f"{tag}:{transaction}:"
    if not text.startswith(prefix):
        return None
    try:
        return int(text[len(prefix) :])
    except ValueError:
        return None


def encode_chunk(frame: pl.DataFrame) -> bytes:
    """One chunk as Arrow IPC, LZ4-compressed: every byte is written to the state store
    and fsynced with the checkpoint, and LZ4 costs less than the writing it saves."""
    buffer = io.BytesIO()
    frame.write_ipc(buffer, compression="lz4")
    return buffer.getvalue()


def decode_chunk(data: bytes) -> pl.DataFrame:
    """Inverse of :func:`encode_chunk`."""
    return pl.read_ipc(io.BytesIO(data))


def split_for_chunks(frame: pl.DataFrame) -> Iterator[pl.DataFrame]:
    """``frame`` in slices of about :data:`CHUNK_BYTES` each."""
    size = frame.estimated_size()
    if size <= CHUNK_BYTES or frame.height <= 1:
        yield frame
        return
    rows = max(1, int(frame.height * CHUNK_BYTES // size))
    yield from frame.iter_slices(rows)


@dataclass
class OutboxBuffer:
    """Encoded message chunks of one checkpoint interval; memory is bounded by
    ``memory_bytes``, beyond which chunks go to spill files in ``spill_dir``."""

    spill_dir: Path
    memory_bytes: int
    messages: int = 0
    _chunks: list[bytes | Path] = field(default_factory=list)
    _in_memory: int = 0

    def add(self, frame: pl.DataFrame) -> None:
        """Keep the messages of ``frame`` (columns of :data:`MESSAGE_SCHEMA`)."""
        for part in split_for_chunks(frame):
            data = encode_chunk(part)
            if self._in_memory + len(data) > self.memory_bytes:
                self._chunks.append(self._spill(data))
            else:
                self._chunks.append(data)
                self._in_memory += len(data)
            self.messages += part.height

    def _spill(self, data: bytes) -> Path:
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="chunk-", suffix=".arrow", dir=self.spill_dir)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        return Path(name)

    def chunks(self) -> Iterator[bytes]:
        """The chunks in order, one at a time."""
        for chunk in self._chunks:
            yield chunk if isinstance(chunk, bytes) else chunk.read_bytes()

    def frames(self) -> Iterator[pl.DataFrame]:
        """The chunks decoded, in order."""
        for data in self.chunks():
            yield decode_chunk(data)

    def clear(self) -> None:
        """Forget everything (delivered, or handed to the checkpoint and produced)."""
        for chunk in self._chunks:
            if isinstance(chunk, Path):
                chunk.unlink(missing_ok=True)
        self._chunks = []
        self._in_memory = 0
        self.messages = 0


def spill_folder(state_dir: Path, scope: str, pipeline: str, sink: str) -> Path:
    """Where one sink spills chunks; emptied at open (a crashed run's spill files are never
    needed: what a checkpoint decided is in the state store)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{scope}-{pipeline}-{sink}")
    return state_dir / "outbox-spill" / safe


def fresh_spill_folder(state_dir: Path, scope: str, pipeline: str, sink: str) -> Path:
    """:func:`spill_folder`, emptied."""
    folder = spill_folder(state_dir, scope, pipeline, sink)
    if folder.exists():
        for leftover in folder.glob("chunk-*.arrow"):
            leftover.unlink(missing_ok=True)
    return folder


def new_reader_group() -> str:
    """A consumer group id nobody joins (a read-back assigns partitions itself)."""
    return f"tideflow-readback-{uuid.uuid4().hex}"

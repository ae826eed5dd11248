"""What the message-broker connectors (MQTT, Redis Streams, AMQP) share.

- **Payloads** become records and records become payloads in one of three formats: ``json``
  (one JSON object per message, its keys become columns), ``text`` (UTF-8 text in one
  column) or ``bytes`` (the raw payload in one binary column). A message that does not
  decode is a dead letter, never a silently dropped record.
- **Acknowledgements wait for the checkpoint.** A source numbers the messages it delivers;
  the number of the last one in a batch is the batch's position. :class:`AckLedger` keeps
  the broker's handle of every delivered message until ``checkpointed(position)`` says
  everything up to that number is durable, and only then hands the handles back for acking.
  While it holds any, the source answers ``awaiting_ack()``, and the engine checkpoints as
  soon as ``checkpoint.min_interval`` allows: a message is acknowledged about one checkpoint
  after it arrived, not at the record or time thresholds.
- **Batches are handed on when the connection goes quiet**, not when ``max_wait`` runs out:
  a lone message would otherwise wait ``max_wait`` before its checkpoint could even start.
  Under load the messages that arrive while the engine is busy make the next batch.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from typing import Any, Generic, Literal, TypeVar

import orjson
import polars as pl
from pydantic import Field

from tideflow.core.contracts import MAX_RECORD_BYTES, long_record_letter, raw_dead_letters
from tideflow.core.settings import Settings
from tideflow.errors import ConfigError

PayloadFormat = Literal["json", "text", "bytes"]
H = TypeVar("H")


class BatchingSettings(Settings):
    """How a message source fills batches and when it ends, shared by the broker sources."""

    max_wait: float = Field(
        0.5,
        gt=0,
        description="Longest wait (s) for a message before handing on an empty batch; a "
        "batch is handed on as soon as no more messages are waiting on the connection.",
    )
    stop_after_idle: float | None = Field(
        None,
        gt=0,
        description="End the source after this many seconds without a message (drain what "
        "is waiting as a batch job). Unset: run until stopped.",
    )
    max_record_bytes: int = Field(
        MAX_RECORD_BYTES,
        ge=1024,
        description="Longest message payload decoded; a longer one is dead-lettered with "
        "its origin and size (and acknowledged with its batch) instead of being parsed.",
    )


class TlsSettings(Settings):
    """TLS for a broker connection."""

    ca_file: str | None = Field(
        None, description="CA bundle that signed the server's certificate (system CAs if unset)."
    )
    cert_file: str | None = Field(None, description="Client certificate (mutual TLS).")
    key_file: str | None = Field(None, description="Client certificate's private key.")
    insecure: bool = Field(
        False,
        description="Skip the server certificate and host name checks (tests only; never "
        "in production).",
    )


def decode_payloads(
    payloads: Sequence[bytes],
    fmt: PayloadFormat,
    payload_column: str,
    extra: dict[str, Sequence[Any]] | None = None,
    max_bytes: int | None = None,
    origins: Sequence[str] | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """Turn message payloads into a frame, plus dead letters for those that do not decode.

    ``extra`` holds per-message metadata columns (topic, stream id, routing key), aligned
    with ``payloads``; they are kept for the messages that decode. A payload longer than
    ``max_bytes`` is not decoded: its dead letter names its origin (``origins``, aligned with
    ``payloads``) and size.
    """
    extra = extra or {}
    good: list[int] = []
    rows: list[Any] = []
    bad_records: list[str] = []
    bad_reasons: list[str] = []
    # The client libraries hand over one message at a time; decoding each with orjson (C)
    # is what lets a bad message be dead-lettered alone instead of failing its batch.
    longest = max(map(len, payloads), default=0) if max_bytes is not None else 0
    for i, payload in enumerate(payloads):
        if max_bytes is not None and longest > max_bytes and len(payload) > max_bytes:
            origin = origins[i] if origins is not None else f"message {i + 1} of its batch"
            record, reason = long_record_letter(origin, len(payload), payload[:256], max_bytes)
            bad_records.append(record)
            bad_reasons.append(reason)
            continue
        try:
            if fmt == "json":
                value = orjson.loads(payload)
                if not isinstance(value, dict):
                    raise ValueError(f"expected a JSON object, got {type(value).__name__}")
            elif fmt == "text":
                value = payload.decode("utf-8")
            else:
                value = payload
        except (ValueError, UnicodeDecodeError) as exc:
            bad_records.append(payload.decode("utf-8", errors="replace"))
            bad_reasons.append(f"payload is not valid {fmt}: {exc}")
            continue
        good.append(i)
        rows.append(value)
    if fmt == "json":
        # Polars keeps the height of a frame without columns, so `{}` messages still count.
        frame = pl.from_dicts(rows, infer_schema_length=None) if rows else pl.DataFrame()
    else:
        dtype = pl.String if fmt == "text" else pl.Binary
        frame = pl.DataFrame({payload_column: pl.Series(rows, dtype=dtype)})
    if extra and good:
        index = pl.Series(good, dtype=pl.UInt32)
        meta = pl.DataFrame({name: list(values) for name, values in extra.items()})[index]
        frame = frame.with_columns(meta.drop([c for c in meta.columns if c in frame.columns]))
    dead = raw_dead_letters(bad_records, bad_reasons) if bad_records else None
    return frame, dead


def encode_payloads(
    frame: pl.DataFrame, fmt: PayloadFormat, payload_column: str, exclude: Sequence[str] = ()
) -> list[bytes]:
    """One payload per row: the row as a JSON object (``json``, vectorised by Polars) or the
    value of ``payload_column`` (``text``/``bytes``)."""
    if fmt == "json":
        columns = [c for c in frame.columns if c not in exclude]
        if not columns:
            return [b"{}"] * frame.height
        encoded = frame.select(pl.struct(columns).struct.json_encode().alias("p"))["p"]
        return [text.encode() for text in encoded.to_list()]
    if payload_column not in frame.columns:
        raise ConfigError(
            f"format {fmt!r} sends the column {payload_column!r}, which the records do not "
            f"have (columns: {', '.join(frame.columns)}); set `payload_column` or use "
            "format: json"
        )
    column = frame[payload_column]
    if column.dtype == pl.Binary:
        return [b if b is not None else b"" for b in column.to_list()]
    return [s.encode() if s is not None else b"" for s in column.cast(pl.String).to_list()]


class AckLedger(Generic[H]):
    """Broker handles of delivered messages, released for acking once a checkpoint covers
    them.

    Each delivery gets the next sequence number; a batch's position is the number of its
    last message. Handles belong to a connection *generation*: after a reconnect the broker
    redelivers what was not acknowledged, and a handle from the old connection (an MQTT
    packet id, an AMQP delivery tag) would name a different message on the new one, so
    :meth:`new_generation` forgets them.
    """

    def __init__(self, start: int = 0) -> None:
        self._lock = threading.Lock()
        self._seq = start
        self._generation = 0
        self._pending: deque[tuple[int, int, H]] = deque()

    @property
    def sequence(self) -> int:
        """Number of the last delivered message."""
        return self._seq

    def delivered(self, handle: H) -> int:
        """Record one delivered message; its sequence number."""
        with self._lock:
            self._seq += 1
            self._pending.append((self._seq, self._generation, handle))
            return self._seq

    def new_generation(self) -> int:
        """A new connection: unacknowledged handles of earlier ones are void."""
        with self._lock:
            self._generation += 1
            self._pending.clear()
            return self._generation

    def release(self, position: Any) -> list[H]:
        """Handles of the current connection up to ``position``, removed from the ledger."""
        if position is None:
            return []
        upto = int(position)
        out: list[H] = []
        with self._lock:
            while self._pending and self._pending[0][0] <= upto:
                _, generation, handle = self._pending.popleft()
                if generation == self._generation:
                    out.append(handle)
        return out

    def waiting(self) -> bool:
        """Whether some delivered message waits for a checkpoint to be acknowledged (the
        broker holds it unacknowledged meanwhile)."""
        with self._lock:
            return bool(self._pending)

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)

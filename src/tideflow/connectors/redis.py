"""Redis: the ``redis`` sink (hashes or JSON values by key) and the ``redis_streams`` source
and sink.

- ``redis`` writes one key per record, ``<key_prefix><key column>``: a hash of the other
  columns, or the record as a JSON string, with an optional TTL. Commands are pipelined
  (one round trip per ``pipeline_size`` records). Writing the same record again gives the
  same value, so a replay after a crash changes nothing (it only refreshes a TTL).
- ``redis_streams`` source reads a stream through a consumer group (XREADGROUP) and
  **acknowledges (XACK) only in** ``checkpointed()``. Entries read but not acknowledged stay
  in the consumer's pending list; on start the source reads that list first, so a crash
  before the checkpoint redelivers exactly the unacknowledged entries.
- ``redis_streams`` sink appends with XADD (pipelined, optional approximate MAXLEN). A stream
  cannot hide entries until a commit, so it is at-least-once: after a crash the records since
  the last checkpoint are appended again (with new ids).

Connection failures are retried with backoff (:mod:`tideflow.core.retry`); a failed batch is
written again whole, which the commands above make safe (hashes and values are overwritten;
stream appends are at-least-once anyway).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar

import polars as pl
from pydantic import Field

from tideflow.connectors.brokers import IdleEnd, Retrying
from tideflow.connectors.messages import AckLedger, decode_payloads
from tideflow.core.contracts import (
    MAX_RECORD_BYTES,
    Context,
    Sink,
    Source,
    SourceBatch,
    dead_letters,
    long_record_letter,
    raw_dead_letters,
)
from tideflow.core.retry import RetryPolicy
from tideflow.core.settings import Settings
from tideflow.errors import ConfigError, PipelineError, require
from tideflow.registry import component
from tideflow.secrets import redact, register_secret

W = TypeVar("W", bound="RedisConnection")


class RedisConnection(Settings):
    """Where Redis is."""

    url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis URL: redis://[user:password@]host:port/db, rediss:// for TLS "
        "(the password is redacted in every message).",
    )
    password: str | None = Field(None, description="Password, when not in the URL.")
    retry: RetryPolicy = Field(
        default_factory=RetryPolicy,
        description="Retries through a Redis outage (backoff with jitter).",
    )


def _redis() -> Any:
    return require("redis", "redis")


def _connect(config: RedisConnection) -> Any:
    redis = _redis()
    if config.password:
        register_secret(config.password)
    try:
        client = redis.Redis.from_url(config.url, password=config.password)
    except ValueError as exc:
        raise ConfigError(redact(f"invalid Redis URL {config.url!r}: {exc}")) from exc
    password = client.connection_pool.connection_kwargs.get("password")
    if password:
        register_secret(str(password))
    return client


def _is_transient(exc: BaseException) -> bool:
    redis = _redis()
    return isinstance(
        exc, (redis.ConnectionError, redis.TimeoutError, redis.exceptions.BusyLoadingError)
    )


def _failure(what: str, exc: Exception) -> PipelineError | None:
    """A Redis error as an actionable failure; None for any other exception."""
    redis = _redis()
    if isinstance(exc, redis.AuthenticationError):
        return PipelineError(
            redact(f"{what}: Redis refused the credentials ({exc}); check `url`/`password`")
        )
    if isinstance(exc, redis.RedisError):
        return PipelineError(redact(f"{what}: {type(exc).__name__}: {exc}"))
    return None


def _retrying(ctx: Context, config: RedisConnection) -> Retrying:
    """Redis operations retried through outages (other Redis errors become failures)."""
    return Retrying(ctx, config.retry, _is_transient, _failure)


class _Writer(Sink[W]):
    """What the ``redis`` and ``redis_streams`` sinks share: the connection, and commands
    sent in pipelined round trips with retries (a failed batch is written again whole)."""

    def __init__(self, config: W) -> None:
        super().__init__(config)
        self.client: Any = None
        self.ctx: Context | None = None
        self._retrying: Retrying | None = None

    def open(self, ctx: Context, pending: Any) -> None:
        """Connect (each batch is written as it arrives; nothing is pending)."""
        self.ctx = ctx
        self.client = _connect(self.config)
        self._retrying = _retrying(ctx, self.config)
        self._retrying.call(self.client.ping, "connect to Redis")

    def _pipelined(
        self, what: str, items: Sequence[Any], size: int, add: Callable[[Any, Any], None]
    ) -> None:
        """``add(pipe, item)`` for every item, ``size`` items per round trip."""
        assert self._retrying is not None

        def write() -> None:
            for start in range(0, len(items), size):
                pipe = self.client.pipeline(transaction=False)
                for item in items[start : start + size]:
                    add(pipe, item)
                pipe.execute()

        self._retrying.call(write, what)

    def close(self) -> None:
        """Release the connection pool."""
        if self.client is not None:
            self.client.close()
            self.client = None


def _as_text(frame: pl.DataFrame) -> pl.DataFrame:
    """Every column as text, vectorised: nested values as JSON, the rest by Polars' cast."""
    exprs = []
    for name, dtype in frame.schema.items():
        col = pl.col(name)
        if isinstance(dtype, (pl.Struct, pl.List, pl.Array)):
            # JSON-encode inside a one-field struct `{"v":...}` and keep the value part.
            as_json = pl.struct(col.alias("v")).struct.json_encode().str.slice(5).str.head(-1)
            exprs.append(pl.when(col.is_not_null()).then(as_json).alias(name))
        elif dtype == pl.Binary:
            exprs.append(col)  # Redis stores bytes as they are
        else:
            exprs.append(col.cast(pl.String))
    return frame.select(exprs)


# -- redis (key-value) sink -------------------------------------------------------------------


class RedisSinkConfig(RedisConnection):
    """Settings of the ``redis`` sink."""

    key_column: str = Field(description="Column whose value names each record's key.")
    key_prefix: str = Field("", description="Prefix of every key (`sensor:`).")
    value: Literal["hash", "json"] = Field(
        "hash",
        description="`hash`: HSET the other columns as fields (a null removes its field); "
        "`json`: SET the record (without the key column) as a JSON string.",
    )
    columns: list[str] | None = Field(
        None, description="Columns to store; all but the key column if unset."
    )
    ttl: float | None = Field(
        None, gt=0, description="Expire each written key after this many seconds."
    )
    pipeline_size: int = Field(1000, ge=1, description="Records per pipelined round trip.")


@component("sink", "redis")
class RedisSink(_Writer[RedisSinkConfig]):
    """Write records to Redis as hashes or JSON strings, one key per record."""

    config_model = RedisSinkConfig

    def write_batch(self, batch: pl.DataFrame) -> pl.DataFrame | None:
        """Write one key per record; records without a key are dead letters."""
        assert self.ctx is not None
        cfg = self.config
        if batch.height == 0:
            return None
        if cfg.key_column not in batch.columns:
            raise ConfigError(
                f"redis sink: `key_column` {cfg.key_column!r} is not a column "
                f"(columns: {', '.join(batch.columns)})"
            )
        columns = cfg.columns or [c for c in batch.columns if c != cfg.key_column]
        missing = [c for c in columns if c not in batch.columns]
        if missing:
            raise ConfigError(f"redis sink: `columns` names missing columns: {missing}")
        has_key = batch[cfg.key_column].is_not_null()
        bad = batch.filter(~has_key)
        good = batch.filter(has_key)
        keys = (pl.lit(cfg.key_prefix) + good[cfg.key_column].cast(pl.String)).alias("k")
        keyed = good.select(keys)["k"].to_list()
        if cfg.value == "json":
            values = good.select(pl.struct(columns).struct.json_encode().alias("v"))["v"].to_list()
            rows: list[Any] = values
        else:
            text = _as_text(good.select(columns))
            rows = text.rows()
        ttl_ms = int(cfg.ttl * 1000) if cfg.ttl else None

        def add(pipe: Any, item: tuple[str, Any]) -> None:
            key, row = item
            if cfg.value == "json":
                pipe.set(key, row, px=ttl_ms)
                return
            mapping = {c: v for c, v in zip(columns, row, strict=True) if v is not None}
            nulls = [c for c, v in zip(columns, row, strict=True) if v is None]
            if mapping:
                pipe.hset(key, mapping=mapping)
            if nulls:
                pipe.hdel(key, *nulls)
            if ttl_ms:
                pipe.pexpire(key, ttl_ms)

        items = list(zip(keyed, rows, strict=True))
        self._pipelined(f"write {len(keyed)} keys to Redis", items, cfg.pipeline_size, add)
        if bad.height:
            return dead_letters(bad, f"redis sink: key column {cfg.key_column!r} is null")
        return None


# -- redis_streams source ---------------------------------------------------------------------


class RedisStreamsSourceConfig(RedisConnection):
    """Settings of the ``redis_streams`` source."""

    stream: str = Field(description="Stream key to read.")
    group: str = Field(description="Consumer group (created at `start` when missing).")
    consumer: str | None = Field(
        None,
        description="Consumer name inside the group; defaults to `<pipeline>.<source>`. "
        "Keep it stable: the entries a consumer has not acknowledged are re-read by the "
        "consumer of the same name after a restart.",
    )
    start: str = Field(
        "0",
        description="Where a new group starts: `0` (the whole stream) or `$` (new entries "
        "only). Ignored when the group exists.",
    )
    format: Literal["fields", "json", "text", "bytes"] = Field(
        "fields",
        description="`fields`: each entry's fields become text columns; `json`/`text`/"
        "`bytes`: decode the field `payload_field` (bad JSON is dead-lettered).",
    )
    payload_field: str = Field("payload", description="Field decoded by json/text/bytes.")
    id_column: str | None = Field("id", description="Column with the entry id; null to omit.")
    batch_size: int = Field(1000, ge=1, description="Most entries per XREADGROUP.")
    max_record_bytes: int = Field(
        MAX_RECORD_BYTES,
        ge=1024,
        description="Longest entry decoded (its payload field, or all fields for `fields`); "
        "a longer one is dead-lettered with its id and size instead of being parsed.",
    )
    max_wait: float = Field(
        0.5, gt=0, description="Longest block (s) waiting for new entries before handing on."
    )
    stop_after_idle: float | None = Field(
        None,
        gt=0,
        description="End the source after this many seconds without an entry (drain a "
        "stream as a batch job). Unset: run until stopped.",
    )


@component("source", "redis_streams")
class RedisStreamsSource(Source[RedisStreamsSourceConfig]):
    """Read a Redis stream with a consumer group; XACK only after the checkpoint."""

    config_model = RedisStreamsSourceConfig
    replays_without_state = False  # the group keeps what was not acknowledged

    def __init__(self, config: RedisStreamsSourceConfig) -> None:
        super().__init__(config)
        self.bounded = config.stop_after_idle is not None
        self.client: Any = None
        self.ctx: Context | None = None
        self._retrying: Retrying | None = None
        self.consumer = ""
        self._ledger: AckLedger[bytes] = AckLedger()
        self._backlog = True
        self._backlog_after: bytes | str = "0"
        self._idle = IdleEnd(config.stop_after_idle)

    def open(self, ctx: Context, position: Any) -> None:
        """Connect, create the group if needed, and re-read this consumer's pending list."""
        self.ctx = ctx
        self.consumer = self.config.consumer or f"{ctx.pipeline}.{ctx.name}"
        self.client = _connect(self.config)
        self._retrying = _retrying(ctx, self.config)
        self._ledger = AckLedger(int(position or 0))
        self._backlog = True
        self._backlog_after = "0"
        self._idle.restart()
        redis = _redis()

        def create() -> None:
            try:
                self.client.xgroup_create(
                    self.config.stream, self.config.group, id=self.config.start, mkstream=True
                )
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

        self._retrying.call(create, f"create consumer group {self.config.group!r}")

    def read_batch(self) -> SourceBatch | None:
        """Pending entries first (after a restart), then new ones."""
        assert self._retrying is not None
        cfg = self.config
        # An id re-reads this consumer's delivered-but-unacknowledged entries after it (they
        # stay pending until acknowledged, so the id pages through them); `>` reads new ones.
        start = self._backlog_after if self._backlog else ">"
        block = None if self._backlog else int(cfg.max_wait * 1000)
        reply = self._retrying.call(
            lambda: self.client.xreadgroup(
                cfg.group, self.consumer, {cfg.stream: start}, count=cfg.batch_size, block=block
            ),
            f"read stream {cfg.stream!r}",
        )
        entries: list[tuple[bytes, dict[bytes, bytes] | None]] = reply[0][1] if reply else []
        if self._backlog:
            if not entries or len(entries) < cfg.batch_size:
                self._backlog = False
            else:
                self._backlog_after = entries[-1][0]
            # A pending entry whose data was trimmed away comes back without fields: it can
            # only be acknowledged.
            gone = [eid for eid, fields in entries if fields is None]
            if gone:
                self.client.xack(cfg.stream, cfg.group, *gone)
            entries = [(eid, fields) for eid, fields in entries if fields is not None]
        if not entries:
            if self._backlog:
                return self.read_batch()
            return self._idle.empty(self._ledger.sequence)
        self._idle.restart()
        ids = [eid for eid, _ in entries]
        for eid in ids:
            self._ledger.delivered(eid)
        frame, dead = self._decode(entries)
        return SourceBatch(frame, self._ledger.sequence, dead)

    def _decode(
        self, entries: list[tuple[bytes, dict[bytes, bytes] | None]]
    ) -> tuple[pl.DataFrame, pl.DataFrame | None]:
        cfg = self.config
        ids = [eid.decode() for eid, _ in entries]
        extra: dict[str, Sequence[Any]] = {cfg.id_column: ids} if cfg.id_column else {}
        if cfg.format == "fields":
            sizes = [sum(len(k) + len(v) for k, v in (f or {}).items()) for _, f in entries]
            if max(sizes, default=0) > cfg.max_record_bytes:
                return self._decode_fields_bounded(entries, ids, sizes)
            rows = [
                {k.decode(): v.decode("utf-8", errors="replace") for k, v in (f or {}).items()}
                for _, f in entries
            ]
            frame = pl.from_dicts(rows, infer_schema_length=None)
            if extra:
                frame = frame.with_columns(pl.Series(cfg.id_column, ids))
            return frame, None
        key = cfg.payload_field.encode()
        payloads = [(f or {}).get(key, b"") for _, f in entries]
        origins = [f"redis stream {cfg.stream} entry {i}" for i in ids]
        return decode_payloads(
            payloads, cfg.format, cfg.payload_field, extra, cfg.max_record_bytes, origins
        )

    def _decode_fields_bounded(
        self,
        entries: list[tuple[bytes, dict[bytes, bytes] | None]],
        ids: list[str],
        sizes: list[int],
    ) -> tuple[pl.DataFrame, pl.DataFrame | None]:
        """``fields`` entries when some are longer than ``max_record_bytes``: those are
        dead-lettered with their id and size, the others decoded."""
        cfg = self.config
        limit = cfg.max_record_bytes
        keep = [i for i, size in enumerate(sizes) if size <= limit]
        letters = [
            long_record_letter(
                f"redis stream {cfg.stream} entry {ids[i]}",
                sizes[i],
                b" ".join(k + b"=" + v[:64] for k, v in (entries[i][1] or {}).items()),
                limit,
            )
            for i in range(len(entries))
            if sizes[i] > limit
        ]
        frame, _ = self._decode([entries[i] for i in keep])
        dead = raw_dead_letters([r for r, _ in letters], [why for _, why in letters])
        return frame, dead

    def awaiting_ack(self) -> bool:
        """Entries handed on wait in the consumer's pending list for their XACK."""
        return self._ledger.waiting()

    def checkpointed(self, position: Any) -> None:
        """XACK every entry up to ``position``: the checkpoint covering them is durable."""
        ids = self._ledger.release(position)
        for start in range(0, len(ids), 10_000):
            self.client.xack(self.config.stream, self.config.group, *ids[start : start + 10_000])

    def close(self) -> None:
        """Release the connection pool (unacknowledged entries stay pending)."""
        if self.client is not None:
            self.client.close()
            self.client = None


# -- redis_streams sink -----------------------------------------------------------------------


class RedisStreamsSinkConfig(RedisConnection):
    """Settings of the ``redis_streams`` sink."""

    stream: str = Field(description="Stream key to append to.")
    format: Literal["fields", "json"] = Field(
        "fields",
        description="`fields`: each column a field (as text; nulls omitted); `json`: the "
        "record as JSON in `payload_field`.",
    )
    payload_field: str = Field("payload", description="Field holding the JSON record.")
    maxlen: int | None = Field(
        None, ge=1, description="Trim the stream to about this many entries (MAXLEN ~)."
    )
    pipeline_size: int = Field(1000, ge=1, description="Entries per pipelined round trip.")


@component("sink", "redis_streams")
class RedisStreamsSink(_Writer[RedisStreamsSinkConfig]):
    """Append records to a Redis stream with XADD (at-least-once)."""

    config_model = RedisStreamsSinkConfig

    def write_batch(self, batch: pl.DataFrame) -> None:
        """XADD every record."""
        assert self.ctx is not None
        cfg = self.config
        if batch.height == 0:
            return
        if cfg.format == "json":
            encoded = batch.select(pl.struct(pl.all()).struct.json_encode().alias("v"))["v"]
            entries: list[dict[str, Any]] = [{cfg.payload_field: v} for v in encoded.to_list()]
        else:
            text = _as_text(batch)
            names = text.columns
            entries = [
                {n: v for n, v in zip(names, row, strict=True) if v is not None}
                for row in text.rows()
            ]
        if any(not e for e in entries):
            raise PipelineError("redis_streams sink: a record with only nulls has no fields")

        def add(pipe: Any, fields: dict[str, Any]) -> None:
            pipe.xadd(cfg.stream, fields, maxlen=cfg.maxlen, approximate=True)

        what = f"XADD {len(entries)} entries to {cfg.stream!r}"
        self._pipelined(what, entries, cfg.pipeline_size, add)

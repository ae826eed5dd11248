"""The ``amqp`` source and sink for RabbitMQ (AMQP 0-9-1, pika).

Source: consumes a queue (declared durable, optionally bound to an exchange with routing
keys) with manual acknowledgements. Nothing is acknowledged until ``checkpointed()``, which
sends one ``basic.ack`` with ``multiple=True`` up to the last delivery tag the checkpoint
covers. Unacknowledged messages go back to the queue when the connection closes, so a crash
before the checkpoint redelivers exactly them (flagged ``redelivered``). ``prefetch`` bounds
the unacknowledged messages, so it bounds the messages per checkpoint: while messages wait,
the engine checkpoints as soon as ``checkpoint.min_interval`` allows (group commit).

pika's BlockingConnection may only be used from one thread: the source's thread drives it in
``read_batch`` and the engine's ``checkpointed()`` hands the ack over with
``add_callback_threadsafe``, which runs it on that thread (or in ``close``).

Sink: publishes each record to an exchange (the default exchange routes by queue name) with
a fixed routing key or one from a column, as persistent messages, with **publisher
confirms**: each publish returns when the broker has taken responsibility for it, and
``mandatory`` makes an unroutable message fail the run instead of vanishing. At-least-once:
after a crash the records since the last checkpoint are published again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import polars as pl
from pydantic import Field, model_validator

from tideflow.connectors.brokers import IdleEnd, Retrying, gather
from tideflow.connectors.messages import (
    AckLedger,
    BatchingSettings,
    PayloadFormat,
    decode_payloads,
    encode_payloads,
)
from tideflow.core.contracts import Context, Sink, Source, SourceBatch
from tideflow.core.retry import RetryPolicy
from tideflow.core.settings import Settings
from tideflow.errors import ConfigError, PipelineError, require
from tideflow.registry import component
from tideflow.secrets import redact, register_secret

ExchangeType = Literal["direct", "topic", "fanout", "headers"]


class AmqpConnection(Settings):
    """Where the broker is."""

    url: str = Field(
        "amqp://guest:guest@127.0.0.1:5672/%2F",
        description="AMQP URL: amqp://user:password@host:port/vhost (`%2F` is the default "
        "vhost `/`), amqps:// for TLS; the password is redacted in every message.",
    )
    exchange: str = Field("", description="Exchange; empty is the default exchange.")
    exchange_type: ExchangeType = Field(
        "direct", description="Type used when declaring `exchange`."
    )
    declare: bool = Field(
        True,
        description="Declare the exchange and queue (durable) if they do not exist; false "
        "when they are managed elsewhere.",
    )
    retry: RetryPolicy = Field(
        default_factory=RetryPolicy,
        description="Reconnecting through a broker outage (backoff with jitter).",
    )


def _pika() -> Any:
    return require("pika", "amqp")


def _parameters(url: str) -> Any:
    pika = _pika()
    password = unquote(urlsplit(url).password or "")
    if password:
        register_secret(password)
    try:
        return pika.URLParameters(url)
    except (ValueError, TypeError) as exc:
        raise ConfigError(redact(f"invalid AMQP URL {url!r}: {exc}")) from exc


CONFIRM_TIMEOUT = 30.0
"""Seconds to wait for the broker's publisher confirms before reconnecting."""


def _is_transient(exc: BaseException) -> bool:
    pika = _pika()
    if isinstance(
        exc, pika.exceptions.ProbableAuthenticationError | pika.exceptions.ProbableAccessDeniedError
    ):
        return False
    return isinstance(
        exc,
        pika.exceptions.AMQPConnectionError
        | pika.exceptions.StreamLostError
        | pika.exceptions.ConnectionClosed
        | ConnectionError
        | OSError,
    )


def _failure(what: str, exc: BaseException) -> PipelineError | None:
    """A pika error as the failure the run reports; None for any other exception."""
    pika = _pika()
    if not isinstance(exc, pika.exceptions.AMQPError):
        return None
    hint = ""
    if isinstance(exc, pika.exceptions.ProbableAuthenticationError):
        hint = "; check the user and password in `url`"
    elif isinstance(exc, pika.exceptions.ChannelClosedByBroker):
        hint = (
            "; the broker refused an operation (does the queue/exchange exist with these settings?)"
        )
    return PipelineError(redact(f"{what}: {type(exc).__name__}: {exc}{hint}"))


class AmqpSourceConfig(AmqpConnection, BatchingSettings):
    """Settings of the ``amqp`` source."""

    queue: str = Field(description="Queue to consume.")
    routing_keys: list[str] = Field(
        default_factory=list,
        description="Bind `queue` to `exchange` with these routing keys (topic exchanges "
        "accept `*` and `#` patterns); needs a named `exchange`.",
    )
    prefetch: int = Field(
        10_000,
        ge=1,
        le=65_535,
        description="Most unacknowledged messages the broker sends (basic.qos). Messages "
        "are acknowledged at checkpoints, so at most this many pass per checkpoint (a group "
        "commit follows each within `checkpoint.min_interval`; without group commit keep it "
        "above `checkpoint.every_records`).",
    )
    format: PayloadFormat = Field(
        "json",
        description="Payload format: `json` (one object per message), `text` or `bytes` "
        "(in `payload_column`). Messages that do not decode are dead-lettered.",
    )
    payload_column: str = Field("payload", description="Column of `text`/`bytes` payloads.")
    routing_key_column: str | None = Field(
        "routing_key", description="Column with each message's routing key; null to omit."
    )
    batch_size: int = Field(1000, ge=1, description="Most messages per batch.")

    @model_validator(mode="after")
    def _binding(self) -> AmqpSourceConfig:
        if self.routing_keys and not self.exchange:
            raise ValueError(
                "`routing_keys` bind the queue to an exchange: set `exchange` (the default "
                "exchange routes by queue name and takes no bindings)"
            )
        return self


class _Link:
    """A connection and channel, reconnected with backoff."""

    def __init__(self, config: AmqpConnection, ctx: Context) -> None:
        self.config = config
        self.ctx = ctx
        self.params = _parameters(config.url)
        self.connection: Any = None
        self.channel: Any = None
        self.where = f"AMQP broker {self.params.host}:{self.params.port}"
        self.retrying = Retrying(ctx, config.retry, _is_transient, _failure)

    def connect(self, setup: Callable[[Any], None]) -> None:
        """Open a connection and channel and run ``setup(channel)``, retrying outages."""
        pika = _pika()

        def attempt() -> None:
            self.drop()
            self.connection = pika.BlockingConnection(self.params)
            self.channel = self.connection.channel()
            setup(self.channel)

        self.retrying.call(attempt, f"connect to {self.where}")

    def drop(self) -> None:
        """Close whatever is open, ignoring errors of an already broken connection."""
        pika = _pika()
        if self.connection is not None and self.connection.is_open:
            try:
                self.connection.close()
            except (pika.exceptions.AMQPError, OSError) as exc:
                self.ctx.log.debug("closing the AMQP connection: %s", exc)
        self.connection = None
        self.channel = None


@component("source", "amqp")
class AmqpSource(Source[AmqpSourceConfig]):
    """Consume a RabbitMQ queue; messages are acknowledged after the checkpoint."""

    config_model = AmqpSourceConfig
    replays_without_state = False  # the queue keeps what was not acknowledged

    def __init__(self, config: AmqpSourceConfig) -> None:
        super().__init__(config)
        self.bounded = config.stop_after_idle is not None
        self._link: _Link | None = None
        self._ledger: AckLedger[int] = AckLedger()
        self._inbox: list[tuple[int, str, bytes]] = []
        self._idle = IdleEnd(config.stop_after_idle)

    def open(self, ctx: Context, position: Any) -> None:
        """Connect, declare and bind, and start consuming."""
        self._ledger = AckLedger(int(position or 0))
        self._link = _Link(self.config, ctx)
        self._link.connect(self._setup)
        self._idle.restart()

    def _setup(self, channel: Any) -> None:
        cfg = self.config
        if cfg.declare:
            if cfg.exchange:
                channel.exchange_declare(cfg.exchange, cfg.exchange_type, durable=True)
            channel.queue_declare(cfg.queue, durable=True)
        for key in cfg.routing_keys:
            channel.queue_bind(cfg.queue, cfg.exchange, routing_key=key)
        channel.basic_qos(prefetch_count=cfg.prefetch)
        # A new channel: delivery tags restart, and what the old one had not acknowledged is
        # redelivered by the broker.
        self._ledger.new_generation()
        self._inbox = []
        channel.basic_consume(cfg.queue, self._on_message, auto_ack=False)

    def _on_message(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        self._inbox.append((method.delivery_tag, method.routing_key, body))

    def read_batch(self) -> SourceBatch | None:
        """The messages waiting on the connection (at most ``batch_size``), as soon as it
        goes quiet; an empty batch when none came within ``max_wait``."""
        link = self._link
        assert link is not None
        deadline = time.monotonic() + self.config.max_wait

        def pump(timeout: float) -> None:
            # An ack queued by `checkpointed` wakes this wait (add_callback_threadsafe).
            link.connection.process_data_events(time_limit=timeout)

        def consume() -> None:
            # Always once: it also runs the acks `checkpointed` queued, even when messages
            # already waiting would fill the batch.
            pump(0)
            gather(
                lambda: len(self._inbox),
                pump,
                self.config.batch_size,
                deadline,
                link.ctx.stop_event,
                polled=True,
            )

        link.retrying.call(
            consume, f"consume {self.config.queue!r}", lambda: link.connect(self._setup)
        )
        taken = self._inbox[: self.config.batch_size]
        self._inbox = self._inbox[self.config.batch_size :]
        if not taken:
            return self._idle.empty(self._ledger.sequence)
        self._idle.restart()
        for tag, _, _ in taken:
            self._ledger.delivered(tag)
        extra: dict[str, Sequence[Any]] | None = None
        if self.config.routing_key_column:
            extra = {self.config.routing_key_column: [key for _, key, _ in taken]}
        frame, dead = decode_payloads(
            [body for _, _, body in taken],
            self.config.format,
            self.config.payload_column,
            extra,
            self.config.max_record_bytes,
            [f"amqp queue {self.config.queue} delivery {tag}" for tag, _, _ in taken],
        )
        return SourceBatch(frame, self._ledger.sequence, dead)

    def awaiting_ack(self) -> bool:
        """Messages handed on wait for their ``basic.ack``."""
        return self._ledger.waiting()

    def checkpointed(self, position: Any) -> None:
        """Acknowledge (multiple=True) up to the last delivery tag ``position`` covers; sent
        from the source's thread, which owns the connection."""
        tags = self._ledger.release(position)
        link = self._link
        if not tags or link is None or link.connection is None:
            return
        channel = link.channel
        last = max(tags)

        def ack() -> None:
            # A tag of a closed channel must not be acked on its successor.
            if channel is link.channel and channel.is_open:
                channel.basic_ack(delivery_tag=last, multiple=True)

        link.connection.add_callback_threadsafe(ack)

    def close(self) -> None:
        """Send the last checkpoint's ack, then close (the rest return to the queue)."""
        if self._link is None:
            return
        pika = _pika()
        try:
            if self._link.connection is not None and self._link.connection.is_open:
                self._link.connection.process_data_events(time_limit=0)
        except pika.exceptions.AMQPError as exc:
            self._link.ctx.log.warning("amqp source: final acknowledgement failed: %s", exc)
        finally:
            self._link.drop()
            self._link = None


class AmqpSinkConfig(AmqpConnection):
    """Settings of the ``amqp`` sink."""

    routing_key: str | None = Field(
        None, description="Routing key of every message (with the default exchange: the queue)."
    )
    routing_key_column: str | None = Field(
        None, description="Column holding each record's routing key (instead of `routing_key`)."
    )
    queue: str | None = Field(
        None,
        description="Declare this durable queue (and bind it to `exchange` with "
        "`routing_key`) before publishing, so messages have somewhere to go.",
    )
    format: PayloadFormat = Field(
        "json",
        description="`json`: each record as a JSON object (without `routing_key_column`); "
        "`text`/`bytes`: the value of `payload_column`.",
    )
    payload_column: str = Field("payload", description="Column sent by `text`/`bytes`.")
    persistent: bool = Field(True, description="Persistent messages (delivery mode 2).")
    mandatory: bool = Field(
        True,
        description="Fail the run when a message matches no queue, instead of the broker "
        "dropping it silently.",
    )
    content_type: str | None = Field(
        None, description="Content type property; `application/json` for json by default."
    )

    @model_validator(mode="after")
    def _routing(self) -> AmqpSinkConfig:
        if (self.routing_key is None) == (self.routing_key_column is None):
            raise ValueError("give exactly one of `routing_key` or `routing_key_column`")
        return self


@component("sink", "amqp")
class AmqpSink(Sink[AmqpSinkConfig]):
    """Publish records to RabbitMQ with publisher confirms (at-least-once)."""

    config_model = AmqpSinkConfig

    def __init__(self, config: AmqpSinkConfig) -> None:
        super().__init__(config)
        self._link: _Link | None = None
        # Delivery tag -> index of the message in the batch being written, until confirmed.
        self._pending: dict[int, int] = {}
        self._tag = 0
        self._nacked: list[int] = []
        self._returned: list[str] = []

    def open(self, ctx: Context, pending: Any) -> None:
        """Connect, declare, and turn on publisher confirms."""
        self._link = _Link(self.config, ctx)
        self._link.connect(self._setup)

    def _setup(self, channel: Any) -> None:
        cfg = self.config
        if cfg.declare:
            if cfg.exchange:
                channel.exchange_declare(cfg.exchange, cfg.exchange_type, durable=True)
            if cfg.queue:
                channel.queue_declare(cfg.queue, durable=True)
                if cfg.exchange and cfg.routing_key is not None:
                    channel.queue_bind(cfg.queue, cfg.exchange, routing_key=cfg.routing_key)
        channel.add_on_return_callback(self._on_return)
        # Confirms arrive asynchronously through the underlying channel: the blocking
        # channel's own confirm mode waits one round trip per message (about 200 messages
        # per second here), this way a batch is published and its confirms awaited once.
        selected: list[bool] = []
        channel._impl.confirm_delivery(self._on_confirm, lambda _frame: selected.append(True))
        assert self._link is not None
        while not selected:
            self._link.connection.process_data_events(time_limit=0.05)
        # A new channel numbers deliveries from 1 again.
        self._tag = 0

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        tags = (
            [t for t in self._pending if t <= method.delivery_tag]
            if method.multiple
            else [method.delivery_tag]
        )
        nack = type(method).__name__ == "Nack"
        for tag in tags:
            index = self._pending.pop(tag, None)
            if nack and index is not None:
                self._nacked.append(index)

    def _on_return(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        self._returned.append(method.routing_key)

    def write_batch(self, batch: pl.DataFrame) -> None:
        """Publish every record; return when the broker has confirmed them all."""
        link = self._link
        assert link is not None
        cfg = self.config
        if batch.height == 0:
            return
        if cfg.routing_key_column is not None:
            if cfg.routing_key_column not in batch.columns:
                raise ConfigError(
                    f"amqp sink: `routing_key_column` {cfg.routing_key_column!r} is not a "
                    f"column (columns: {', '.join(batch.columns)})"
                )
            keys = batch[cfg.routing_key_column].cast(pl.String).fill_null("").to_list()
            exclude: tuple[str, ...] = (cfg.routing_key_column,)
        else:
            keys = [cfg.routing_key or ""] * batch.height
            exclude = ()
        payloads = encode_payloads(batch, cfg.format, cfg.payload_column, exclude)
        pika = _pika()
        properties = pika.BasicProperties(
            delivery_mode=2 if cfg.persistent else 1,
            content_type=cfg.content_type or ("application/json" if cfg.format == "json" else None),
        )
        self._pending.clear()
        self._nacked.clear()
        self._returned.clear()
        sent = 0

        def publish() -> None:
            nonlocal sent
            if self._pending:
                # After a reconnect: everything from the first unconfirmed message goes out
                # again (at-least-once; confirmed ones after it may be duplicated).
                sent = min(self._pending.values())
                self._pending.clear()
            while sent < len(payloads):
                # Pending before the publish: pika reads incoming frames while it writes, so
                # the broker's confirm can arrive (and be dropped as unknown) inside the call.
                self._tag += 1
                self._pending[self._tag] = sent
                link.channel.basic_publish(
                    cfg.exchange, keys[sent], payloads[sent], properties, cfg.mandatory
                )
                sent += 1
                if len(self._pending) >= 1000:
                    link.connection.process_data_events(time_limit=0)
            # Confirms normally follow within milliseconds; a channel that stops answering
            # (closed under us, a stuck broker) is treated as an outage: reconnect, resend.
            deadline = time.monotonic() + CONFIRM_TIMEOUT
            while self._pending:
                if time.monotonic() > deadline or link.channel.is_closed:
                    raise TimeoutError(
                        f"no publisher confirm for {len(self._pending)} message(s) in "
                        f"{CONFIRM_TIMEOUT:.0f} s"
                    )
                link.connection.process_data_events(time_limit=0.05)

        link.retrying.call(publish, f"publish to {link.where}", lambda: link.connect(self._setup))
        if self._returned:
            raise PipelineError(
                f"amqp sink: {len(self._returned)} message(s) to exchange {cfg.exchange!r} "
                f"matched no queue (routing key {self._returned[0]!r}); declare and bind a "
                "queue (`queue`) or set `mandatory: false` to let the broker drop them"
            )
        if self._nacked:
            raise PipelineError(
                f"amqp sink: the broker refused {len(self._nacked)} message(s) (nack) on "
                f"exchange {cfg.exchange!r}; see the broker's log"
            )

    def close(self) -> None:
        """Close the connection."""
        if self._link is not None:
            self._link.drop()
            self._link = None

"""The ``mqtt`` source and sink (paho-mqtt, MQTT 3.1.1).

Source:

- subscribes to topic filters (``+`` and ``#`` wildcards) at QoS 0, 1 or 2; payloads are JSON
  objects, text or bytes, and the message's topic can be kept as a column;
- **acknowledges after the checkpoint**: the client runs with paho's manual acks, so a QoS 1
  message is PUBACKed only in ``checkpointed()``. With a persistent session (``client_id``
  and ``clean_session: false``) a crash before the checkpoint leaves the messages
  unacknowledged and the broker delivers them again to the next run (at-least-once; a
  PUBACK sent just before a crash can be lost too, so messages of the last checkpoint may
  also come again);
- QoS 2 is delivered once within a connection, but the protocol hands a QoS 2 message over
  at PUBREC, before tideflow can make it durable: the broker will not send it again after a
  crash. Use QoS 1 when a crash must not lose messages;
- the network loop runs on the source's own thread (``read_batch``), so acknowledgements
  requested by the engine's thread are queued and sent from there: paho is not safe to
  drive from two threads without its own loop thread, and owning the loop is what lets a
  lost connection be retried through :func:`tideflow.core.retry.with_retries`.

Sink: publishes each record to a fixed topic or the topic in a column, waits for every
PUBACK/PUBCOMP at the checkpoint, and republishes what was not acknowledged after a
reconnect. A broker cannot hide messages until a commit, so delivery is at-least-once:
after a crash the records since the last checkpoint are published again.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, Literal

import polars as pl
from pydantic import Field, model_validator

from tideflow.connectors.brokers import IdleEnd, Retrying, gather
from tideflow.connectors.messages import (
    AckLedger,
    BatchingSettings,
    PayloadFormat,
    TlsSettings,
    decode_payloads,
    encode_payloads,
)
from tideflow.core.contracts import Context, Sink, Source, SourceBatch
from tideflow.core.retry import RetryPolicy
from tideflow.core.settings import Settings
from tideflow.errors import ConfigError, PipelineError, require
from tideflow.registry import component
from tideflow.secrets import redact, register_secret


class MqttConnection(Settings):
    """Broker address and credentials, common to the source and the sink."""

    host: str = Field("127.0.0.1", description="Broker host.")
    port: int = Field(1883, ge=1, le=65535, description="Broker port (8883 is usual for TLS).")
    client_id: str | None = Field(
        None,
        description="MQTT client id. Needed for a persistent session: the broker keeps the "
        "subscriptions and unacknowledged messages of this id while the pipeline is down. "
        "Two running clients must never share an id (the broker disconnects the first).",
    )
    username: str | None = Field(None, description="User name.")
    password: str | None = Field(None, description="Password (redacted in every message).")
    tls: TlsSettings | None = Field(None, description="Connect over TLS with these settings.")
    keepalive: int = Field(60, ge=5, description="Seconds between keep-alive pings.")
    protocol: Literal["5", "3.1.1"] = Field(
        "5",
        description="MQTT version. With 5 the client tells the broker how many unacknowledged "
        "messages it may hold (`receive_maximum`); with 3.1.1 the broker's own limit applies "
        "(Mosquitto's `max_inflight_messages`, 20 by default). The source acknowledges at "
        "checkpoints, so at most that many messages pass per checkpoint (with "
        "`checkpoint.min_interval` unset, a QoS 1 stream then stalls until the next one).",
    )
    session_expiry: int = Field(
        86_400,
        ge=0,
        description="MQTT 5 persistent sessions: seconds the broker keeps the session (its "
        "subscriptions and unacknowledged messages) after the client disconnects.",
    )
    connect_timeout: float = Field(10.0, gt=0, description="Seconds to wait for CONNACK.")
    retry: RetryPolicy = Field(
        default_factory=RetryPolicy,
        description="Reconnecting after a lost or refused connection (backoff with jitter).",
    )

    @model_validator(mode="after")
    def _credentials(self) -> MqttConnection:
        if self.password is not None and self.username is None:
            raise ValueError("`password` is only sent with a `username`")
        return self


class MqttSourceConfig(MqttConnection, BatchingSettings):
    """Settings of the ``mqtt`` source."""

    topics: list[str] = Field(
        min_length=1,
        description="Topic filters to subscribe to; `+` matches one level, `#` the rest "
        "(`sensors/+/temperature`, `plant/#`).",
    )
    qos: Literal[0, 1, 2] = Field(
        1,
        description="Subscription QoS. 1 (default): acknowledged after the checkpoint, "
        "redelivered after a crash with a persistent session. 0: no acknowledgement, a crash "
        "loses messages in flight. 2: once per connection, but not redelivered after a crash.",
    )
    clean_session: bool | None = Field(
        None,
        description="Start with a fresh session. Defaults to false when `client_id` is set "
        "(a persistent session: messages published while the pipeline is down, and those "
        "not yet acknowledged, are delivered on the next run) and true otherwise.",
    )
    format: PayloadFormat = Field(
        "json",
        description="Payload format: `json` (one object per message, keys become columns), "
        "`text` (UTF-8 in `payload_column`) or `bytes` (raw, binary `payload_column`). "
        "Messages that do not decode are dead-lettered.",
    )
    payload_column: str = Field("payload", description="Column of `text`/`bytes` payloads.")
    topic_column: str | None = Field(
        "topic", description="Column with the topic each message arrived on; null to omit."
    )
    batch_size: int = Field(1000, ge=1, description="Most messages per batch.")
    receive_maximum: int = Field(
        65_535,
        ge=1,
        le=65_535,
        description="MQTT 5: most unacknowledged QoS 1/2 messages the broker may send before "
        "the next checkpoint acknowledges them: at most this many pass per checkpoint (a "
        "group commit follows each within `checkpoint.min_interval`; without group commit "
        "keep it above `checkpoint.every_records`).",
    )

    @model_validator(mode="after")
    def _session(self) -> MqttSourceConfig:
        if self.clean_session is False and not self.client_id:
            raise ValueError(
                "a persistent session (`clean_session: false`) needs a `client_id`: the "
                "broker keeps the session under that id"
            )
        return self


class MqttSinkConfig(MqttConnection):
    """Settings of the ``mqtt`` sink."""

    topic: str | None = Field(None, description="Topic every record is published to.")
    topic_column: str | None = Field(
        None, description="Column holding each record's topic (instead of `topic`)."
    )
    qos: Literal[0, 1, 2] = Field(
        1, description="Publish QoS; with 1 and 2 the checkpoint waits for the broker's ack."
    )
    retain: bool = Field(False, description="Publish retained messages (last value per topic).")
    format: PayloadFormat = Field(
        "json",
        description="`json`: each record as a JSON object (without `topic_column`); "
        "`text`/`bytes`: the value of `payload_column`.",
    )
    payload_column: str = Field("payload", description="Column sent by `text`/`bytes`.")
    max_in_flight: int = Field(
        1000, ge=1, description="Most unacknowledged QoS 1/2 messages before publishing waits."
    )

    @model_validator(mode="after")
    def _topic(self) -> MqttSinkConfig:
        if (self.topic is None) == (self.topic_column is None):
            raise ValueError("give exactly one of `topic` or `topic_column`")
        if self.topic is not None and any(c in self.topic for c in "+#"):
            raise ValueError(f"cannot publish to {self.topic!r}: wildcards are for subscribing")
        return self


def _paho() -> Any:
    return require("paho.mqtt.client", "mqtt", "paho-mqtt")


class _Transient(PipelineError):
    """A lost or refused connection: worth retrying."""


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, (_Transient, OSError, TimeoutError))


class _Client:
    """A paho client whose network loop is driven by the thread that calls :meth:`pump`."""

    def __init__(self, config: MqttConnection, ctx: Context, clean: bool) -> None:
        mqtt = _paho()
        self.mqtt = mqtt
        self.config = config
        self.ctx = ctx
        self.connected = False
        self.generation = 0
        """Counts successful connections; a change means the broker will redeliver."""
        self.refused: Any = None
        self.on_connected: list[Any] = []
        self.clean = clean
        self.v5 = config.protocol == "5"
        self.client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=config.client_id or "",
            clean_session=None if self.v5 else clean,
            protocol=mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311,
            manual_ack=True,
        )
        if config.username is not None:
            if config.password:
                register_secret(config.password)
            self.client.username_pw_set(config.username, config.password)
        if config.tls is not None:
            tls = config.tls
            self.client.tls_set(
                ca_certs=tls.ca_file and ctx.resolve(tls.ca_file),
                certfile=tls.cert_file and ctx.resolve(tls.cert_file),
                keyfile=tls.key_file and ctx.resolve(tls.key_file),
                cert_reqs=ssl.CERT_NONE if tls.insecure else ssl.CERT_REQUIRED,
            )
            self.client.tls_insecure_set(tls.insecure)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.retrying = Retrying(ctx, config.retry, _is_transient)

    @property
    def where(self) -> str:
        """The broker, for messages."""
        return f"MQTT broker {self.config.host}:{self.config.port}"

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self.refused = reason
            return
        self.connected = True
        self.generation += 1
        for callback in self.on_connected:
            callback()

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self.connected = False

    def connect(self) -> None:
        """Connect (or reconnect) and wait for CONNACK, retrying with backoff."""
        self.retrying.call(self._connect_once, f"connect to {self.where}")

    def _connect_once(self) -> None:
        self.refused = None
        self.connected = False
        # paho closes the socket of a previous attempt itself before connecting again.
        if self.v5:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.ReceiveMaximum = getattr(self.config, "receive_maximum", 65_535)
            if not self.clean:
                props.SessionExpiryInterval = self.config.session_expiry
            self.client.connect(
                self.config.host,
                self.config.port,
                self.config.keepalive,
                clean_start=self.clean,
                properties=props,
            )
        else:
            self.client.connect(self.config.host, self.config.port, self.config.keepalive)
        deadline = time.monotonic() + self.config.connect_timeout
        while not self.connected:
            rc = self.client.loop(timeout=0.1)
            if self.refused is not None:
                self._raise_refused()
            if rc != self.mqtt.MQTT_ERR_SUCCESS:
                raise _Transient(f"{self.where}: {self.mqtt.error_string(rc)}")
            if time.monotonic() > deadline:
                raise _Transient(f"{self.where}: no CONNACK within {self.config.connect_timeout} s")

    def _raise_refused(self) -> None:
        reason = self.refused
        # Server unavailable, busy or over quota may pass; anything else (bad credentials,
        # a refused client id, not authorised) needs a change of configuration.
        if getattr(reason, "value", None) in (0x88, 0x89, 0x97):
            raise _Transient(f"{self.where} refused the connection for now: {reason}")
        raise PipelineError(
            redact(
                f"{self.where} refused the connection: {reason}; check `username`, "
                "`password`, `client_id` and the broker's ACLs"
            )
        )

    def pump(self, timeout: float) -> None:
        """Run the network loop once; reconnect (with backoff) when the connection is lost."""
        rc = self.client.loop(timeout=timeout)
        if rc != self.mqtt.MQTT_ERR_SUCCESS or not self.connected:
            self.ctx.log.warning("%s: connection lost (%s)", self.where, self.mqtt.error_string(rc))
            self.connect()

    def close(self) -> None:
        """Disconnect cleanly (a persistent session stays on the broker)."""
        try:
            if self.connected:
                self.client.disconnect()
                self.client.loop(timeout=0.1)
        finally:
            self.connected = False
            sock = self.client.socket()
            if sock is not None:
                sock.close()


@component("source", "mqtt")
class MqttSource(Source[MqttSourceConfig]):
    """Subscribe to MQTT topics; QoS 1 messages are acknowledged after the checkpoint."""

    config_model = MqttSourceConfig
    replays_without_state = False  # the broker keeps what was not acknowledged

    def __init__(self, config: MqttSourceConfig) -> None:
        super().__init__(config)
        self.bounded = config.stop_after_idle is not None
        self._client: _Client | None = None
        self._ledger: AckLedger[tuple[int, int]] = AckLedger()
        # (topic, payload, packet id, qos, connection generation)
        self._inbox: list[tuple[str, bytes, int, int, int]] = []
        self._acks: deque[list[tuple[int, int]]] = deque()
        self._idle = IdleEnd(config.stop_after_idle)
        self._lock = threading.Lock()
        self._suback: list[Any] | None = None

    def open(self, ctx: Context, position: Any) -> None:
        """Connect, subscribe, and number deliveries on from ``position``."""
        self._ledger = AckLedger(int(position or 0))
        clean = (
            self.config.clean_session
            if self.config.clean_session is not None
            else not self.config.client_id
        )
        if self.config.qos == 2:
            ctx.log.warning(
                "mqtt source %s subscribes at QoS 2: the broker hands a QoS 2 message over "
                "before the checkpoint, so a crash loses those received since the last one; "
                "use qos: 1 for redelivery after a crash",
                ctx.name,
            )
        self._client = _Client(self.config, ctx, clean)
        self._client.client.on_message = self._on_message
        self._client.client.on_subscribe = self._on_subscribe
        self._client.on_connected.append(self._subscribe)
        self._client.connect()
        # The SUBSCRIBE goes out on the next loop; wait for SUBACK so that a message
        # published right after `open` is already routed to this client.
        deadline = time.monotonic() + self.config.connect_timeout
        while self._suback is None:
            if time.monotonic() > deadline:
                raise PipelineError(
                    f"{self._client.where}: no SUBACK for {self.config.topics} within "
                    f"{self.config.connect_timeout} s"
                )
            self._client.pump(0.05)
        refused = [str(code) for code in self._suback if code.is_failure]
        if refused:
            raise PipelineError(
                f"{self._client.where} refused the subscription to {self.config.topics}: "
                f"{', '.join(refused)}; check the topic filters and the broker's ACLs"
            )
        self._idle.restart()

    def _subscribe(self) -> None:
        assert self._client is not None
        # Messages delivered on an earlier connection and not yet acked are redelivered by
        # the broker; their packet ids mean nothing on this connection.
        self._ledger.new_generation()
        self._suback = None
        self._client.client.subscribe([(topic, self.config.qos) for topic in self.config.topics])

    def _on_subscribe(
        self, client: Any, userdata: Any, mid: int, codes: list[Any], props: Any
    ) -> None:
        self._suback = codes

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        with self._lock:
            self._inbox.append(
                (message.topic, message.payload, message.mid, message.qos, self._generation())
            )

    def _generation(self) -> int:
        return self._client.generation if self._client is not None else 0

    def read_batch(self) -> SourceBatch | None:
        """The messages waiting on the connection (at most ``batch_size``), as soon as it
        goes quiet; an empty batch when none came within ``max_wait``."""
        client = self._client
        assert client is not None
        deadline = time.monotonic() + self.config.max_wait

        def waiting() -> int:
            with self._lock:
                return len(self._inbox)

        def pump(timeout: float) -> None:
            client.pump(timeout)
            self._send_acks()

        self._send_acks()
        # paho reads one packet per loop: while messages keep coming, loop without waiting.
        # An idle socket is waited on for up to 50 ms, 5 ms while a checkpoint is due, so
        # that its acknowledgements go out soon after it.
        gather(
            waiting,
            pump,
            self.config.batch_size,
            deadline,
            client.ctx.stop_event,
            lambda: 0.005 if self._ledger.waiting() else 0.05,
        )
        with self._lock:
            taken = self._inbox[: self.config.batch_size]
            self._inbox = self._inbox[self.config.batch_size :]
        if not taken:
            return self._idle.empty(self._ledger.sequence)
        self._idle.restart()
        current = self._generation()
        for _, _, mid, qos, generation in taken:
            # A packet id from an earlier connection must not be acked on this one (it may
            # name another message); the broker redelivers that message instead.
            self._ledger.delivered((mid, qos) if generation == current else (0, 0))
        extra: dict[str, Sequence[Any]] | None = None
        if self.config.topic_column:
            extra = {self.config.topic_column: [t for t, *_ in taken]}
        first = self._ledger.sequence - len(taken) + 1
        frame, dead = decode_payloads(
            [p for _, p, *_ in taken],
            self.config.format,
            self.config.payload_column,
            extra,
            self.config.max_record_bytes,
            [f"mqtt topic {t} message {first + i}" for i, (t, *_) in enumerate(taken)],
        )
        return SourceBatch(frame, self._ledger.sequence, dead)

    def awaiting_ack(self) -> bool:
        """QoS 1/2 messages handed on wait for their PUBACK/PUBCOMP."""
        return self.config.qos > 0 and self._ledger.waiting()

    def checkpointed(self, position: Any) -> None:
        """Queue the PUBACK/PUBCOMP of every message up to ``position``; the source thread
        sends them on its next loop (or :meth:`close` does)."""
        handles = [h for h in self._ledger.release(position) if h[1] > 0]
        if handles:
            self._acks.append(handles)

    def _send_acks(self) -> None:
        assert self._client is not None
        while self._acks:
            for mid, qos in self._acks.popleft():
                self._client.client.ack(mid, qos)

    def close(self) -> None:
        """Send the acknowledgements of the last checkpoint, then disconnect."""
        if self._client is None:
            return
        try:
            if self._client.connected:
                self._send_acks()
                self._client.client.loop(timeout=0.05)
        finally:
            self._client.close()
            self._client = None


@component("sink", "mqtt")
class MqttSink(Sink[MqttSinkConfig]):
    """Publish records to MQTT; at the checkpoint every QoS 1/2 publish is acknowledged."""

    config_model = MqttSinkConfig

    def __init__(self, config: MqttSinkConfig) -> None:
        super().__init__(config)
        self._client: _Client | None = None
        # paho's MQTTMessageInfo of each QoS 1/2 message the broker has not acknowledged.
        self._unacked: list[Any] = []

    def open(self, ctx: Context, pending: Any) -> None:
        """Connect; published messages cannot be withdrawn, so there is nothing to recover."""
        self._client = _Client(self.config, ctx, clean=True)
        # paho holds back QoS 1/2 messages beyond its in-flight limit (20 by default).
        self._client.client.max_inflight_messages_set(self.config.max_in_flight)
        self._client.connect()

    def write_batch(self, batch: pl.DataFrame) -> None:
        """Publish every record of the batch."""
        assert self._client is not None
        if batch.height == 0:
            return
        if self.config.topic_column is not None:
            if self.config.topic_column not in batch.columns:
                raise ConfigError(
                    f"mqtt sink: `topic_column` {self.config.topic_column!r} is not a column "
                    f"(columns: {', '.join(batch.columns)})"
                )
            topics = batch[self.config.topic_column].cast(pl.String).to_list()
            exclude: tuple[str, ...] = (self.config.topic_column,)
        else:
            topics = [self.config.topic] * batch.height
            exclude = ()
        payloads = encode_payloads(batch, self.config.format, self.config.payload_column, exclude)
        for topic, payload in zip(topics, payloads, strict=True):
            self._publish(topic, payload)

    def _publish(self, topic: str, payload: bytes) -> None:
        assert self._client is not None
        mqtt = self._client.mqtt
        while len(self._unacked) >= self.config.max_in_flight:
            self._settle(0.05)
        info = self._client.client.publish(topic, payload, self.config.qos, self.config.retain)
        disconnected = (mqtt.MQTT_ERR_NO_CONN, mqtt.MQTT_ERR_CONN_LOST)
        if info.rc in disconnected and self.config.qos == 0:
            # paho queues QoS 1/2 messages while disconnected and sends them after the
            # reconnect, but drops QoS 0 ones: reconnect now and publish again.
            self._client.connect()
            info = self._client.client.publish(topic, payload, 0, self.config.retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS and info.rc not in disconnected:
            raise PipelineError(
                f"mqtt sink: cannot publish to {topic!r}: {mqtt.error_string(info.rc)}"
            )
        if self.config.qos > 0:
            if info.rc in disconnected:
                # The message is queued and goes out after the reconnect; `rc` only tells
                # how the first attempt went, and would make `is_published` raise.
                info.rc = mqtt.MQTT_ERR_SUCCESS
            self._unacked.append(info)

    def _settle(self, timeout: float) -> None:
        """Pump the network once (reconnecting if needed: paho then sends every unacknowledged
        message again itself) and forget the messages the broker has acknowledged."""
        assert self._client is not None
        self._client.pump(timeout)
        self._unacked = [info for info in self._unacked if not info.is_published()]

    def flush(self) -> None:
        """Wait until the broker has acknowledged every message published so far."""
        assert self._client is not None
        while self._unacked:
            self._settle(0.05)
        self._client.client.loop(timeout=0)

    def close(self) -> None:
        """Disconnect."""
        if self._client is not None:
            self._client.close()
            self._client = None

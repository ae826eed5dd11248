"""Connection settings of a Kafka client: the bootstrap servers, the librdkafka options passed
through (TLS, SASL, timeouts), the configuration built from them, and the lazy import of
confluent-kafka (an optional dependency: the ``kafka`` extra)."""

from __future__ import annotations

import logging
import os
from typing import Any

from tideflow.errors import ConfigError, require
from tideflow.secrets import register_secret
from tideflow.spec.models import FieldIssue


def confluent() -> Any:
    """The ``confluent_kafka`` module (with its ``admin`` submodule), imported on first use;
    a missing package is a :class:`~tideflow.errors.MissingDependencyError` naming the
    extra to install."""
    require("confluent_kafka.admin", "kafka", "confluent-kafka")  # the admin API too
    return require("confluent_kafka", "kafka", "confluent-kafka")


def kafka_config(bootstrap: str, options: dict[str, Any]) -> dict[str, Any]:
    """librdkafka settings: the bootstrap address and options passed through (TLS, SASL);
    secret-looking values are registered so they are never printed."""
    for name, value in options.items():
        if any(s in name for s in ("password", "secret", "key", "token")) and isinstance(
            value, str
        ):
            register_secret(value)
    # librdkafka's own log lines go through Python logging (redacted, and one JSON object
    # per line with --log-format json) instead of straight to stderr.
    return {
        "bootstrap.servers": bootstrap,
        "logger": logging.getLogger("tideflow.kafka.librdkafka"),
        **options,
    }


SESSION_TIMEOUT_MS = 10_000
"""How long a member that stopped heartbeating (killed) keeps its partitions; librdkafka's
default is 45 s. Not lower yet: with 6 s (Kafka's smallest) a dead member expiring in the
middle of a bounded run's idle wait made that run end early in one of two trials of
``test_kill_9_mid_consumption_keeps_exactly_every_record[kafka]`` (issue 15 item 3 makes
bounded runs wait for every partition; then this can come down)."""
HEARTBEAT_INTERVAL_MS = 2_000
"""At most a third of the session timeout, as Kafka advises."""
MAX_POLL_INTERVAL_MS = 15_000
"""The longest a member may go without polling (a batch in the steps and sinks) before it
leaves the group; also its rebalance timeout, which a rebalance waits for a member that does
not rejoin (tansu waits this long for a dead member). librdkafka's default is 5 minutes."""


def group_timeouts(options: dict[str, Any]) -> dict[str, Any]:
    """A group member's timeouts: the defaults above, each overridable in ``options``, so
    that a killed worker's partitions reach a live one within about 20 s on Kafka and
    tansu. A batch that takes longer than ``max.poll.interval.ms`` makes the member leave
    and rejoin (:func:`kafka_messages`): raise it for pipelines with slower batches."""
    session = int(options.get("session.timeout.ms", SESSION_TIMEOUT_MS))
    return {
        "session.timeout.ms": session,
        "heartbeat.interval.ms": options.get(
            "heartbeat.interval.ms", min(HEARTBEAT_INTERVAL_MS, max(1, session // 3))
        ),
        # librdkafka refuses a poll interval below the session timeout.
        "max.poll.interval.ms": options.get(
            "max.poll.interval.ms", max(MAX_POLL_INTERVAL_MS, session)
        ),
    }


def default_bootstrap() -> str | None:
    """``KAFKA_BROKER`` from the environment, without a ``kafka://`` prefix."""
    value = os.environ.get("KAFKA_BROKER")
    return value.removeprefix("kafka://") if value else None


def kafka_bootstrap(broker: str | None, deprecated: str | None, kind: str) -> str:
    """The bootstrap servers of a ``kafka`` source or sink: its ``broker`` (or the deprecated
    ``bootstrap``, with a warning), else ``KAFKA_BROKER``."""
    if deprecated is not None:
        logging.getLogger("tideflow.topics").warning(
            "kafka %s: `bootstrap` is deprecated; use `broker`", kind
        )
    bootstrap = broker or deprecated or default_bootstrap()
    if not bootstrap:
        raise ConfigError(f"kafka {kind}: set `broker` or the KAFKA_BROKER variable")
    return bootstrap.removeprefix("kafka://")


def check_kafka_address(broker: str | None, bootstrap: str | None) -> str | None:
    """Check a ``kafka`` connector's address settings: ``broker`` (``kafka://host:port`` or
    ``host:port``, several comma-separated), the deprecated ``bootstrap`` alias, else
    ``KAFKA_BROKER``; a connector with none of them cannot run."""
    if (
        broker is not None
        and bootstrap is not None
        and broker.removeprefix("kafka://") != bootstrap.removeprefix("kafka://")
    ):
        raise FieldIssue(
            ("bootstrap",), "`bootstrap` is a deprecated name of `broker`: give only `broker`"
        )
    address = broker if broker is not None else bootstrap
    if address == "embedded":
        raise FieldIssue(
            ("broker",),
            "a `kafka` connector needs a Kafka broker; use type `topic` for the embedded log",
        )
    if not address and not default_bootstrap():
        raise FieldIssue(
            ("broker",),
            "no Kafka broker: set `broker: kafka://host:port` or the KAFKA_BROKER variable",
        )
    return address

"""Kafka connector settings: one name for the broker address (`broker`) on `topic` and `kafka`,
`bootstrap` kept as a deprecated alias, and a `kafka` connector with no broker at all (and no
KAFKA_BROKER) refused by `tideflow validate` with its file and line."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.system.helpers import cli

from tideflow.connectors.kafka.sink import KafkaSink
from tideflow.connectors.kafka.source import KafkaSource
from tideflow.errors import ConfigError
from tideflow.spec.loader import load_pipeline_text

NO_BROKER = """name: nowhere
source: {type: generate, shape: sequence, count: 10}
sink:
  type: kafka
  topic: out
"""


def test_validate_reports_a_kafka_connector_without_a_broker(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(NO_BROKER, encoding="utf-8")
    checked = cli("validate", "p.yaml", cwd=tmp_path, env={"KAFKA_BROKER": ""})
    assert checked.returncode == 2, checked.stdout
    expected = (
        "p.yaml:3: sink.broker: no Kafka broker: set `broker: kafka://host:port` or the "
        "KAFKA_BROKER variable"
    )
    assert expected in checked.stderr, checked.stderr
    # With KAFKA_BROKER the same file is valid: the variable names the broker.
    checked = cli("validate", "p.yaml", cwd=tmp_path, env={"KAFKA_BROKER": "kafka://k:9092"})
    assert checked.returncode == 0, checked.stderr


def test_a_kafka_source_without_a_broker_is_refused_too() -> None:
    text = "name: n\nsource: {type: kafka, topic: t, group: g}\nsink: {type: stdout}\n"
    with pytest.raises(ConfigError, match=r"p.yaml:2: source.broker: no Kafka broker"):
        load_pipeline_text(text, "p.yaml", environ={})


@pytest.mark.parametrize("address", ["kafka://k1:9092,k2:9092", "k1:9092,k2:9092"])
def test_broker_is_the_one_name_of_the_address(address: str) -> None:
    text = (
        f'name: n\nsource: {{type: kafka, topic: t, group: g, broker: "{address}"}}\n'
        f'sink: {{type: kafka, topic: o, broker: "{address}"}}\n'
    )
    spec = load_pipeline_text(text, "p.yaml", environ={})
    source = KafkaSource(spec.all_sources[0])
    sink = KafkaSink(spec.all_sinks[0])
    assert source._bootstrap() == sink._bootstrap() == "k1:9092,k2:9092"


def test_bootstrap_is_a_deprecated_alias(caplog: pytest.LogCaptureFixture) -> None:
    text = (
        "name: n\nsource: {type: generate, shape: sequence}\n"
        'sink: {type: kafka, topic: o, bootstrap: "k:1"}\n'
    )
    spec = load_pipeline_text(text, "p.yaml", environ={})
    assert KafkaSink(spec.all_sinks[0])._bootstrap() == "k:1"
    assert "`bootstrap` is deprecated; use `broker`" in caplog.text
    both = text.replace('bootstrap: "k:1"', 'bootstrap: "k:1", broker: "k:2"')
    with pytest.raises(ConfigError, match=r"sink.bootstrap: `bootstrap` is a deprecated name"):
        load_pipeline_text(both, "p.yaml", environ={})
    embedded = text.replace('bootstrap: "k:1"', "broker: embedded")
    with pytest.raises(ConfigError, match=r"use type `topic` for the embedded log"):
        load_pipeline_text(embedded, "p.yaml", environ={})


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"session.timeout.ms": 30_000},
        {"max.poll.interval.ms": 600_000},
        {"session.timeout.ms": 45_000, "heartbeat.interval.ms": 3_000},
    ],
)
def test_group_timeouts_default_short_and_yield_to_the_users(options: dict[str, int]) -> None:
    import confluent_kafka

    from tideflow.connectors.kafka.client import group_timeouts

    timeouts = group_timeouts(options)
    assert {k: timeouts[k] for k in options} == options  # the user's values win
    if not options:  # the documented defaults (docs/guarantees.md, group workers)
        assert timeouts == {
            "session.timeout.ms": 10_000,
            "heartbeat.interval.ms": 2_000,
            "max.poll.interval.ms": 15_000,
        }
    assert timeouts["heartbeat.interval.ms"] * 3 <= timeouts["session.timeout.ms"]
    # librdkafka itself accepts the combination (it refuses a poll interval below the
    # session timeout when the consumer is created).
    confluent_kafka.Consumer(
        {"bootstrap.servers": "127.0.0.1:9", "group.id": "g", **timeouts}
    ).close()

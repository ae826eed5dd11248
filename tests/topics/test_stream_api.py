"""The Stream/Processor API on the embedded log and on Kafka (tansu)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tideflow.state.store import StateStore
from tideflow.stream import Processor, Stream
from tideflow.topics.admin import Admin


class Doubler(Processor):
    """Doubles ``value``; refuses negative values (they must reach the dead-letter ledger)."""

    def process(self, data: dict[str, Any]) -> dict[str, Any] | None:
        if data["value"] < 0:
            raise ValueError(f"negative value {data['value']}")
        if data["value"] == 0:
            return None
        return {**data, "value": data["value"] * 2}


@pytest.fixture(params=["embedded", "kafka"])
def broker(request: pytest.FixtureRequest) -> str | None:
    return None if request.param == "embedded" else request.getfixturevalue("kafka_broker")


def test_processors_transform_every_record_and_dead_letter_failures(
    tmp_path: Path, broker: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAFKA_BROKER", "")
    topic = f"readings-{time.time_ns()}"
    stream = Stream("sensors", broker=broker, state_dir=tmp_path)
    stream.register_processor("double", Doubler(), input_topic=topic, output_topic=f"{topic}-x2")
    values = [*range(-3, 0), 0, *range(1, 50)]
    assert stream.stream_data([{"id": i, "value": v} for i, v in enumerate(values)], topic) == 53
    stream.start(stop_at_end=True)

    admin = Admin(broker, tmp_path / ".tideflow")
    got = [m for batch in admin.tail(f"{topic}-x2", 1000, follow=False) for m in batch.values]
    import orjson

    doubled = sorted(orjson.loads(v)["value"] for v in got)
    assert doubled == sorted(v * 2 for v in values if v > 0)
    store = StateStore(tmp_path / ".tideflow" / "state.db")
    letters = store.dead_letters("sensors-double")
    store.close()
    assert sorted(orjson.loads(d.record)["value"] for d in letters) == [-3, -2, -1]
    assert all("negative value" in d.reason for d in letters)


def test_settings_come_from_a_config_file_then_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAM_NAME", "from-env")
    monkeypatch.setenv("TOPIC", "env-topic")
    monkeypatch.delenv("KAFKA_BROKER", raising=False)
    assert (Stream().name, Stream().topic) == ("from-env", "env-topic")
    config = tmp_path / "stream.yaml"
    config.write_text("name: from-file\ntopic: file-topic\n", encoding="utf-8")
    stream = Stream(config=config)
    assert (stream.name, stream.topic, stream.broker) == ("from-file", "file-topic", None)

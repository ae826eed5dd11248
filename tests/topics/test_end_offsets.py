"""The `topic` source's `end_offsets`: a bounded read whose end is decided by the data."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import orjson
import pytest

from tideflow import Pipeline, collect
from tideflow.connectors.topic.admin import Admin
from tideflow.testing import collected


def test_a_read_ends_exactly_at_the_given_offsets_and_the_rest_waits_for_the_next_run(
    tmp_path: Path, broker: str
) -> None:
    topic = f"ends-{time.time_ns()}-{uuid.uuid4().hex[:6]}"
    bootstrap = None if broker == "embedded" else broker.removeprefix("kafka://")
    admin = Admin(bootstrap, tmp_path / ".tideflow")
    try:
        # One message per call: tansu stores each as its own record batch.
        for i in range(10):
            admin.produce(topic, [orjson.dumps({"i": i})])
        assert admin.end_offsets(topic) == {0: 10}
    finally:
        admin.close()

    def run(end: int, collector: str) -> list[int]:
        (
            Pipeline("bounded-read")
            .source(
                {
                    "type": "topic",
                    "topic": topic,
                    "group": "g",
                    "broker": broker,
                    "end_offsets": {f"{topic}:0": end},
                    # Far longer than the test may take: only the offsets can end the read.
                    "idle_seconds": 3600,
                }
            )
            .sink(collect(collector))
            .run(tmp_path)
        )
        got = collected(collector)
        return sorted(got.get_column("i").to_list()) if got.height else []

    assert run(6, f"first-{topic}") == list(range(6))
    assert run(10, f"second-{topic}") == list(range(6, 10))
    assert run(10, f"third-{topic}") == []  # nothing left: ends at once, reads nothing twice


@pytest.mark.parametrize("end", [0, 3])
def test_an_end_at_or_before_the_group_position_ends_at_once(tmp_path: Path, end: int) -> None:
    topic = f"ends-{time.time_ns()}-{uuid.uuid4().hex[:6]}"
    admin = Admin(None, tmp_path / ".tideflow")
    admin.produce(topic, [orjson.dumps({"i": i}) for i in range(3)])
    collector = f"c-{topic}"
    Pipeline("bounded-read").source(
        {"type": "topic", "topic": topic, "group": "g", "end_offsets": {f"{topic}:0": end}}
    ).sink(collect(collector)).run(tmp_path)
    assert collected(collector).height == end


def test_end_offsets_count_every_message_of_a_batch(tmp_path: Path, broker: str) -> None:
    """tansu 0.6.0 answers ListOffsets "latest" with the last record batch's base offset + 1
    (here 1 after 3 messages in one batch, 4 after 3 more); ends come from a fetch response."""
    topic = f"batch-{time.time_ns()}-{uuid.uuid4().hex[:6]}"
    admin = Admin(
        None if broker == "embedded" else broker.removeprefix("kafka://"), tmp_path / ".tideflow"
    )
    try:
        admin.produce(topic, [b"1", b"2", b"3"])
        assert admin.end_offsets(topic) == {0: 3}
        admin.produce(topic, [b"4", b"5", b"6"])
        assert admin.end_offsets(topic) == {0: 6}
        assert admin.read_all(topic) == [b"1", b"2", b"3", b"4", b"5", b"6"]
    finally:
        admin.close()


def test_a_bounded_stream_ends_over_a_transactional_writers_topic(
    tmp_path: Path, kafka_broker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transactional producer's commit marker takes the last offset of its partition and is
    never delivered: a bounded read must end on it instead of waiting for ever (as it will
    behind a transactional topic sink)."""
    import confluent_kafka

    from tideflow import Stream

    monkeypatch.delenv("KAFKA_BROKER", raising=False)
    topic, out = f"txn-{uuid.uuid4().hex[:8]}", f"txn-out-{uuid.uuid4().hex[:8]}"
    producer = confluent_kafka.Producer(
        {"bootstrap.servers": kafka_broker, "transactional.id": f"test-{topic}"}
    )
    admin = Admin(kafka_broker, tmp_path / ".tideflow")
    admin.ensure(topic)
    admin.close()
    producer.init_transactions(30)
    producer.begin_transaction()
    for i in range(5):
        producer.produce(topic, value=orjson.dumps(i), partition=0)
    producer.commit_transaction(30)
    admin = Admin(kafka_broker, tmp_path / ".tideflow")
    assert admin.end_offsets(topic) == {0: 6}  # 5 messages and the commit marker
    assert admin.read_all(topic) == [orjson.dumps(i) for i in range(5)]

    s = Stream("txn", broker=kafka_broker, state_dir=tmp_path)
    s.register_processor("p", lambda x: x + 1, input_topic=topic, output_topic=out)
    s.start(stop_at_end=True)
    assert s.read_data(out) == [1, 2, 3, 4, 5]
    s.close()

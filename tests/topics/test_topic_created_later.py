"""A Kafka consumer started before its topic exists: an unbounded one waits for the topic
and reads all of it once a producer creates it (in a deployment the consumers often start
first); a bounded one refuses, loudly, instead of ending with nothing read.

Before, both failed the run with UNKNOWN_TOPIC_OR_PART, and a container restarted on failure
could keep a consumer that never saw the topic created later (the rooms compose stack lost
its whole archive that way when the archiving worker won the race against the producer).
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
from tests.system.helpers import cli

READ = """
name: late
source: {{type: topic, topic: {topic}, group: g, broker: "kafka://{broker}"{bounded}}}
sink: {{type: file, path: out, format: ndjson}}
checkpoint: {{every_seconds: 1}}
"""

PUBLISH = """
name: publish
source: {{type: generate, shape: sequence, count: 500}}
sink: {{type: topic, topic: {topic}, broker: "kafka://{broker}", partitions: 3, key: id}}
"""


def written(folder: Path) -> list[int]:
    return sorted(
        orjson.loads(line)["id"]
        for path in (folder / "out").glob("*.ndjson")
        for line in path.read_bytes().splitlines()
    )


def test_an_unbounded_consumer_waits_for_its_topic(tmp_path: Path, kafka_broker: str) -> None:
    topic = f"late-{uuid.uuid4().hex[:8]}"
    (tmp_path / "read.yaml").write_text(READ.format(topic=topic, broker=kafka_broker, bounded=""))
    (tmp_path / "publish.yaml").write_text(PUBLISH.format(topic=topic, broker=kafka_broker))
    reader = subprocess.Popen(
        [sys.executable, "-m", "tideflow.cli.main", "run", "read.yaml", "-q"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        time.sleep(3)  # subscribed to a topic nobody has created
        assert reader.poll() is None, reader.communicate()[0]
        published = cli("run", "publish.yaml", "-q", cwd=tmp_path)
        assert published.returncode == 0, published.stderr
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and len(written(tmp_path)) < 500:
            assert reader.poll() is None, reader.communicate()[0]
            time.sleep(0.5)
    finally:
        reader.terminate()
        output = reader.communicate(timeout=60)[0]
    assert written(tmp_path) == list(range(500)), output
    assert f"topic {topic!r} does not exist (yet): waiting for it" in output


def test_a_bounded_run_of_a_missing_topic_fails(tmp_path: Path, kafka_broker: str) -> None:
    topic = f"missing-{uuid.uuid4().hex[:8]}"
    (tmp_path / "read.yaml").write_text(
        READ.format(topic=topic, broker=kafka_broker, bounded=", stop_at_end: true")
    )
    run = cli("run", "read.yaml", "-q", cwd=tmp_path, timeout=120)
    assert run.returncode != 0, run.stdout
    assert "UNKNOWN_TOPIC_OR_PART" in run.stdout + run.stderr

"""A topic source never resumes positions taken in another log or cluster.

Offsets are positions in one particular log: after the embedded log file is deleted and
created anew, or the source's broker setting is pointed at another Kafka cluster, the stored
offsets mean nothing there. Resuming from them skipped every record below the old offsets,
with exit code 0 and "lag 0". Now the run is refused (exit code 2) before anything is read,
and `tideflow state reset` is the way on; the records read after it are compared with what
was published, read back independently.
"""

from __future__ import annotations

from pathlib import Path

import orjson
from tests.system.helpers import cli

PUBLISH = """
name: pub-{start}
source: {{type: generate, shape: sequence, count: {count}}}
steps: [{{type: with_columns, columns: {{n: "id + {start}"}}}}]
sink: {{type: topic, topic: {topic}{broker}}}
"""

READ = """
name: sub
source: {{type: topic, topic: {topic}, group: g, stop_at_end: true{broker}}}
sink: {{type: file, path: out, format: ndjson}}
"""


def invoke(folder: Path, *args: str) -> tuple[int, str]:
    """`tideflow ARGS` in ``folder``, in a process of its own as a user runs it (a log
    file deleted under a live process would still be open in it)."""
    done = cli(*args, cwd=folder)
    return done.returncode, done.stdout + done.stderr


def write(folder: Path, name: str, text: str, broker: str | None, **values: object) -> None:
    suffix = f", broker: kafka://{broker}" if broker else ""
    (folder / name).write_text(text.format(broker=suffix, **values), encoding="utf-8")


def publish(folder: Path, topic: str, start: int, count: int, broker: str | None) -> None:
    write(folder, "pub.yaml", PUBLISH, broker, topic=topic, start=start, count=count)
    code, output = invoke(folder, "run", "pub.yaml", "-q")
    assert code == 0, output


def read_ids(folder: Path) -> list[int]:
    """Every number the reader has written, from its output files."""
    lines = [
        line
        for path in (folder / "out").glob("*.ndjson")
        for line in path.read_bytes().splitlines()
    ]
    return sorted(orjson.loads(line)["n"] for line in lines)


def test_a_log_created_anew_is_refused_and_reset_reads_it(tmp_path: Path) -> None:
    publish(tmp_path, "rooms", 0, 100, None)
    write(tmp_path, "sub.yaml", READ, None, topic="rooms")
    assert invoke(tmp_path, "run", "sub.yaml", "-q")[0] == 0
    assert read_ids(tmp_path) == list(range(100))

    for path in (tmp_path / ".tideflow").glob("topics.db*"):
        path.unlink()
    publish(tmp_path, "rooms", 1000, 150, None)  # more records than the stored offsets
    code, output = invoke(tmp_path, "run", "sub.yaml", "-q")
    assert code == 2, output
    assert "stored positions are offsets in the embedded log" in " ".join(output.split())
    assert read_ids(tmp_path) == list(range(100)), "nothing may be read before the refusal"

    assert invoke(tmp_path, "state", "reset", "--yes", "sub.yaml")[0] == 0
    assert invoke(tmp_path, "run", "sub.yaml", "-q")[0] == 0
    assert read_ids(tmp_path) == list(range(100)) + list(range(1000, 1150))


def test_another_broker_is_refused(
    tmp_path: Path, kafka_broker: str, second_kafka_broker: str
) -> None:
    """Embedded log -> a Kafka cluster -> another Kafka cluster, one state store."""
    publish(tmp_path, "moved", 0, 60, None)
    write(tmp_path, "sub.yaml", READ, None, topic="moved")
    assert invoke(tmp_path, "run", "sub.yaml", "-q")[0] == 0

    publish(tmp_path, "moved", 100, 90, kafka_broker)  # offsets 0..89 (+ a commit marker)
    write(tmp_path, "sub.yaml", READ, kafka_broker, topic="moved")
    code, output = invoke(tmp_path, "run", "sub.yaml", "-q")
    assert code == 2, output
    assert "the source now reads the Kafka cluster" in " ".join(output.split())
    assert invoke(tmp_path, "state", "reset", "--yes", "sub.yaml")[0] == 0
    assert invoke(tmp_path, "run", "sub.yaml", "-q")[0] == 0
    assert read_ids(tmp_path) == list(range(60)) + list(range(100, 190))

    publish(tmp_path, "moved", 500, 10, second_kafka_broker)
    write(tmp_path, "sub.yaml", READ, second_kafka_broker, topic="moved")
    code, output = invoke(tmp_path, "run", "sub.yaml", "-q")
    assert code == 2, output
    assert read_ids(tmp_path) == list(range(60)) + list(range(100, 190))

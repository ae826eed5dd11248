"""F10: exactly-once into Kafka (tansu), checked with exact sets by a plain confluent-kafka
``read_committed`` reader.

- file -> Kafka, killed with ``kill -9`` at seeded moments (paced so every kill lands mid-run),
  alone and with two producer pipelines writing the same topic;
- topic -> topic and topic -> aggregate -> topic, crashed at every step of a checkpoint's
  commit (before producing, after producing before the Kafka commit, after the Kafka commit
  before the outbox is marked delivered, and the state-transaction points), and during the
  recovery of such a crash;
- a zombie: a run paused with SIGSTOP, replaced, resumed: its state commit is refused and
  nothing it could still write becomes visible.

tansu 0.6.0 shows the messages of aborted transactions to ``read_committed`` readers (real
Kafka hides them); the sink's read-back recovery must be exact either way.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import polars as pl
import psutil
import pytest
from tests.faults.oracle import compare, records, seeds, trials
from tests.system.helpers import cli
from tests.topics.kafka_reader import (
    committed_offsets,
    end_offsets,
    produce_plain,
    read_committed,
)

from tideflow.core.faults import CRASH_EXIT_CODE

PACE = """
import os, signal, time

_batches = [0]

def pace(batch):
    _batches[0] += 1
    if _batches[0] == int(os.environ.get("STOP_AT_BATCH", "0")):
        os.kill(os.getpid(), signal.SIGSTOP)  # a zombie-to-be pauses itself mid-interval
    time.sleep(float(os.environ.get("PACE", "0")))
    return batch
"""

PRODUCE = """
name: NAME
source: {type: file, path: "in/*.csv", batch_size: 100}
steps:
  - {type: python, name: pace, function: "pace.py:pace", mode: batch}
sink: {type: kafka, broker: "kafka://BROKER", topic: TOPIC, key: key, partitions: 3}
checkpoint: {every_records: 300}
"""

# A dead member holds a tansu group's rebalance for its max.poll.interval.ms: keep it short.
GROUP_OPTIONS = (
    "{session.timeout.ms: 6000, heartbeat.interval.ms: 1000, max.poll.interval.ms: 6000}"
)

STAGE = """
name: stage
source: {type: topic, topic: IN, group: stage, broker: "kafka://BROKER", batch_size: 100,
         stop_at_end: true, idle_seconds: 3, options: OPTIONS}
steps:
  - {type: with_columns, name: tagged, columns: {stage: "'copied'"}}
  - {type: aggregate, name: totals, input: tagged, keys: [key],
     aggregations: {total: sum(value), readings: count()}}
sinks:
  - {type: topic, name: copy, input: tagged, topic: OUT, broker: "kafka://BROKER", key: key,
     partitions: 3}
  - {type: topic, name: sums, input: totals, topic: SUMS, broker: "kafka://BROKER", key: key,
     partitions: 3}
checkpoint: {every_records: 300}
"""


def producer_folder(tmp_path: Path, name: str, broker: str, topic: str, data: pl.DataFrame) -> Path:
    """A folder with CSV input and a paced file -> Kafka pipeline; returns the pipeline."""
    folder = tmp_path / name
    (folder / "in").mkdir(parents=True)
    for i, part in enumerate(data.iter_slices(max(1, data.height // 4))):
        part.write_csv(folder / "in" / f"part-{i}.csv")
    (folder / "pace.py").write_text(PACE, encoding="utf-8")
    pipeline = folder / "p.yaml"
    text = PRODUCE.replace("NAME", name).replace("BROKER", broker).replace("TOPIC", topic)
    pipeline.write_text(text, encoding="utf-8")
    return pipeline


def assert_exact(broker: str, topic: str, expected: pl.DataFrame, context: str) -> pl.DataFrame:
    """The topic holds exactly ``expected`` for a read_committed reader; returns what it holds."""
    got = read_committed(broker, topic)
    diff = compare(expected, got.select(expected.columns) if got.height else got)
    assert diff.exact, f"{context}: {diff}"
    return got


# -- file -> Kafka, kill -9 ------------------------------------------------------------------


def kill_after_progress(pipelines: list[Path], env: dict[str, str], rng: random.Random) -> None:
    """Start the pipelines together and kill each with SIGKILL at a seeded moment within
    1.5 s after its next checkpoint: every kill lands mid-run and past the start-up, however
    slowly a loaded machine starts a process."""
    before = {p: stored_checkpoint(p.parent, p.parent.name) for p in pipelines}
    procs = [start(p, env) for p in pipelines]
    try:
        for proc, pipeline in zip(procs, pipelines, strict=True):

            def moved(proc: subprocess.Popen[bytes] = proc, pipeline: Path = pipeline) -> bool:
                folder = pipeline.parent
                return stored_checkpoint(folder, folder.name) > before[pipeline] or (
                    proc.poll() is not None
                )

            wait_until(moved, 300, f"a checkpoint of {pipeline.parent.name}")
            time.sleep(rng.uniform(0.0, 1.5))
            assert proc.poll() is None, f"{pipeline.parent.name} ended before its kill"
            proc.kill()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


@pytest.mark.slow
@pytest.mark.parametrize("seed", seeds(1, 3, base=8100))
def test_f10_kill_9_ten_times_during_a_file_to_kafka_load(
    tmp_path: Path, kafka_broker: str, seed: int
) -> None:
    topic = f"f10-load-{seed}-{uuid.uuid4().hex[:6]}"
    data = records(seed, 10_000)
    pipeline = producer_folder(tmp_path, "load", kafka_broker, topic, data)
    # 0.5 s a batch of 100, a checkpoint every 300 records: a run killed within 1.5 s of a
    # checkpoint has read at most 600 records since it started, so ten cannot finish the
    # 10,000 and every kill lands mid-run.
    rng = random.Random(seed)
    for _ in range(10):
        kill_after_progress([pipeline], {"PACE": "0.5"}, rng)
    partial = read_committed(kafka_broker, topic)
    assert 0 < partial.height < data.height, "the kills proved nothing"
    final = cli("run", str(pipeline), cwd=pipeline.parent, env={"PACE": "0"})
    assert final.returncode == 0, final.stderr
    got = assert_exact(kafka_broker, topic, data, f"seed {seed}")
    assert got["id_header"].n_unique() == data.height


@pytest.mark.slow
@pytest.mark.parametrize("seed", seeds(1, 3, base=8200))
def test_f10_two_producer_pipelines_killed_while_writing_one_topic(
    tmp_path: Path, kafka_broker: str, seed: int
) -> None:
    topic = f"f10-two-{seed}-{uuid.uuid4().hex[:6]}"
    # 10,000 records each at 0.5 s a batch of 100: the rounds below cannot finish either.
    data = records(seed, 20_000)
    first, second = data.head(10_000), data.tail(10_000)
    pipelines = [
        producer_folder(tmp_path, "alpha", kafka_broker, topic, first),
        producer_folder(tmp_path, "beta", kafka_broker, topic, second),
    ]
    rng = random.Random(seed)
    for _ in range(trials(5, 10)):
        kill_after_progress(pipelines, {"PACE": "0.5"}, rng)
    # Both finish concurrently: one's recovery may wait for the other's open transaction.
    procs = [start(p, {"PACE": "0"}) for p in pipelines]
    for proc, pipeline in zip(procs, pipelines, strict=True):
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{pipeline.parent.name}: {err.decode()[-3000:]}"
    assert_exact(kafka_broker, topic, data, f"seed {seed}")


def start(pipeline: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Run a pipeline in the background."""
    return subprocess.Popen(
        [sys.executable, "-m", "tideflow.cli.main", "run", str(pipeline)],
        cwd=pipeline.parent,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


# -- topic -> topic and topic -> aggregate -> topic, crash points --------------------------

POINTS = (
    "checkpoint.after_flush",
    "checkpoint.in_state_transaction",
    "checkpoint.after_state",
    "kafka_sink.before_produce",
    "kafka_sink.after_produce",
    "kafka_sink.after_commit",
    "checkpoint.after_first_sink_commit",
)


def stage_folder(
    tmp_path: Path, broker: str, count: int = 2000
) -> tuple[Path, dict[str, str], pl.DataFrame]:
    """An input topic written by a plain producer, and the two-sink stage pipeline."""
    run = uuid.uuid4().hex[:8]
    topics = {"IN": f"f10-in-{run}", "OUT": f"f10-out-{run}", "SUMS": f"f10-sums-{run}"}
    data = records(int(run, 16) % 10_000, count, keys=20)
    produce_plain(broker, topics["IN"], data, key="key", partitions=3)
    text = STAGE.replace("BROKER", broker).replace("OPTIONS", GROUP_OPTIONS)
    for name, topic in topics.items():
        text = text.replace(f"topic: {name},", f"topic: {topic},")
    (tmp_path / "stage.yaml").write_text(text, encoding="utf-8")
    return tmp_path / "stage.yaml", topics, data


def assert_stage_exact(
    broker: str, topics: dict[str, str], data: pl.DataFrame, context: str
) -> None:
    """``copy`` holds every input record once; ``sums`` holds, per key and in order, running
    totals whose count only grows (a replayed batch would repeat or step back) and end at
    the oracle's; the group's offsets are committed to the end of the input."""
    copied = assert_exact(broker, topics["OUT"], data, context)
    assert set(copied["stage"].to_list()) == {"copied"}
    # Each message carries its own id (what a recovery recognises it by).
    assert copied["id_header"].drop_nulls().n_unique() == data.height, context
    sums = read_committed(broker, topics["SUMS"]).sort("partition", "offset")
    assert sums["id_header"].drop_nulls().n_unique() == sums.height, context
    steps = sums.with_columns(pl.col("readings").diff().over("key").alias("step"))
    stepped_back = steps.filter(pl.col("step") <= 0)
    assert stepped_back.height == 0, f"{context}: updates repeated or stepped back:\n{stepped_back}"
    final = sums.group_by("key").agg(pl.col("total").last(), pl.col("readings").last())
    expected = data.group_by("key").agg(
        pl.col("value").sum().alias("total"), pl.len().alias("readings")
    )
    assert (
        final.sort("key")
        .select("key", "total", "readings")
        .cast({"total": pl.Int64, "readings": pl.Int64})
        .equals(expected.sort("key").cast({"total": pl.Int64, "readings": pl.Int64}))
    ), context
    assert committed_offsets(broker, topics["IN"], "stage") == end_offsets(broker, topics["IN"])


@pytest.mark.slow
@pytest.mark.parametrize("point", POINTS)
def test_f10_crash_at_each_step_of_a_kafka_commit(
    tmp_path: Path, kafka_broker: str, point: str
) -> None:
    pipeline, topics, data = stage_folder(tmp_path, kafka_broker)
    crashed = cli("run", str(pipeline), cwd=tmp_path, env={"TIDEFLOW_CRASH_AT": f"{point}:2"})
    assert crashed.returncode == CRASH_EXIT_CODE, f"{point} not reached: {crashed.stderr[-2000:]}"
    final = cli("-v", "run", str(pipeline), cwd=tmp_path)
    assert final.returncode == 0, final.stderr[-3000:]
    assert_stage_exact(kafka_broker, topics, data, f"crash at {point}")


@pytest.mark.slow
def test_f10_crash_during_the_recovery_of_a_crash(tmp_path: Path, kafka_broker: str) -> None:
    pipeline, topics, data = stage_folder(tmp_path, kafka_broker)
    first = cli(
        "run", str(pipeline), cwd=tmp_path, env={"TIDEFLOW_CRASH_AT": "kafka_sink.before_produce:2"}
    )
    assert first.returncode == CRASH_EXIT_CODE, first.stderr[-2000:]
    # The next run recovers the stored outbox first, and dies once it has produced it.
    second = cli(
        "run",
        str(pipeline),
        cwd=tmp_path,
        env={"TIDEFLOW_CRASH_AT": "kafka_sink.recovery_after_produce:1"},
    )
    assert second.returncode == CRASH_EXIT_CODE, second.stderr[-2000:]
    final = cli("-v", "run", str(pipeline), cwd=tmp_path)
    assert final.returncode == 0, final.stderr[-3000:]
    assert "recovered" in final.stderr
    assert_stage_exact(kafka_broker, topics, data, "crash during recovery")


# -- a zombie ------------------------------------------------------------------------------


def stored_checkpoint(folder: Path, pipeline: str) -> int:
    """The checkpoint id the pipeline's state store holds (0 before the first)."""
    import sqlite3

    path = folder / ".tideflow" / "state.db"
    if not path.exists():
        return 0
    with sqlite3.connect(path, timeout=30) as conn:
        try:
            row = conn.execute(
                "SELECT id FROM checkpoints WHERE pipeline=?", (pipeline,)
            ).fetchone()
        except sqlite3.OperationalError:
            return 0
    return int(row[0]) if row else 0


def wait_until(check: object, timeout: float, what: str) -> None:
    """Poll ``check()`` until it is true."""
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.slow
def test_f10_a_paused_run_is_fenced_when_it_resumes(tmp_path: Path, kafka_broker: str) -> None:
    topic = f"f10-zombie-{uuid.uuid4().hex[:6]}"
    data = records(77, 6000)
    pipeline = producer_folder(tmp_path, "zombie", kafka_broker, topic, data)
    folder = pipeline.parent
    # Batches of 100 and a checkpoint every 300 records: the 8th batch is in the middle of
    # the third checkpoint interval, where the run stops itself (SIGSTOP), holding records
    # it has not checkpointed.
    zombie = start(pipeline, {"PACE": "0.05", "STOP_AT_BATCH": "8"})
    try:
        wait_until(
            lambda: psutil.Process(zombie.pid).status() == psutil.STATUS_STOPPED,
            120,
            "the run to pause itself",
        )
        paused_at = stored_checkpoint(folder, "zombie")
        assert paused_at == 2
        replacement = cli("run", str(pipeline), cwd=folder, env={"PACE": "0"})
        assert replacement.returncode == 0, replacement.stderr[-3000:]
        zombie.send_signal(signal.SIGCONT)
        _, err = zombie.communicate(timeout=120)
    finally:
        if zombie.poll() is None:
            zombie.send_signal(signal.SIGCONT)
            zombie.kill()
    stderr = err.decode()
    assert zombie.returncode != 0, "the zombie finished as if nothing happened"
    assert "took the checkpoints of 'zombie' over" in stderr, stderr[-3000:]
    assert paused_at < stored_checkpoint(folder, "zombie"), "the replacement stored nothing"
    assert_exact(kafka_broker, topic, data, "zombie")


@pytest.mark.slow
def test_f10_a_producer_paused_inside_its_transaction_is_fenced(
    tmp_path: Path, kafka_broker: str
) -> None:
    """The run pauses after producing its second checkpoint's messages, before committing
    the Kafka transaction. Its replacement's producer fences it (and ends the open
    transaction: tansu then shows its messages, real Kafka hides them; the read-back takes
    either into account). Resumed, the zombie's commit is refused; the topic holds every
    record once."""
    topic = f"f10-zombie-txn-{uuid.uuid4().hex[:6]}"
    data = records(78, 3000)
    pipeline = producer_folder(tmp_path, "zombie-txn", kafka_broker, topic, data)
    folder = pipeline.parent
    # tansu answers the zombie's commit by dropping the connection until it times out: make
    # that 10 s rather than the default 60.
    text = pipeline.read_text().replace(
        "partitions: 3}", "partitions: 3, options: {transaction.timeout.ms: 10000}}"
    )
    pipeline.write_text(text, encoding="utf-8")
    zombie = start(pipeline, {"TIDEFLOW_STOP_AT": "kafka_sink.after_produce:2"})
    try:
        wait_until(
            lambda: psutil.Process(zombie.pid).status() == psutil.STATUS_STOPPED,
            120,
            "the run to pause inside its transaction",
        )
        replacement = cli("-v", "run", str(pipeline), cwd=folder)
        assert replacement.returncode == 0, replacement.stderr[-3000:]
        assert "recovered" in replacement.stderr
        zombie.send_signal(signal.SIGCONT)
        _, err = zombie.communicate(timeout=120)
    finally:
        if zombie.poll() is None:
            zombie.send_signal(signal.SIGCONT)
            zombie.kill()
    stderr = err.decode()
    assert zombie.returncode != 0, "the zombie finished as if nothing happened"
    # Real Kafka answers the fenced commit with PRODUCER_FENCED ("was fenced"); tansu 0.6.0
    # drops the connection at each try until the commit times out.
    assert "was fenced" in stderr or "kafka transaction (commit)" in stderr, stderr[-3000:]
    assert_exact(kafka_broker, topic, data, "zombie inside a transaction")


# -- group workers -------------------------------------------------------------------------

WORKERS = """
name: relay
source: {type: topic, topic: IN, group: relay, broker: "kafka://BROKER", batch_size: 100,
         stop_at_end: true, idle_seconds: 12, options: OPTIONS}
steps:
  - {type: python, name: pace, function: "pace.py:pace", mode: batch}
  - {type: with_columns, name: tagged, columns: {stage: "'relayed'"}}
sink: {type: topic, topic: OUT, broker: "kafka://BROKER", key: key, partitions: 3}
checkpoint: {every_records: 300}
"""


@pytest.mark.slow
def test_f10_a_group_worker_killed_inside_a_transaction(tmp_path: Path, kafka_broker: str) -> None:
    """Two workers relay a topic; the first to reach its second Kafka commit dies after
    producing and before committing (the supervisor restarts it under the same id, and it
    recovers its stored outbox). The output holds every record once; the group's offsets
    reach the end of the input."""
    run = uuid.uuid4().hex[:8]
    topics = {"IN": f"f10-win-{run}", "OUT": f"f10-wout-{run}"}
    data = records(4242, 3000, keys=30)
    produce_plain(kafka_broker, topics["IN"], data, key="key", partitions=3)
    text = WORKERS.replace("BROKER", kafka_broker).replace("OPTIONS", GROUP_OPTIONS)
    for name, topic in topics.items():
        text = text.replace(f"topic: {name},", f"topic: {topic},")
    (tmp_path / "relay.yaml").write_text(text, encoding="utf-8")
    (tmp_path / "pace.py").write_text(PACE, encoding="utf-8")
    log = tmp_path / "supervisor.log"  # a file: an unread pipe would fill up and block
    env = {
        **os.environ,
        "PACE": "0.1",
        "TIDEFLOW_CRASH_AT": "kafka_sink.after_produce:2",
        "TIDEFLOW_CRASH_ONCE": str(tmp_path / "crashed"),
    }
    with log.open("w") as out:
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "tideflow", "-v", "run", "relay.yaml", "--workers", "2"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        supervisor.wait(timeout=600)
    finally:
        if supervisor.poll() is None:
            import psutil

            for worker in psutil.Process(supervisor.pid).children():
                worker.kill()
            supervisor.kill()
    output = log.read_text()
    assert supervisor.returncode == 0, output[-4000:]
    assert (tmp_path / "crashed").exists(), "no worker reached the crash point"
    assert f"exited with {CRASH_EXIT_CODE}; restarting" in output, output[-4000:]
    assert "recovered" in output, output[-4000:]
    got = assert_exact(kafka_broker, topics["OUT"], data, "group workers")
    assert set(got["stage"].to_list()) == {"relayed"}
    assert committed_offsets(kafka_broker, topics["IN"], "relay") == end_offsets(
        kafka_broker, topics["IN"]
    )


# -- with a sink that keeps the checkpoint ---------------------------------------------------

KEEPER = """
name: keeper
source: {type: file, path: "in/*.csv", batch_size: 100}
sinks:
  - {type: sql, name: table, url: "sqlite:///target.db", table: events, transactional: true}
  - {type: kafka, name: stream, broker: "kafka://BROKER", topic: TOPIC, key: key, partitions: 3}
checkpoint: {every_records: 300}
"""


@pytest.mark.slow
@pytest.mark.parametrize("point", ["sql_sink.before_commit", "checkpoint.after_keeper_commit"])
def test_f10_beside_a_sink_that_keeps_the_checkpoint(
    tmp_path: Path, kafka_broker: str, point: str
) -> None:
    """The outbox is stored before the transactional SQL sink commits the checkpoint with its
    rows: a crash before that commit leaves an outbox of a checkpoint that never happened
    (dropped at the next start), a crash after it one the state store adopts."""
    import sqlite3

    topic = f"f10-keeper-{uuid.uuid4().hex[:6]}"
    data = records(79, 2000)
    pipeline = producer_folder(tmp_path, "keeper", kafka_broker, topic, data)
    text = KEEPER.replace("BROKER", kafka_broker).replace("TOPIC", topic)
    pipeline.write_text(text, encoding="utf-8")
    crashed = cli(
        "run", str(pipeline), cwd=pipeline.parent, env={"TIDEFLOW_CRASH_AT": f"{point}:2"}
    )
    assert crashed.returncode == CRASH_EXIT_CODE, crashed.stderr[-2000:]
    final = cli("run", str(pipeline), cwd=pipeline.parent)
    assert final.returncode == 0, final.stderr[-3000:]
    assert_exact(kafka_broker, topic, data, f"kafka beside a keeper, crash at {point}")
    with sqlite3.connect(pipeline.parent / "target.db") as conn:
        rows = conn.execute("SELECT id, key, value FROM events").fetchall()
    table = pl.DataFrame(rows, schema=["id", "key", "value"], orient="row")
    diff = compare(data, table)
    assert diff.exact, f"table beside kafka, crash at {point}: {diff}"

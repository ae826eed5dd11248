"""Scale-out: `tideflow run --workers 2` splits a topic's partitions between two worker
processes whose keyed state moves with the partitions. One worker is killed with SIGKILL
mid-run and restarted by the supervisor; the totals must equal a single worker's and an
independent batch computation of the published records, on the embedded log and on Kafka."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import psutil
import pytest
from polars.testing import assert_frame_equal
from tests.system.helpers import cli, paced_rooms

from tideflow.state.locate import open_state_store

COUNT = 3000


@pytest.fixture(params=["embedded", "kafka", "postgresql-state"])
def environment(request: pytest.FixtureRequest) -> dict[str, str]:
    """Variables for the runs: the embedded log, Kafka, or the embedded log with the
    workers' shared state in PostgreSQL (how workers on several machines share it)."""
    env = {"COUNT": str(COUNT), "KAFKA_BROKER": "", "STATE": ""}
    if request.param == "kafka":
        env["KAFKA_BROKER"] = "kafka://" + request.getfixturevalue("kafka_broker")
    if request.param == "postgresql-state":
        env["STATE"] = request.getfixturevalue("postgres_database")
    return env


def prepare(folder: Path, environment: dict[str, str]) -> Path:
    """The rooms example, slowed down (small batches, a pause per batch) so a kill lands
    mid-run (with a topic name of its own on Kafka)."""
    kafka = bool(environment["KAFKA_BROKER"])
    reckoning = paced_rooms(folder, kafka, 0.2, batch_size=40, every_records=200)
    text = reckoning.read_text().replace(
        "checkpoint:", "state: ${STATE:-.tideflow/state.db}\n\ncheckpoint:"
    )
    if kafka:
        # tansu holds a rebalance for a dead member until its rebalance timeout (the
        # member's max.poll.interval.ms, 5 min by default), not its session timeout.
        options = "  options: {max.poll.interval.ms: 15000}\n"
        text = text.replace("group: reckoning\n", "group: reckoning\n" + options)
    reckoning.write_text(text, encoding="utf-8")
    run = cli("run", "publish.yaml", cwd=folder, env=environment)
    assert run.returncode == 0, run.stderr
    return reckoning


def published(folder: Path) -> pl.DataFrame:
    """The records publish.yaml wrote, generated again in one batch (once per folder: the
    generating run is checkpointed there, so a second call finds it finished)."""
    from tideflow import Pipeline, collect, generate
    from tideflow.connectors.memory import clear
    from tideflow.testing import collected

    spec = Pipeline.from_yaml(folder / "publish.yaml").build()
    settings = spec.all_sources[0].model_dump(exclude={"name", "type", "input"}, exclude_none=True)
    settings["count"] = COUNT
    clear("workers-in")
    Pipeline("workers-input").source(generate(**settings)).sink(collect("workers-in")).run(
        folder / "oracle"
    )
    return collected("workers-in")


def oracle(folder: Path) -> pl.DataFrame:
    """Totals per room computed directly from the generator's records, in one batch."""
    return (
        published(folder)
        .group_by("room")
        .agg(pl.col("count").sum().alias("people"), pl.len().alias("readings"))
        .sort("room")
    )


def totals(db: Path) -> pl.DataFrame:
    """The room_totals table the sql sink upserted."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT room, people, readings FROM room_totals").fetchall()
    return pl.DataFrame(rows, schema=["room", "people", "readings"], orient="row").sort("room")


def owners(folder: Path, state: str) -> dict[str, tuple[str, int]]:
    """Partition -> (worker, epoch) as the shared state store holds them."""
    path = folder / ".tideflow" / "state.db"
    if not state and not path.exists():
        return {}
    store = open_state_store(state or str(path), folder)
    try:
        return {
            part: (owner, epoch)
            for _, part, owner, epoch, _ in store.partition_states("rooms-reckoning")
        }
    finally:
        store.close()


def partition_deltas(folder: Path, state: str) -> int:
    """State deltas stored for partitions (incremental checkpoints) in the shared store."""
    path = folder / ".tideflow" / "state.db"
    if not state and not path.exists():
        return 0
    store = open_state_store(state or str(path), folder)
    try:
        with store.db.reading() as conn:
            row = store.db.execute(
                conn, "SELECT count(*) FROM state_deltas WHERE scope <> ''"
            ).fetchone()
        return int(row[0])
    finally:
        store.close()


def wait_for(check: object, timeout: float, what: str) -> None:
    """Poll ``check()`` until true, failing with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_two_workers_one_killed_give_the_single_worker_result(
    tmp_path: Path, environment: dict[str, str]
) -> None:
    folder = tmp_path / "rooms"
    reckoning = prepare(folder, environment)
    env = {**os.environ, **environment, "DB_URL": "sqlite:///group.db"}
    log = tmp_path / "supervisor.log"  # a file: an unread pipe would fill up and block
    with log.open("w") as out:
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "tideflow", "-v", "run", str(reckoning), "--workers", "2"],
            cwd=folder,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        # Both workers own partitions and have checkpointed some: the split is real.
        wait_for(
            lambda: len({owner for owner, _ in owners(folder, environment["STATE"]).values()}) == 2,
            240,  # a tansu rebalance under load has taken over a minute
            "both workers to own partitions",
        )
        # The kill lands while partitions' state is stored as base + deltas, so the
        # partitions handed over are restored from both.
        wait_for(
            lambda: partition_deltas(folder, environment["STATE"]) > 0,
            180,
            "a partition's state to be stored as deltas",
        )
        workers = psutil.Process(supervisor.pid).children()
        assert len(workers) == 2
        victim = workers[1]
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        try:
            supervisor.wait(timeout=300)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                "the group run did not end in 300 s:\n" + log.read_text()[-6000:]
            ) from None
    finally:
        if supervisor.poll() is None:
            for worker in psutil.Process(supervisor.pid).children():
                worker.kill()
            supervisor.kill()
    stderr = log.read_text()
    assert supervisor.returncode == 0, stderr[-3000:]
    # The supervisor started a new process in the dead worker's place.
    assert "exited with -9; restarting" in stderr
    assert stderr.count(" started (pid ") == 3
    grouped = totals(folder / "group.db")

    single = cli(
        "run",
        "reckoning.yaml",
        "--set",
        "name=rooms-single",
        "--set",
        "source.group=single",
        cwd=folder,
        env={**environment, "DB_URL": "sqlite:///single.db"},
    )
    assert single.returncode == 0, single.stderr
    alone = totals(folder / "single.db")

    expected = oracle(folder)
    assert expected["readings"].sum() == COUNT
    assert_frame_equal(alone, expected, check_dtypes=False)
    assert_frame_equal(grouped, alone, check_dtypes=False)
    # Every partition was checkpointed by the group, and at least one changed hands.
    held = owners(folder, environment["STATE"])
    assert len(held) == 3
    assert max(epoch for _, epoch in held.values()) >= 2
    shown = cli("state", "show", "reckoning.yaml", cwd=folder, env=environment)
    assert shown.returncode == 0, shown.stderr
    for part in held:
        assert f" {part}: next " in shown.stdout

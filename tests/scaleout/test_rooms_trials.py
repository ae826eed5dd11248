"""Seeded scale-out trials of the rooms topology (issue 15 item 4, in part).

Each trial publishes the rooms example's events, then runs the `reckoning` group (aggregate per
room, declared `partitioned_by: room`) with `--workers 2` or `--workers 3`, on the embedded log
or on Kafka (tansu, totals into a fresh PostgreSQL database), and kills with SIGKILL at a
random moment — from before the first checkpoint to the end — either one worker (the
supervisor restarts it) or the supervisor itself (on the embedded log its workers run on as
orphans and end on their own; on Kafka they are killed with it, a lost host); a new
supervisor is then started to finish. The table must hold exactly the totals
of an independent `group_by` of every published event, and every partition must be
checkpointed. CI runs two trials per backend; `make faults` runs ten.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import psutil
import psycopg
import pytest
from polars.testing import assert_frame_equal
from tests.faults.oracle import seeds
from tests.topics import test_workers
from tests.topics.test_workers import oracle, owners, prepare, totals, wait_for

COUNT = 1600


def pg_totals(url: str) -> pl.DataFrame:
    """The room_totals table the sql sink upserted into PostgreSQL."""
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT room, people, readings FROM room_totals").fetchall()
    return pl.DataFrame(rows, schema=["room", "people", "readings"], orient="row").sort("room")


def supervise(
    folder: Path, reckoning: Path, workers: int, env: dict[str, str], log: Path
) -> subprocess.Popen[bytes]:
    with log.open("a") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tideflow",
                "-v",
                "run",
                str(reckoning),
                "--workers",
                str(workers),
            ],
            cwd=folder,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def settled(log: Path, workers: int) -> bool:
    """Whether every worker (at most one per partition) took partitions, as the log says."""
    took = {
        line.split("worker ", 1)[1].split()[0]
        for line in log.read_text().splitlines()
        if " took partitions " in line
    }
    return len(took) >= min(workers, 3)


def finish(process: subprocess.Popen[bytes], log: Path, timeout: float = 300) -> int:
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        for child in psutil.Process(process.pid).children(recursive=True):
            child.kill()
        process.kill()
        raise AssertionError("the group run did not end:\n" + log.read_text()[-6000:]) from None


@pytest.mark.parametrize("backend", ["embedded", "kafka"])
@pytest.mark.parametrize("seed", seeds(2, 10, base=1500))
def test_workers_killed_at_random_give_exact_totals(
    tmp_path: Path,
    backend: str,
    seed: int,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    rng = random.Random(seed)
    workers = rng.choice([2, 3])
    kill_supervisor = rng.random() < 0.35
    delay = rng.uniform(0.0, 6.0)
    victim = "the supervisor" if kill_supervisor else "a worker"
    print(f"seed {seed}: {workers} workers, kill {victim} after {delay:.1f} s")
    monkeypatch.setattr(test_workers, "COUNT", COUNT)  # what the oracle generates
    environment = {"COUNT": str(COUNT), "KAFKA_BROKER": "", "STATE": ""}
    db_url = "sqlite:///group.db"
    if backend == "kafka":
        environment["KAFKA_BROKER"] = "kafka://" + request.getfixturevalue("kafka_broker")
        db_url = request.getfixturevalue("postgres_database")
    folder = tmp_path / "rooms"
    reckoning = prepare(folder, environment)
    env = {**os.environ, **environment, "DB_URL": db_url}
    log = tmp_path / "supervisor.log"
    supervisor = supervise(folder, reckoning, workers, env, log)
    if backend == "kafka":
        # tansu keeps a group waiting for minutes for a member killed while joining (real
        # Kafka expires it at its session timeout): on Kafka the kill comes once the group
        # has settled, before or after the first checkpoint.
        wait_for(lambda: settled(log, workers), 120, "the group to assign every worker")
    time.sleep(delay)  # anywhere from before the first checkpoint to well into the run
    try:
        if kill_supervisor:
            orphans = psutil.Process(supervisor.pid).children()
            supervisor.send_signal(signal.SIGKILL)
            supervisor.wait(10)
            for orphan in orphans:
                with contextlib.suppress(psutil.NoSuchProcess):
                    if backend == "kafka":
                        # The whole host is lost. Orphans left to end on their own leave
                        # the group one by one, and tansu keeps a member that leaves while
                        # its rejoin is pending as a ghost leader that stalls the group for
                        # minutes (plain librdkafka consumers show it too; real Kafka
                        # expires it): the next supervisor's workers would wait on it.
                        orphan.kill()
                    orphan.wait(300)  # on the embedded log they run on and end the group
            supervisor = supervise(folder, reckoning, workers, env, log)
        else:
            children = psutil.Process(supervisor.pid).children()
            if children:
                rng.choice(children).send_signal(signal.SIGKILL)
        code = finish(supervisor, log)
    finally:
        if supervisor.poll() is None:
            for child in psutil.Process(supervisor.pid).children(recursive=True):
                child.kill()
            supervisor.kill()
    text = log.read_text()
    assert code == 0, f"seed {seed}: exit {code}\n{text[-4000:]}"
    got = pg_totals(db_url) if backend == "kafka" else totals(folder / "group.db")
    expected = oracle(folder)
    assert expected["readings"].sum() == COUNT
    assert_frame_equal(got, expected, check_dtypes=False)
    assert len(owners(folder, environment["STATE"])) == 3, (
        f"seed {seed}: not every partition checkpointed"
    )

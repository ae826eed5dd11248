"""`aggregate`'s `emit` modes in a group of two workers (`tideflow run --workers 2`) on the
embedded log, one worker killed with SIGKILL mid-run and restarted by the supervisor.

The rooms topic is keyed by room, so each room's state lives in one partition and moves with
it. The upserted totals must equal an independent computation of the published records; with
``on_end`` the append-only Parquet copy of the step's output must hold exactly one row per
room, however the partitions moved and whichever worker died."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import polars as pl
import psutil
import pytest
from polars.testing import assert_frame_equal
from tests.topics import test_workers
from tests.topics.test_workers import oracle, owners, prepare, totals, wait_for

ROOMS = 12  # keys of the rooms example's generator
COUNT = 1500

SINKS = """sinks:
  - {type: sql, name: table, url: "${DB_URL}", table: room_totals, mode: upsert, key: [room]}
  - {type: file, name: rows, path: emitted, format: parquet}
"""


def with_emit(reckoning: Path, emit: str) -> None:
    text = reckoning.read_text()
    head, _, tail = text.partition("sink:\n")
    tail = tail[tail.index("checkpoint:") :]
    head = head.replace(
        "      last_seen: max(ts)\n", f"      last_seen: max(ts)\n    emit: {emit}\n"
    )
    assert f"emit: {emit}" in head
    reckoning.write_text(head + SINKS + "\n" + tail, encoding="utf-8")


@pytest.mark.parametrize("emit", ["on_end", "{every: 1s}"])
def test_two_workers_one_killed_keep_each_emit_mode_exact(
    tmp_path: Path, emit: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(test_workers, "COUNT", COUNT)  # what the oracle generates
    folder = tmp_path / "rooms"
    environment = {"COUNT": str(COUNT), "KAFKA_BROKER": "", "STATE": ""}
    reckoning = prepare(folder, environment)
    with_emit(reckoning, emit)
    env = {**os.environ, **environment, "DB_URL": "sqlite:///group.db"}
    log = tmp_path / "supervisor.log"
    with log.open("w") as out:
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "tideflow", "-v", "run", str(reckoning), "--workers", "2"],
            cwd=folder,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(
            lambda: len({owner for owner, _ in owners(folder, "").values()}) == 2,
            120,
            "both workers to own partitions",
        )
        workers = psutil.Process(supervisor.pid).children()
        assert len(workers) == 2
        workers[1].send_signal(signal.SIGKILL)
        workers[1].wait(10)
        supervisor.wait(timeout=300)
    finally:
        if supervisor.poll() is None:
            for worker in psutil.Process(supervisor.pid).children():
                worker.kill()
            supervisor.kill()
    stderr = log.read_text()
    assert supervisor.returncode == 0, stderr[-3000:]
    assert "exited with -9; restarting" in stderr

    expected = oracle(folder)
    assert expected["readings"].sum() == COUNT and expected.height == ROOMS
    assert_frame_equal(totals(folder / "group.db"), expected, check_dtypes=False)
    rows = pl.read_parquet(folder / "emitted" / "**" / "*.parquet")
    assert rows.select("room", "readings").is_duplicated().sum() == 0, "a row emitted twice"
    if emit == "on_end":
        assert rows.height == ROOMS, f"{rows.height} rows for {ROOMS} rooms"
    else:  # each worker reads for several seconds: more than the final emission happened
        assert rows.height > ROOMS, "no periodic emission: the test proved nothing"
    final = rows.sort("readings").group_by("room").last().sort("room")
    assert_frame_equal(final.select(expected.columns), expected, check_dtypes=False)

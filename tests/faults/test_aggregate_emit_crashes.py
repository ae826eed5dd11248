"""``aggregate`` with ``emit: on_end`` and ``emit: {every: ...}`` crashed at checkpoint steps
(``TIDEFLOW_CRASH_AT``, an abrupt exit as with ``kill -9``) and resumed until done.

What was not emitted yet lives in the step's snapshot, so after the restarts: the upsert
table equals a Polars ``group_by`` of the input; with ``on_end`` the append-only Parquet
output holds exactly one row per key (not one per run or per attempt); with ``every`` no key
state was emitted twice and each key's last row is its final total.
"""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from tests.faults.oracle import FULL
from tests.system.helpers import cli

from tideflow.core.faults import CRASH_EXIT_CODE

KEYS = 50
PIPELINE = """
name: emit-crash
source: {type: file, path: "in/*.parquet", format: parquet, batch_size: 100}
steps:
  - {type: python, name: pace, function: "pace.py:pace", mode: batch}
  - {type: aggregate, name: totals, keys: [k], aggregations: {total: sum(v), n: count()},
     emit: EMIT}
sinks:
  - {type: file, name: rows, path: out, format: parquet}
  - {type: sql, name: table, url: "sqlite:///totals.db", table: totals, mode: upsert, key: [k]}
checkpoint: {every_records: 300}
"""

PACE = """
import os, time

def pace(batch):
    time.sleep(float(os.environ.get("PACE", "0")))
    return batch
"""

POINTS = [
    "checkpoint.after_flush",
    "checkpoint.after_state",
    "checkpoint.after_first_sink_commit",
]
if FULL:
    POINTS += ["checkpoint.in_state_transaction", "sql_sink.before_commit", "file_sink.mid_rename"]


def prepare(tmp_path: Path, emit: str) -> tuple[Path, pl.DataFrame]:
    rng = random.Random(11)
    # The first file has every key, the others only the first 20: most keys are never seen
    # again after the first checkpoint, so one lost from a snapshot would stay lost.
    keys = [f"k{i:02d}" for i in range(KEYS)]
    keys += [f"k{rng.randrange(KEYS):02d}" for _ in range(300 - KEYS)]
    keys += [f"k{rng.randrange(20):02d}" for _ in range(900)]
    data = pl.DataFrame({"k": keys, "v": [rng.randrange(-10, 100) for _ in keys]})
    (tmp_path / "in").mkdir()
    for i, part in enumerate(data.iter_slices(300)):
        part.write_parquet(tmp_path / "in" / f"part-{i}.parquet")
    (tmp_path / "pace.py").write_text(PACE, encoding="utf-8")
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(PIPELINE.replace("EMIT", emit), encoding="utf-8")
    oracle = (
        data.group_by("k")
        .agg(pl.col("v").sum().alias("total"), pl.len().cast(pl.Int64).alias("n"))
        .sort("k")
    )
    return pipeline, oracle


def run_with_crashes(
    tmp_path: Path, pipeline: Path, point: str, env: dict[str, str], tries: int = 11
) -> int:
    """Run, crashing at the nth pass of ``point`` (n = 1, 2, ... ``tries``) until a run
    completes; returns how many runs crashed."""
    for nth in range(1, tries + 1):
        run = cli(
            "run", str(pipeline), cwd=tmp_path, env={**env, "TIDEFLOW_CRASH_AT": f"{point}:{nth}"}
        )
        assert run.returncode in (CRASH_EXIT_CODE, 0), run.stderr
        if run.returncode == 0:
            return nth - 1
    raise AssertionError(f"{point}: no run completed")


def table(tmp_path: Path) -> pl.DataFrame:
    with sqlite3.connect(tmp_path / "totals.db") as conn:
        rows = conn.execute("SELECT k, total, n FROM totals").fetchall()
    return pl.DataFrame(rows, schema=["k", "total", "n"], orient="row").sort("k")


@pytest.mark.parametrize("point", POINTS)
def test_on_end_crashed_at_checkpoint_steps_emits_each_key_once(tmp_path: Path, point: str) -> None:
    pipeline, oracle = prepare(tmp_path, "on_end")
    crashed = run_with_crashes(tmp_path, pipeline, point, {})
    assert crashed, f"{point} was never reached: the test proved nothing"
    assert_frame_equal(table(tmp_path), oracle, check_dtypes=False)
    rows = pl.read_parquet(tmp_path / "out" / "*.parquet").sort("k")
    assert_frame_equal(rows, oracle, check_dtypes=False)  # 50 rows: once per key
    again = cli("run", str(pipeline), cwd=tmp_path)  # the input is done: nothing more
    assert again.returncode == 0, again.stderr
    assert pl.read_parquet(tmp_path / "out" / "*.parquet").height == KEYS


@pytest.mark.parametrize("point", POINTS)
def test_every_crashed_at_checkpoint_steps_is_exact(tmp_path: Path, point: str) -> None:
    # 1ms: every idle call (about twice a second) emits, so emissions land between
    # checkpoints; the paced batches make each run last long enough for several.
    pipeline, oracle = prepare(tmp_path, "{every: 1ms}")
    crashed = run_with_crashes(tmp_path, pipeline, point, {"PACE": "0.12"})
    assert crashed, f"{point} was never reached: the test proved nothing"
    assert_frame_equal(table(tmp_path), oracle, check_dtypes=False)
    rows = pl.read_parquet(tmp_path / "out" / "*.parquet")
    assert rows.height > KEYS, "no periodic emission happened: the test proved nothing"
    assert rows.select("k", "n").is_duplicated().sum() == 0, "a key's state was emitted twice"
    final = rows.sort("n").group_by("k").last().sort("k")  # n only grows: the newest row
    assert_frame_equal(final, oracle, check_dtypes=False)

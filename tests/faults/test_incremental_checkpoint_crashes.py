"""Incremental checkpoints crashed at every checkpoint step, across compactions.

``aggregate`` checkpoints every 100 records and stores its whole state every 4th checkpoint
(``compact_every: 4``), deltas in between; each run is ended abruptly (``TIDEFLOW_CRASH_AT``,
``os._exit`` as with ``kill -9``) at the nth pass of a crash point, ``checkpoint.compacted``
(the old deltas deleted in the transaction that stores the new base) among them, and run
again until one completes. The state is in SQLite or in PostgreSQL. After the restarts the
upsert table equals a Polars ``group_by`` of the input, and with ``on_end`` the append-only
Parquet output holds one row per key: a key lost, doubled or wrongly flagged in a restored
state would show in one or the other. A tumbling ``window`` (deltas: the windows changed and
those closed) crashed the same way emits each window once, with the oracle's totals.
"""

from __future__ import annotations

import random
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from tests.faults.oracle import FULL
from tests.faults.test_aggregate_emit_crashes import run_with_crashes as crash_runs
from tests.faults.test_aggregate_emit_crashes import table

KEYS = 200
PIPELINE = """
name: incremental-crash
STATE
source: {type: file, path: "in/*.parquet", format: parquet, batch_size: 100}
steps:
  - {type: python, name: pace, function: "pace.py:pace", mode: batch}
  - {type: aggregate, name: totals, keys: [k], aggregations: {total: sum(v), n: count()},
     emit: EMIT}
sinks:
  - {type: file, name: rows, path: out, format: parquet}
  - {type: sql, name: table, url: "sqlite:///totals.db", table: totals, mode: upsert, key: [k]}
checkpoint: {every_records: 100, compact_every: 4}
"""

PACE = """
import os, time

def pace(batch):
    time.sleep(float(os.environ.get("PACE", "0")))
    return batch
"""

POINTS = ["checkpoint.compacted", "checkpoint.in_state_transaction", "checkpoint.after_state"]
if FULL:
    POINTS += ["checkpoint.after_flush", "checkpoint.after_first_sink_commit"]


def prepare(tmp_path: Path, emit: str, state: str) -> tuple[Path, pl.DataFrame]:
    rng = random.Random(23)
    # Every key in the first 200 records, then 1,600 over the first 120: the rest never
    # change again (one missing from a base or a delta would stay missing), and each batch
    # of 100 changes about half of those 120 (the rows of the others stay in older deltas).
    keys = [f"k{i:03d}" for i in range(KEYS)]
    keys += [f"k{rng.randrange(120):03d}" for _ in range(1600)]
    data = pl.DataFrame({"k": keys, "v": [rng.randrange(-10, 100) for _ in keys]})
    (tmp_path / "in").mkdir()
    for i, part in enumerate(data.iter_slices(300)):
        part.write_parquet(tmp_path / "in" / f"part-{i}.parquet")
    (tmp_path / "pace.py").write_text(PACE, encoding="utf-8")
    pipeline = tmp_path / "p.yaml"
    text = PIPELINE.replace("EMIT", emit).replace("STATE", f'state: "{state}"' if state else "")
    pipeline.write_text(text, encoding="utf-8")
    oracle = (
        data.group_by("k")
        .agg(pl.col("v").sum().alias("total"), pl.len().cast(pl.Int64).alias("n"))
        .sort("k")
    )
    return pipeline, oracle


@pytest.fixture(params=["sqlite", "postgresql"])
def state(request: pytest.FixtureRequest) -> str:
    """Where the state is: '' (SQLite beside the pipeline) or a PostgreSQL database."""
    if request.param == "sqlite":
        return ""
    return str(request.getfixturevalue("postgres_database"))


@pytest.mark.parametrize("point", POINTS)
def test_on_end_crashed_across_compactions_emits_each_key_once(
    tmp_path: Path, point: str, state: str
) -> None:
    pipeline, oracle = prepare(tmp_path, "on_end", state)
    crashed = crash_runs(tmp_path, pipeline, point, {}, tries=24)
    assert crashed >= 2, f"{point} was reached {crashed} times: the test proved little"
    assert_frame_equal(table(tmp_path), oracle, check_dtypes=False)
    rows = pl.read_parquet(tmp_path / "out" / "*.parquet").sort("k")
    assert_frame_equal(rows, oracle, check_dtypes=False)  # once per key


@pytest.mark.parametrize("point", POINTS[:1] if not FULL else POINTS)
def test_every_crashed_across_compactions_is_exact(tmp_path: Path, point: str, state: str) -> None:
    # Emissions between checkpoints clear every key's not-emitted flag: stored as a reset in
    # the next delta, which a restore must apply before the rows changed since.
    pipeline, oracle = prepare(tmp_path, "{every: 1ms}", state)
    # Paced so that emissions (about twice a second) fall between checkpoints.
    crashed = crash_runs(tmp_path, pipeline, point, {"PACE": "0.2"}, tries=24)
    assert crashed >= 2, f"{point} was reached {crashed} times: the test proved little"
    assert_frame_equal(table(tmp_path), oracle, check_dtypes=False)
    rows = pl.read_parquet(tmp_path / "out" / "*.parquet")
    assert rows.select("k", "n").is_duplicated().sum() == 0, "a key's state was emitted twice"
    final = rows.sort("n").group_by("k").last().sort("k")
    assert_frame_equal(final, oracle, check_dtypes=False)


WINDOWS = """
name: incremental-window-crash
STATE
source: {type: file, path: "in/*.parquet", format: parquet, batch_size: 100}
steps:
  - {type: window, name: tens, kind: tumbling, size: 10s, keys: [k], time_column: ts,
     max_out_of_orderness: 5s, aggregations: {total: sum(v), n: count()}}
sinks:
  - {type: file, name: rows, path: out, format: parquet}
checkpoint: {every_records: 100, compact_every: 4}
"""


@pytest.mark.parametrize("point", POINTS if FULL else ["checkpoint.in_state_transaction"])
def test_tumbling_windows_crashed_across_compactions_are_emitted_once(
    tmp_path: Path, point: str, state: str
) -> None:
    """Window state as deltas: the windows changed and those closed since the last
    checkpoint. Each window is emitted exactly once with the oracle's totals."""
    rng = random.Random(5)
    # 60 keys, 2,400 events 0.05 s apart with up to 4 s of disorder (within the 5 s bound, so
    # nothing is late): windows open and close all along the run.
    times = [i * 50_000 + rng.randrange(0, 4_000_000) for i in range(2400)]
    data = pl.DataFrame(
        {
            "k": [rng.randrange(60) for _ in times],
            "v": [rng.randrange(-10, 100) for _ in times],
            "ts": pl.Series(times).cast(pl.Datetime("us")),
        }
    )
    (tmp_path / "in").mkdir()
    for i, part in enumerate(data.iter_slices(400)):
        part.write_parquet(tmp_path / "in" / f"part-{i}.parquet")
    pipeline = tmp_path / "p.yaml"
    text = WINDOWS.replace("STATE", f'state: "{state}"' if state else "")
    pipeline.write_text(text, encoding="utf-8")
    crashed = crash_runs(tmp_path, pipeline, point, {}, tries=24)
    assert crashed >= 2, f"{point} was reached {crashed} times: the test proved little"
    oracle = (
        data.with_columns(pl.col("ts").dt.truncate("10s").alias("window_start"))
        .group_by("window_start", "k")
        .agg(pl.col("v").sum().alias("total"), pl.len().cast(pl.Int64).alias("n"))
        .sort("window_start", "k")
    )
    rows = pl.read_parquet(tmp_path / "out" / "*.parquet")
    got = rows.select("window_start", "k", "total", "n").sort("window_start", "k")
    assert_frame_equal(got, oracle, check_dtypes=False)  # each window once

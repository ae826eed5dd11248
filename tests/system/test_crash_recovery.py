"""``kill -9`` a file -> Parquet pipeline at random moments; every input row lands exactly once."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import polars as pl
import pytest
from tests.system.helpers import cli, read_parquet_tree, start_cli

FILES = 8
ROWS_PER_FILE = 5_000

PIPELINE = """
name: crashy
source: {type: file, path: "in/*.csv", batch_size: 400}
steps:
  # Slow enough per batch that a kill lands mid-run, between and during checkpoints.
  - {type: python, name: slow, function: "slow.py:slow", mode: batch}
  - {type: with_columns, name: doubled, columns: {twice: "value * 2"}}
sink: {type: file, path: out, format: parquet, roll_bytes: 20000}
checkpoint: {every_records: 1200}
"""

SLOW = """
import time

def slow(batch):
    time.sleep(0.04)
    return batch
"""


def write_inputs(folder: Path) -> pl.DataFrame:
    """CSV files with globally unique ids; returns all rows as one frame."""
    folder.mkdir()
    frames = []
    for f in range(FILES):
        ids = range(f * ROWS_PER_FILE, (f + 1) * ROWS_PER_FILE)
        frame = pl.DataFrame({"id": list(ids), "value": [i % 997 for i in ids]})
        frame.write_csv(folder / f"part-{f:02d}.csv")
        frames.append(frame)
    return pl.concat(frames)


@pytest.mark.slow
def test_kill_9_at_random_points_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    seed = random.randrange(1_000_000)
    rng = random.Random(seed)
    expected = write_inputs(tmp_path / "in")
    (tmp_path / "slow.py").write_text(SLOW, encoding="utf-8")
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(PIPELINE, encoding="utf-8")

    kills = 0
    for _ in range(8):
        proc = start_cli("run", str(pipeline), cwd=tmp_path)
        time.sleep(rng.uniform(0.4, 2.0))
        if proc.poll() is not None:
            break  # finished before the kill: nothing left to interrupt
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
    final = cli("run", str(pipeline), cwd=tmp_path)
    assert final.returncode == 0, f"seed={seed}\n{final.stderr}"

    got = read_parquet_tree(tmp_path / "out")
    assert kills > 0, f"seed={seed}: no run was interrupted; the test proved nothing"
    dupes = got.group_by("id").len().filter(pl.col("len") > 1)
    assert dupes.height == 0, f"seed={seed}: duplicated ids {dupes['id'].head(5).to_list()}"
    missing = expected.join(got, on="id", how="anti")
    assert missing.height == 0, f"seed={seed}: lost ids {missing['id'].head(5).to_list()}"
    assert got.height == expected.height
    assert (got["twice"] == got["value"] * 2).all()
    # No half-written or temporary file is visible to readers.
    for path in (tmp_path / "out").rglob("*.parquet"):
        assert not path.name.startswith((".", "_"))

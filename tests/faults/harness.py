"""A file -> Parquet pipeline paced so that faults land mid-run, and its exact-output check."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
from tests.faults.oracle import compare, content_hash, read_output, records

N = 6_000
PIPELINE = """
name: faulty
source: {type: file, path: "in/*.csv", batch_size: 250}
steps:
  - {type: python, name: pace, function: "pace.py:pace", mode: batch}
sink: {type: file, path: out, format: parquet, roll_bytes: 4000}
checkpoint: {every_records: 700}
"""

PACE = """
import os, time

def pace(batch):
    time.sleep(float(os.environ.get("PACE", "0")))
    return batch
"""


def prepare(tmp_path: Path, seed: int) -> tuple[Path, pl.DataFrame]:
    """Input CSV files from the seeded generator and the pipeline around them."""
    data = records(seed, N)
    (tmp_path / "in").mkdir()
    for i, part in enumerate(data.iter_slices(N // 4)):
        part.write_csv(tmp_path / "in" / f"part-{i}.csv")
    (tmp_path / "pace.py").write_text(PACE, encoding="utf-8")
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(PIPELINE, encoding="utf-8")
    return pipeline, data


def assert_exact_output(tmp_path: Path, expected: pl.DataFrame, context: str) -> None:
    """The committed Parquet under ``out`` is exactly ``expected``, with no stray file."""
    out = tmp_path / "out"
    actual = read_output(out)
    diff = compare(expected, actual)
    assert diff.exact, f"{context}: {diff}"
    assert content_hash(actual) == content_hash(expected), context
    leftovers = [p for p in out.rglob("*") if p.is_file() and p.suffix != ".parquet"]
    assert not leftovers, f"{context}: orphan or partial files {leftovers}"


def kill_randomly(
    pipeline: Path,
    cwd: Path,
    seed: int,
    kills: int,
    env: dict[str, str],
    window: tuple[float, float] = (0.6, 2.5),
) -> int:
    """Run and SIGKILL the pipeline ``kills`` times at seeded moments (``window`` seconds
    after each start); returns the kills that landed mid-run."""
    rng = random.Random(seed)
    landed = 0
    for _ in range(kills):
        proc = subprocess.Popen(
            [sys.executable, "-m", "tideflow.cli.main", "run", str(pipeline)],
            cwd=cwd,
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(*window))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            landed += 1
        proc.wait()
    return landed

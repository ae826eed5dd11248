"""A windowed run killed with `kill -9` twice and resumed gives exactly the output of an
uninterrupted run (issue 4): window state is checkpointed with the positions."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
from polars.testing import assert_frame_equal
from tests.faults.harness import kill_randomly
from tests.system.helpers import EXAMPLES, cli, read_parquet_tree

PACE = """
import time

def pace(batch):
    time.sleep(0.2)
    return batch
"""


def paced_copy(folder: Path) -> Path:
    """The sensors example with a pause per batch, smaller batches and frequent checkpoints."""
    shutil.copytree(EXAMPLES / "sensors", folder, ignore=shutil.ignore_patterns("out", ".*"))
    (folder / "pace.py").write_text(PACE, encoding="utf-8")
    text = (folder / "pipeline.yaml").read_text(encoding="utf-8")
    text = text.replace("batch_size: 20000", "batch_size: 2000")
    text = text.replace("every_records: 50000", "every_records: 4000")
    text = text.replace(
        "steps:\n",
        'steps:\n  - {type: python, name: pace, function: "pace.py:pace", mode: batch}\n',
        1,
    )
    (folder / "pipeline.yaml").write_text(text, encoding="utf-8")
    return folder / "pipeline.yaml"


def outputs(folder: Path) -> pl.DataFrame:
    frames = [read_parquet_tree(folder / "out" / name) for name in ("windows", "outliers")]
    return pl.concat(frames).sort("sensor_id", "window_start")


def test_kill_9_during_a_windowed_run_resumes_to_the_uninterrupted_result(
    tmp_path: Path,
) -> None:
    env = {"COUNT": "40000"}
    clean = paced_copy(tmp_path / "clean")
    assert (run := cli("run", str(clean), env=env)).returncode == 0, run.stderr
    killed = paced_copy(tmp_path / "killed")
    landed = kill_randomly(killed, killed.parent, seed=44, kills=2, env=env, window=(2.0, 3.5))
    assert landed == 2, "a kill did not land mid-run"
    assert (run := cli("run", str(killed), env=env)).returncode == 0, run.stderr
    assert_frame_equal(outputs(killed.parent), outputs(clean.parent))

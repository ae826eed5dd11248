"""F2 and F3 for file output: crashes at every checkpoint step and kill -9 at random moments.

F2 crashes deterministically at each named crash point (``tideflow.core.faults``); F3 kills the
process with SIGKILL at seeded random moments, locally and on an S3-compatible server. After
the restarts the committed files must hold exactly the input: nothing lost, nothing doubled,
no partial or orphan file, and the same content hash as the oracle.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from tests.faults.harness import assert_exact_output, kill_randomly, prepare
from tests.faults.oracle import seeds, trials
from tests.system.helpers import cli

from tideflow.core.faults import CRASH_EXIT_CODE, POINTS

# Seconds each of the 24 batches sleeps in the F3 runs: a whole run (about 2.9 s of pacing
# plus start-up) must outlast the latest kill moment (2.5 s). With 0.05 s a run took about
# 2.1 s once start-up got faster, and a seed whose kills all came later killed nothing.
PACE = "0.12"

# The points a file-to-file run passes through (a keeper commit needs a transactional sink;
# a compaction needs a step storing deltas, see test_incremental_checkpoint_crashes.py; the
# sql and kafka sink points have their own suites).
FILE_RUN_POINTS = [
    p
    for p in POINTS
    if p.startswith(("checkpoint.", "file_sink."))
    and "keeper" not in p
    and p != "checkpoint.compacted"
]


@pytest.mark.parametrize("point", FILE_RUN_POINTS)
def test_f2_crash_at_each_checkpoint_step_is_exactly_once(tmp_path: Path, point: str) -> None:
    pipeline, expected = prepare(tmp_path, seed=7)
    crashed = 0
    for nth in range(1, trials(2, 5) + 1):
        run = cli("run", str(pipeline), cwd=tmp_path, env={"TIDEFLOW_CRASH_AT": f"{point}:{nth}"})
        assert run.returncode in (CRASH_EXIT_CODE, 0), run.stderr
        crashed += run.returncode == CRASH_EXIT_CODE
        if run.returncode == 0:
            break  # the whole input was processed before the nth pass
    assert crashed, f"{point} was never reached: the test proved nothing"
    final = cli("run", str(pipeline), cwd=tmp_path)
    assert final.returncode == 0, final.stderr
    assert_exact_output(tmp_path, expected, f"crash at {point}")


@pytest.mark.parametrize("seed", seeds(2, 10))
def test_f3_kill_9_three_times_local(tmp_path: Path, seed: int) -> None:
    pipeline, expected = prepare(tmp_path, seed)
    landed = kill_randomly(pipeline, tmp_path, seed, kills=3, env={"PACE": PACE})
    assert landed, f"seed={seed}: no kill landed mid-run"
    final = cli("run", str(pipeline), cwd=tmp_path)
    assert final.returncode == 0, final.stderr
    assert_exact_output(tmp_path, expected, f"seed={seed}")


S3_PIPELINE = """
name: faulty-s3
source: {type: file, path: "in/*.csv", batch_size: 250}
steps:
  - {type: python, name: pace, function: "pace.py:pace", mode: batch}
sink:
  type: file
  path: ${DEST}
  format: parquet
  roll_bytes: 4000
  storage_options:
    key: testing
    secret: testing
    endpoint_url: ${ENDPOINT}
    client_kwargs: {region_name: us-east-1}
checkpoint: {every_records: 700}
"""


@pytest.mark.parametrize("seed", seeds(1, 5, base=2000))
def test_f3_kill_9_three_times_on_s3(tmp_path: Path, seed: int, s3_endpoint: str) -> None:
    import fsspec

    pipeline, expected = prepare(tmp_path, seed)
    pipeline.write_text(S3_PIPELINE, encoding="utf-8")
    dest = f"tideflow-test/f3-{seed}-{os.getpid()}-{time.time_ns()}/out"
    env = {"PACE": PACE, "DEST": f"s3://{dest}", "ENDPOINT": s3_endpoint}
    landed = kill_randomly(pipeline, tmp_path, seed, kills=3, env=env)
    assert landed, f"seed={seed}: no kill landed mid-run"
    final = cli("run", str(pipeline), cwd=tmp_path, env=env)
    assert final.returncode == 0, final.stderr

    fs = fsspec.filesystem(
        "s3",
        key="testing",
        secret="testing",
        endpoint_url=s3_endpoint,
        client_kwargs={"region_name": "us-east-1"},
    )
    fs.invalidate_cache()
    keys = sorted(fs.find(dest))
    assert keys and all(k.endswith(".parquet") and ".tideflow-tmp" not in k for k in keys), keys
    local = tmp_path / "out"
    local.mkdir()
    for i, key in enumerate(keys):
        fs.get(key, str(local / f"{i:05d}.parquet"))
    assert_exact_output(tmp_path, expected, f"s3 seed={seed}")


def test_f3_kill_9_with_state_in_postgresql(tmp_path: Path, postgres_database: str) -> None:
    pipeline, expected = prepare(tmp_path, seed=4000)
    pipeline.write_text(
        pipeline.read_text().replace("name: faulty\n", "name: faulty\nstate: ${STATE_URL}\n"),
        encoding="utf-8",
    )
    env = {"PACE": PACE, "STATE_URL": postgres_database}
    landed = kill_randomly(pipeline, tmp_path, 4000, kills=3, env=env)
    assert landed, "no kill landed mid-run"
    final = cli("run", str(pipeline), cwd=tmp_path, env=env)
    assert final.returncode == 0, final.stderr
    assert_exact_output(tmp_path, expected, "state in PostgreSQL")
    assert not (tmp_path / ".tideflow" / "state.db").exists(), "state went to SQLite instead"

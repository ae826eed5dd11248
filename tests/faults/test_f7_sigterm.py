"""F7: SIGTERM mid-run drains, checkpoints and exits 0; the restarted run duplicates nothing."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.faults.harness import assert_exact_output, prepare
from tests.faults.oracle import compare, read_output, seeds
from tests.system.helpers import cli

STOP_BOUND_SECONDS = 30  # the bound for the final checkpoint; a hang fails the test


@pytest.mark.parametrize("seed", seeds(2, 10, base=3000))
def test_f7_sigterm_mid_run_then_restart_is_exact(tmp_path: Path, seed: int) -> None:
    pipeline, expected = prepare(tmp_path, seed)
    rng = random.Random(seed)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tideflow.cli.main", "run", str(pipeline)],
        cwd=tmp_path,
        env={**os.environ, "PACE": "0.05"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Interpreter start-up takes 1-2 s on a loaded machine, and a SIGTERM before the run
    # installs its handler kills the process outright: start the clock when the run has
    # opened its state store.
    started = time.monotonic()
    while not (tmp_path / ".tideflow" / "state.db").exists() and proc.poll() is None:
        assert time.monotonic() - started < STOP_BOUND_SECONDS, "the run did not start"
        time.sleep(0.02)
    time.sleep(rng.uniform(0.3, 1.5))
    interrupted = proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=STOP_BOUND_SECONDS)
    assert proc.returncode == 0, stderr
    if interrupted:
        assert "stopped" in stdout, stdout
    # What the stopped run committed is a duplicate-free subset of the input.
    partial = compare(expected, read_output(tmp_path / "out"))
    assert not (partial.duplicated or partial.unexpected or partial.differing), str(partial)
    final = cli("run", str(pipeline), cwd=tmp_path)
    assert final.returncode == 0, final.stderr
    assert_exact_output(tmp_path, expected, f"seed={seed}")

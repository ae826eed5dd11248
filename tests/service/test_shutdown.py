"""Ending `tideflow serve`: a signal leaves nothing behind (no leaked semaphores, the active
run stopped at a checkpoint), and a run whose server was killed outright stops by itself
instead of running on unseen, holding the pipeline's checkpoint."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest
from tests.service.conftest import demo_pipeline, free_port, run_to_end, wait_for

from tideflow.state.locate import open_state_store

SLOW = (
    demo_pipeline(count=2_000_000, rate=2000)
    .replace("name: demo", "name: slow")
    .replace("path: out/demo", "path: out/slow")
)
"""A run that would take over 15 minutes: whatever ends it early is the server's doing."""


def start_server(folder: Path) -> tuple[subprocess.Popen[str], httpx.Client]:
    """`tideflow serve` with its output (and that of every process it starts: runs and
    multiprocessing's resource tracker) in one pipe, read to its end by the test."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    env.pop("TIDEFLOW_TOKEN", None)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tideflow.cli.main",
            "serve",
            "--folder",
            str(folder),
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)

    def up() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"server exited: {process.communicate()[0]}")
        try:
            return http.get("/api/health").status_code == 200
        except httpx.TransportError:
            return False

    wait_for(up, timeout=30)
    return process, http


def running_slow(http: httpx.Client) -> tuple[str, int]:
    """Start the slow pipeline and wait until it has read records; its run id and pid."""
    run_id = http.post("/api/pipelines/slow/start").json()["id"]

    def reading() -> bool:
        run = http.get(f"/api/runs/{run_id}").json()
        assert run["status"] in ("starting", "running"), run
        return bool(run["records_in"] > 0)

    wait_for(reading, timeout=60)
    lines = http.get(f"/api/runs/{run_id}/logs").json()["lines"]
    pid = next(int(m[1]) for x in lines if (m := re.match(r"process (\d+) started", x["text"])))
    return run_id, pid


def ended(process: psutil.Process) -> bool:
    """The process has exited (an orphan may stay a zombie until its new parent reaps it)."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def last_run(folder: Path, name: str) -> dict[str, object]:
    store = open_state_store(None, folder)
    try:
        return store.history.runs(name, limit=1)[0]
    finally:
        store.close()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_ends_the_server_without_leaked_semaphores(
    tmp_path: Path, sig: signal.Signals
) -> None:
    """Finished runs and one active run; after the signal, everything the server started
    has exited (the pipe is read to its end) and nobody warned about leaked semaphores
    (the resource tracker prints that when it outlives semaphores nobody unlinked)."""
    folder = tmp_path / "pipelines"
    folder.mkdir()
    (folder / "demo.yaml").write_text(demo_pipeline(count=500, rate=5000), encoding="utf-8")
    (folder / "slow.yaml").write_text(SLOW, encoding="utf-8")
    process, http = start_server(folder)
    try:
        for _ in range(3):
            assert run_to_end(http, "demo")["status"] == "succeeded"
        run_id, _pid = running_slow(http)
    finally:
        http.close()
        process.send_signal(sig)
        output = process.communicate(timeout=120)[0]
    assert "leaked semaphore" not in output, output
    assert "resource_tracker" not in output, output
    stopped = last_run(folder, "slow")
    assert (stopped["id"], stopped["status"]) == (run_id, "stopped")


@pytest.mark.slow
def test_a_run_stops_itself_when_its_server_is_killed(tmp_path: Path) -> None:
    """kill -9 of the server: its run process notices (its stop pipe ends), drains,
    checkpoints and exits, long before its source would have ended."""
    folder = tmp_path / "pipelines"
    folder.mkdir()
    (folder / "slow.yaml").write_text(SLOW, encoding="utf-8")
    process, http = start_server(folder)
    try:
        run_id, pid = running_slow(http)
        child = psutil.Process(pid)
    finally:
        http.close()
        process.kill()
        output = process.communicate(timeout=120)[0]  # the run's end closes the pipe too
    assert ended(child), output
    stopped = last_run(folder, "slow")
    assert (stopped["id"], stopped["status"]) == (run_id, "stopped"), output
    counts = stopped["counts"]
    assert isinstance(counts, dict) and 0 < counts["generate"]["out"] < 2_000_000

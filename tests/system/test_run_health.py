"""`tideflow run` in production: /healthz and /readyz over real HTTP, JSON log lines, and
SIGTERM ending with a final checkpoint (also through the `--workers` supervisor).

Every run here is a real `tideflow` process; the endpoints are asked with real requests."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import polars as pl
import psutil
from tests.faults.private_postgres import PrivatePostgres
from tests.service.conftest import free_port
from tests.system.helpers import EXAMPLES, cli

from tideflow.state.locate import open_state_store

COUNT = 600
STOP_BOUND = 120
"""A safety bound for a stop (the measured stop takes about a second; see docs/deploy.md)."""
LOG_KEYS = {"time", "level", "pipeline", "worker", "step", "message"}


class Process:
    """A `tideflow` process whose stderr lines are collected on a thread."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tideflow", *args],
            cwd=cwd,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.out: list[str] = []
        self._threads = [
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.lines), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.out), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @staticmethod
    def _pump(stream: Any, into: list[str]) -> None:
        for line in stream:
            into.append(line)

    def stop(self, signum: int = signal.SIGTERM) -> int:
        """Send ``signum``; the exit code (a hang fails after STOP_BOUND seconds)."""
        self.proc.send_signal(signum)
        code = self.proc.wait(timeout=STOP_BOUND)
        for thread in self._threads:
            thread.join(10)
        return code

    def kill(self) -> None:
        """End the process and its children, if still running (test clean-up)."""
        if self.proc.poll() is None:
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                child.kill()
            self.proc.kill()
            self.proc.wait(30)

    def json_lines(self) -> list[dict[str, Any]]:
        """Every stderr line, each parsed as one JSON object (fails on any other line)."""
        parsed = []
        for line in self.lines:
            record = orjson.loads(line)
            assert isinstance(record, dict), line
            assert record.keys() >= LOG_KEYS, line
            parsed.append(record)
        return parsed

    def text(self) -> str:
        """What the process wrote so far, for failure messages."""
        return "".join(self.out + self.lines)


def wait_until(check: Callable[[], bool], what: str, proc: Process, timeout: float = 120) -> None:
    """Poll ``check`` until true; fail with the process's output if it exits or time runs out."""
    deadline = time.monotonic() + timeout
    while not check():
        if proc.proc.poll() is not None:
            raise AssertionError(f"the run ended before {what}:\n{proc.text()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n{proc.text()}")
        time.sleep(0.1)


def get(port: int, path: str) -> httpx.Response | None:
    """GET a run's endpoint; None while nothing listens."""
    try:
        return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=10)
    except httpx.TransportError:
        return None


def status(port: int, path: str) -> int | None:
    """The status code of GET ``path``; None while nothing listens."""
    response = get(port, path)
    return None if response is None else response.status_code


def records_out(port: int, step: str) -> float:
    """``tideflow_records_total`` of ``step``'s output, from the run's /metrics."""
    response = get(port, "/metrics")
    if response is None:
        return 0.0
    for line in response.text.splitlines():
        counted = line.startswith("tideflow_records_total{") and 'outcome="out"' in line
        if counted and f'step="{step}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def rooms(folder: Path) -> Path:
    """The rooms example with COUNT counts published to its embedded topic; the folder."""
    folder.mkdir()
    for name in ("publish.yaml", "reckoning.yaml"):
        (folder / name).write_text((EXAMPLES / "rooms" / name).read_text(), encoding="utf-8")
    published = cli("run", "publish.yaml", "-q", cwd=folder, env={"COUNT": str(COUNT)})
    assert published.returncode == 0, published.stderr
    return folder


def oracle(folder: Path) -> pl.DataFrame:
    """The totals per room, computed in one batch from the generator's records."""
    from tideflow import Pipeline, collect, generate
    from tideflow.connectors.memory import clear
    from tideflow.testing import collected

    spec = Pipeline.from_yaml(EXAMPLES / "rooms" / "publish.yaml").build()
    settings = spec.all_sources[0].model_dump(exclude={"name", "type", "input"}, exclude_none=True)
    settings["count"] = COUNT
    clear("health-oracle")
    # Its own folder: a run keeps a checkpoint beside it, and would resume after the end.
    Pipeline("health-oracle").source(generate(**settings)).sink(collect("health-oracle")).run(
        folder
    )
    records = collected("health-oracle")
    clear("health-oracle")
    return records.group_by("room").agg(pl.col("count").sum().alias("people")).sort("room")


def stored_positions(folder: Path) -> dict[str, int]:
    """Partition -> next offset, as the group's checkpoints stored them (a claimed partition
    has none until its first checkpoint)."""
    store = open_state_store(None, folder)
    try:
        states = store.partition_states("rooms-reckoning")
        return {part: int(pos) for _, part, _, _, pos in states if pos is not None}
    finally:
        store.close()


# Only the final checkpoint may commit anything: the intervals are never reached.
NO_CHECKPOINTS = ["--set", "checkpoint.every_records=100000000"]
NO_CHECKPOINTS += ["--set", "checkpoint.every_seconds=100000"]


def test_group_worker_reports_health_and_readiness_and_checkpoints_on_sigterm(
    tmp_path: Path,
) -> None:
    folder = rooms(tmp_path / "rooms")
    port = free_port()
    env = {"STOP_AT_END": "false", "DB_URL": "sqlite:///totals.db"}
    args = ["run", "reckoning.yaml", "--worker-id", "w0", "--metrics-port", str(port)]
    run = Process([*args, "--log-format", "json", *NO_CHECKPOINTS], folder, env)
    try:
        wait_until(lambda: status(port, "/readyz") == 200, "readiness", run)
        ready = get(port, "/readyz")
        assert ready is not None
        body = ready.json()
        # The only worker of the group owns all three partitions, their state restored.
        assert body["status"] == "ok" and body["worker"] == "w0", body
        assert len(body["partitions"]) == 3 and all(body["sources"].values()), body
        alive = get(port, "/healthz")
        assert alive is not None and alive.status_code == 200, alive
        assert alive.json()["connected"] == {"topic": True, "sql": True}
        wait_until(lambda: records_out(port, "topic") >= COUNT, "every count read", run)
        assert stored_positions(folder) == {}, "no checkpoint may have been taken yet"
        assert run.stop() == 0, run.text()
    finally:
        run.kill()
    lines = run.json_lines()
    assert all(r["pipeline"] == "rooms-reckoning" and r["worker"] == "w0" for r in lines)
    messages = [r["message"] for r in lines]
    assert any("took partitions" in m for m in messages), messages
    assert any(m.startswith("stopped: final checkpoint") for m in messages), messages
    summary = next(r for r in lines if r["message"].startswith("run stopped"))
    assert summary["summary"]["counts"]["topic"]["out"] == COUNT
    # The final checkpoint covers every count read: the partitions' next offsets add up.
    assert sum(stored_positions(folder).values()) == COUNT

    # A restart reads nothing again, and the totals are exact.
    again = cli(
        "run",
        "reckoning.yaml",
        "--worker-id",
        "w0",
        "--json",
        cwd=folder,
        env={**env, "STOP_AT_END": "true"},
    )
    assert again.returncode == 0, again.stderr
    assert orjson.loads(again.stdout)["counts"]["topic"]["out"] == 0
    with sqlite3.connect(folder / "totals.db") as conn:
        rows = conn.execute("SELECT room, people FROM room_totals").fetchall()
    totals = pl.DataFrame(rows, schema=["room", "people"], orient="row").sort("room")
    assert totals.equals(oracle(tmp_path / "oracle").cast(totals.schema)), totals


def test_supervisor_forwards_sigterm_and_every_worker_takes_a_final_checkpoint(
    tmp_path: Path,
) -> None:
    folder = rooms(tmp_path / "rooms")
    env = {"STOP_AT_END": "false", "DB_URL": "sqlite:///totals.db"}
    args = ["run", "reckoning.yaml", "--workers", "2", "--log-format", "json", *NO_CHECKPOINTS]
    run = Process(args, folder, env)
    try:
        # Both workers hold partitions (claims are stored when taken, before any checkpoint).
        def owners() -> set[str]:
            store = open_state_store(None, folder)
            try:
                return {owner for _, _, owner, _, _ in store.partition_states("rooms-reckoning")}
            finally:
                store.close()

        wait_until(lambda: len(owners()) == 2, "both workers to own partitions", run)
        assert run.stop() == 0, run.text()
    finally:
        run.kill()
    lines = run.json_lines()
    finals = [r for r in lines if r["message"].startswith("stopped: final checkpoint")]
    # Every worker that holds partitions now took a final checkpoint. (A worker that stopped
    # first may have handed its partitions to one still stopping: it checkpointed too.)
    assert owners() <= {r["worker"] for r in finals}, run.text()
    # What the workers read (their summaries) is exactly what their final checkpoints cover.
    read = sum(
        r["summary"]["counts"]["topic"]["out"] for r in lines if r["message"].startswith("run ")
    )
    assert sum(stored_positions(folder).values()) == read


SECRET = "tok-9f8e7d6c5b4a"
OUTAGE_PIPELINE = """
name: outage-health
source: {type: topic, topic: events, group: g, stop_at_end: false, batch_size: 50}
steps:
  - {type: python, name: pace, function: "pace.py:pace", mode: batch,
     kwargs: {token: "${API_TOKEN}"}}
sink: {type: sql, name: store, url: "URL", table: events, mode: append}
checkpoint: {every_records: 100}
"""
PACE = """
import logging
import time

def pace(batch, token):
    logging.getLogger("tideflow.outage-health.pace").warning("calling with %s", token)
    time.sleep(0.05)
    return batch
"""


def test_healthz_reports_a_sink_outage_and_json_logs_name_the_step_and_hide_secrets(
    tmp_path: Path, private_postgres: PrivatePostgres
) -> None:
    (tmp_path / "p.yaml").write_text(OUTAGE_PIPELINE.replace("URL", private_postgres.url))
    (tmp_path / "pace.py").write_text(PACE)
    values = [f'--value={{"n": {i}}}' for i in range(3000)]
    produced = cli("topics", "produce", "events", *values, cwd=tmp_path)
    assert produced.returncode == 0, produced.stderr
    port = free_port()
    env = {"API_TOKEN": SECRET}
    run = Process(
        ["run", "p.yaml", "--health-port", str(port), "--log-format", "json"], tmp_path, env
    )
    try:
        wait_until(lambda: status(port, "/healthz") == 200, "health", run)
        private_postgres.stop()
        wait_until(lambda: status(port, "/healthz") == 503, "the outage to show", run)
        down = get(port, "/healthz")
        assert down is not None
        assert down.json()["connected"]["store"] is False
        assert "store: retrying through an outage" in down.json()["problems"]
        private_postgres.start()
        wait_until(lambda: status(port, "/healthz") == 200, "the recovery to show", run)
        assert run.stop() == 0, run.text()
    finally:
        run.kill()
    lines = run.json_lines()
    retry = [r for r in lines if "retrying with backoff" in r["message"]]
    assert retry and retry[0]["step"] == "store" and retry[0]["level"] == "warning", lines
    assert any(r["step"] == "pace" and "calling with ***" in r["message"] for r in lines)
    assert SECRET not in run.text()


def test_json_logs_report_a_configuration_error_as_one_object(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("name: bad\nsource: {type: generate, count: -1}\n")
    result = cli("run", "bad.yaml", "--log-format", "json", cwd=tmp_path)
    assert result.returncode == 2
    lines = [orjson.loads(line) for line in result.stderr.splitlines()]
    assert len(lines) == 1 and lines[0]["level"] == "error", result.stderr
    assert "invalid configuration" in lines[0]["message"] and "bad.yaml" in lines[0]["message"]

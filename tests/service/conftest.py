"""Fixtures for the service tests: pipeline folders, an in-process client, a real server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("fastapi")

LOCAL = "http://127.0.0.1"
"""The base URL of in-process test clients: the server answers only to its own names, so
TestClient's default `testserver` would be refused like any foreign Host."""

DEMO = """
name: demo
description: numbered records, every tenth one fails its cast
source:
  type: generate
  shape: sequence
  count: {count}
  rate: {rate}
  batch_size: 100
steps:
  - type: with_columns
    name: label
    columns:
      code: "CASE WHEN id % 10 = 0 THEN 'bad' ELSE CAST(id AS VARCHAR) END"
  - type: cast
    name: typed
    columns: {{code: int}}
sink:
  type: file
  path: out/demo
  format: ndjson
checkpoint:
  every_records: 1000
"""


def demo_pipeline(count: int = 3000, rate: float = 3000) -> str:
    """A pipeline that produces dead letters, slowly enough to watch."""
    return textwrap.dedent(DEMO.format(count=count, rate=rate)).lstrip()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A pipelines folder holding `demo.yaml`."""
    path = tmp_path / "pipelines"
    path.mkdir()
    (path / "demo.yaml").write_text(demo_pipeline(), encoding="utf-8")
    return path


def wait_for(check: Callable[[], bool], timeout: float = 30.0, every: float = 0.2) -> None:
    """Poll until ``check()`` is true, or fail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(every)
    raise AssertionError(f"condition not met within {timeout}s")


def run_to_end(client: Any, pid: str, timeout: float = 60) -> dict[str, Any]:
    """Start a run of pipeline ``pid`` through the API and wait for its end; its summary."""
    started = client.post(f"/api/pipelines/{pid}/start")
    assert started.status_code == 201, started.text
    run_id = started.json()["id"]
    result: dict[str, Any] = {}

    def ended() -> bool:
        result.update(client.get(f"/api/runs/{run_id}").json())
        return result["status"] not in ("starting", "running", "stopping")

    wait_for(ended, timeout=timeout)
    return result


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """`tideflow serve` in a subprocess, as a user starts it."""

    def __init__(self, folder: Path, *extra: str, token: str | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
        env.pop("TIDEFLOW_TOKEN", None)
        if token:
            env["TIDEFLOW_TOKEN"] = token
        self.log = folder.parent / "server.log"
        self._log_file = self.log.open("w")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tideflow.cli.main",
                "serve",
                "--folder",
                str(folder),
                "--port",
                str(self.port),
                *extra,
            ],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
        )
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=10)

        def up() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited: {self.log.read_text()}")
            try:
                return self.http.get("/api/health").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up, timeout=30)

    def close(self) -> None:
        """Stop the server (SIGTERM, as a service manager would)."""
        self.http.close()
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._log_file.close()


@pytest.fixture
def server(folder: Path) -> Iterator[Server]:
    """A real server on loopback for the `folder` pipelines."""
    srv = Server(folder)
    yield srv
    srv.close()

"""A private InfluxDB 1.x (Debian's ``influxdb`` package) on a free loopback port, and a
2.x-style ``/api/v2/write`` front end for it.

The front end checks what the 2.x API requires (token, org, bucket, precision) and passes
the body to the real server's ``/write``, so the line protocol is always parsed by InfluxDB
itself. InfluxDB 1.6 (Debian's) predates the 2.x compatibility endpoint.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

TOKEN = "tf-influx-token-123"


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Influx:
    """A running InfluxDB 1.x and helpers to query it."""

    url: str
    v2_url: str = ""
    v2_requests: list[dict[str, str]] = field(default_factory=list)
    fail_next: int = 0
    """The 2.x front end answers this many requests with 503 (an overloaded server)."""

    def query(self, q: str, db: str | None = None) -> Any:
        """Run InfluxQL; the parsed JSON."""
        params = {"q": q, "epoch": "ns", **({"db": db} if db else {})}
        data = urllib.parse.urlencode(params).encode()
        with urllib.request.urlopen(f"{self.url}/query", data=data, timeout=10) as response:
            return json.loads(response.read())

    def points(self, db: str, measurement: str) -> list[dict[str, Any]]:
        """Every point of ``measurement`` as dicts (time in ns)."""
        result = self.query(f'SELECT * FROM "{measurement}" ORDER BY time', db)["results"][0]
        if "series" not in result:
            return []
        series = result["series"][0]
        return [dict(zip(series["columns"], row, strict=True)) for row in series["values"]]


@pytest.fixture(scope="session")
def influx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Influx]:
    """influxd on a free port with its data in a temporary folder."""
    binary = shutil.which("influxd")
    if binary is None:
        message = "influxd is not installed (apt-get install influxdb)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    root: Path = tmp_path_factory.mktemp("influx")
    port, rpc = free_port(), free_port()
    config = root / "influxdb.conf"
    config.write_text(
        f"""
reporting-disabled = true
bind-address = "127.0.0.1:{rpc}"
[meta]
  dir = "{root}/meta"
[data]
  dir = "{root}/data"
  wal-dir = "{root}/wal"
  query-log-enabled = false
[http]
  bind-address = "127.0.0.1:{port}"
  log-enabled = false
[monitor]
  store-enabled = false
""",
        encoding="utf-8",
    )
    log = (root / "influxd.log").open("wb")
    proc = subprocess.Popen([binary, "-config", str(config)], stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{url}/ping", timeout=1).close()
            break
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail(f"influxd did not start: {(root / 'influxd.log').read_text()[-2000:]}")
            time.sleep(0.2)
    server = Influx(url)
    front = _start_v2_front(server)
    try:
        yield server
    finally:
        front.shutdown()
        proc.terminate()
        proc.wait(10)
        log.close()


def _start_v2_front(influx: Influx) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            parts = urllib.parse.urlsplit(self.path)
            params = dict(urllib.parse.parse_qsl(parts.query))
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            influx.v2_requests.append(params)
            if influx.fail_next > 0:
                influx.fail_next -= 1
                return self._reply(503, {"code": "unavailable", "message": "overloaded"})
            if parts.path != "/api/v2/write":
                return self._reply(404, {"code": "not found", "message": "path not found"})
            if self.headers.get("Authorization") != f"Token {TOKEN}":
                return self._reply(401, {"code": "unauthorized", "message": "unauthorized access"})
            if not params.get("org") or not params.get("bucket"):
                return self._reply(400, {"code": "invalid", "message": "org and bucket needed"})
            precision = {"ns": "n", "us": "u", "ms": "ms", "s": "s"}[params.get("precision", "ns")]
            query = urllib.parse.urlencode({"db": params["bucket"], "precision": precision})
            request = urllib.request.Request(f"{influx.url}/write?{query}", data=body)
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    self._reply(response.status, None)
            except urllib.error.HTTPError as exc:
                self._reply(exc.code, {"code": "invalid", "message": exc.read().decode()})

        def _reply(self, status: int, payload: Any) -> None:
            data = json.dumps(payload).encode() if payload is not None else b""
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    influx.v2_url = f"http://127.0.0.1:{server.server_address[1]}"
    return server

"""Health endpoints of one ``tideflow run``: ``/healthz``, ``/readyz`` and ``/metrics``.

``/healthz`` (liveness) answers 200 while the run works: its sources and sinks are open
(connected), none of them is retrying through an outage, and the engine's main loop turned
within :data:`STALL_SECONDS`. It answers 503 while the run is still connecting, once it has
failed or ended, during an outage, and when the loop is stuck.

``/readyz`` (readiness) answers 200 once the run is fully at work: the checkpoint is restored
and every source reads its share, which for a consumer group member means the group has
assigned it its partitions and their step state is restored from the shared state store. It
answers 503 before that, during a rebalance, and from the moment the run is asked to stop.

Both return a small JSON body that says why. Nothing secret is in them: names, phases,
partitions and counts. ``/metrics`` is the Prometheus text exposition when the run has
metrics (``--metrics-port``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import orjson

from tideflow.core.status import RunStatus

STALL_SECONDS = 120.0
"""A main loop that has not turned for this long is reported as stuck by ``/healthz``.

The loop turns ten times a second while idle; it is held only while one batch goes through
the steps and sinks, or a sink retries through an outage (reported as such)."""

JSON_TYPE = "application/json"


class RunHealth:
    """Liveness and readiness of the engine a run is given (none yet: starting)."""

    def __init__(
        self, pipeline: str, worker: str | None = None, stall_seconds: float = STALL_SECONDS
    ) -> None:
        self.pipeline = pipeline
        self.worker = worker
        self.stall_seconds = stall_seconds
        self.engine: RunStatus | None = None

    def attach(self, engine: RunStatus) -> None:
        """Report on ``engine`` from now on (the ``on_start`` hook of its observer)."""
        self.engine = engine

    def _body(self, phase: str) -> dict[str, Any]:
        return {"pipeline": self.pipeline, "worker": self.worker, "phase": phase}

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        """(alive, details) for ``/healthz``."""
        engine = self.engine
        if engine is None:
            body = self._body("starting")
            return self._verdict(body, ["the run is starting"])
        phase = engine.phase
        body = self._body(phase)
        problems = []
        if phase in ("created", "opening"):
            problems.append("connecting sources and sinks and restoring the checkpoint")
        elif phase == "failed":
            problems.append("the run failed")
        elif phase == "ended":
            problems.append("the run ended")
        else:
            quiet = time.monotonic() - engine.last_turn
            body["loop_seconds_ago"] = round(quiet, 3)
            if quiet > self.stall_seconds:
                problems.append(f"the main loop has not turned for {quiet:.0f} s")
        nodes = engine.graph.sources + engine.graph.sinks
        outages = [n.name for n in nodes if n.counts.metrics.get("in_outage", 0.0) >= 1.0]
        body["connected"] = {n.name: n.name not in outages for n in nodes}
        problems += [f"{name}: retrying through an outage" for name in outages]
        return self._verdict(body, problems)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """(ready, details) for ``/readyz``."""
        engine = self.engine
        if engine is None:
            return self._verdict(self._body("starting"), ["the run is starting"])
        phase = engine.phase
        body = self._body(phase)
        problems = [] if phase == "running" else [f"the run is {phase}"]
        if phase == "running":
            sources = {n.name: _ready(n.component) for n in engine.graph.sources}
            body["sources"] = sources
            waiting = [name for name, ok in sources.items() if not ok]
            problems += [f"source {name} waits for its partitions" for name in waiting]
            if engine.worker is not None:
                body["partitions"] = engine.owned_partitions()
        return self._verdict(body, problems)

    @staticmethod
    def _verdict(body: dict[str, Any], problems: list[str]) -> tuple[bool, dict[str, Any]]:
        body["status"] = "ok" if not problems else "unavailable"
        if problems:
            body["problems"] = problems
        return not problems, body


def _ready(component: Any) -> bool:
    try:
        return bool(component.ready())
    except Exception:  # noqa: BLE001 - a source that cannot tell is not ready
        return False


class RunEndpoints:
    """An HTTP server on ``host:port`` for ``/healthz``, ``/readyz`` and, given a renderer,
    ``/metrics``; it serves from a daemon thread until :meth:`close`."""

    def __init__(
        self,
        host: str,
        port: int,
        health: RunHealth,
        metrics: Callable[[], bytes] | None = None,
        metrics_type: str = "text/plain; version=0.0.4; charset=utf-8",
    ) -> None:
        # Imported here: http.server pulls in http.client, ssl and email (about 20 ms), and
        # most runs serve no endpoints.
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        routes: dict[str, Callable[[], tuple[int, str, bytes]]] = {
            "/healthz": lambda: _json(*health.liveness()),
            "/readyz": lambda: _json(*health.readiness()),
        }
        if metrics is not None:
            render = metrics
            routes["/metrics"] = lambda: (200, metrics_type, render())

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                route = routes.get(self.path.split("?", 1)[0])
                if route is None:
                    code, kind, payload = 404, JSON_TYPE, b'{"status":"not found"}'
                else:
                    code, kind, payload = route()
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                """Requests are not logged: probes would flood the log."""

        # OSError (port taken, address not local) is the caller's to report.
        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(
            target=self.server.serve_forever, name=f"http-{port}", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


def _json(ok: bool, body: dict[str, Any]) -> tuple[int, str, bytes]:
    return (200 if ok else 503), JSON_TYPE, orjson.dumps(body)

"""``tideflow run --workers N``: N worker processes of one consumer group, supervised.

Each worker is ``tideflow run PIPELINE --worker-id ID``: it reads its share of the topic's
partitions and keeps their step state in the shared state store (see
:mod:`tideflow.core.partitions`). Ids are stable slots (``HOST-0`` ... ``HOST-N-1``), so a
worker that dies is restarted under the same id and finishes the commit its last checkpoint
left to do. Workers started the same way on other machines join the same group (they share
Kafka and a PostgreSQL state store).

The supervisor restarts a worker that fails or is killed (with a growing pause, so a worker
that cannot start does not spin), forwards SIGINT/SIGTERM to all of them, and ends when every
worker has ended on its own (bounded sources) or after a stop. With a metrics port P it serves
its own metrics there (``tideflow_worker_restarts_total``, ``tideflow_workers_running``) and
gives worker ``i`` the port ``P + 1 + i`` for the run's metrics.
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

log = logging.getLogger("tideflow.workers")

RESTART_PAUSE = (1.0, 30.0)
"""First and longest pause before restarting a failed worker (doubling in between)."""

EXIT_CONFIG = 2
EXIT_INCOMPLETE = 3


@dataclass
class Slot:
    """One worker id and its current process."""

    worker_id: str
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    pause: float = RESTART_PAUSE[0]
    restart_at: float | None = None
    started_at: float = 0.0
    exit_code: int | None = None
    history: list[int] = field(default_factory=list)


def default_prefix() -> str:
    """Worker ids of this machine: ``HOST-0``, ``HOST-1``, ..."""
    return socket.gethostname()


class Supervisor:
    """Runs and restarts the worker processes of one pipeline on this machine."""

    def __init__(
        self,
        pipeline: str,
        workers: int,
        args: list[str],
        prefix: str,
        verbose: int = 0,
        metrics_port: int | None = None,
        name: str | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.name = name or pipeline
        self.args = args
        self.verbose = verbose
        self.slots = [Slot(f"{prefix}-{i}") for i in range(workers)]
        self.stopping = False
        self.metrics_port = metrics_port
        self.metrics: Any = None

    def serve_metrics(self, host: str = "127.0.0.1") -> None:
        """Serve the supervisor's metrics on ``metrics_port`` at ``host`` (needs
        prometheus_client)."""
        from prometheus_client import start_http_server

        from tideflow.observe.metrics import PipelineMetrics

        assert self.metrics_port is not None
        self.metrics = PipelineMetrics()
        start_http_server(self.metrics_port, addr=host, registry=self.metrics.registry)
        self.metrics.workers_running.labels(self.name).set(0)
        for slot in self.slots:
            # Present at 0 from the start, so increase() sees the first restart.
            self.metrics.worker_restarts.labels(self.name, slot.worker_id)

    def _command(self, slot: Slot) -> list[str]:
        port = []
        if self.metrics_port is not None:
            port = ["--metrics-port", str(self.metrics_port + 1 + self.slots.index(slot))]
        return [
            sys.executable,
            "-m",
            "tideflow",
            *(["-" + "v" * self.verbose] if self.verbose else []),
            "run",
            self.pipeline,
            "--worker-id",
            slot.worker_id,
            *port,
            *self.args,
        ]

    def _start(self, slot: Slot) -> None:
        slot.process = subprocess.Popen(self._command(slot))
        slot.restart_at = None
        slot.started_at = time.monotonic()
        log.info("worker %s started (pid %d)", slot.worker_id, slot.process.pid)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping:
            for slot in self.slots:
                if slot.process is not None and slot.process.poll() is None:
                    slot.process.kill()
            return
        self.stopping = True
        for slot in self.slots:
            if slot.process is not None and slot.process.poll() is None:
                slot.process.send_signal(signal.SIGTERM)

    def run(self) -> int:
        """Run until every worker ended; the exit code is 0 when all ended cleanly."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            for slot in self.slots:
                self._start(slot)
            # Every slot is looked after on every turn (no short-circuit).
            while any([self._alive(slot) for slot in self.slots]):
                if self.metrics is not None:
                    running = sum(s.process is not None for s in self.slots)
                    self.metrics.workers_running.labels(self.name).set(running)
                time.sleep(0.2)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        codes = [slot.exit_code or 0 for slot in self.slots]
        return max(codes)

    def _alive(self, slot: Slot) -> bool:
        """Look after one slot; False once it has ended for good."""
        if slot.process is None:
            if slot.restart_at is None:
                return False
            if self.stopping:
                slot.restart_at = None
                return False
            if time.monotonic() >= slot.restart_at:
                self._start(slot)
            return True
        code = slot.process.poll()
        if code is None:
            return True
        slot.process = None
        slot.exit_code = code
        slot.history.append(code)
        if code in (0, EXIT_CONFIG, EXIT_INCOMPLETE) or self.stopping:
            # Ended on its own (a bounded run: done, or its max_wait ran out), or a
            # configuration error that a restart cannot fix.
            return False
        slot.restarts += 1
        if self.metrics is not None:
            self.metrics.worker_restarts.labels(self.name, slot.worker_id).inc()
        if time.monotonic() - slot.started_at > 60:
            slot.pause = RESTART_PAUSE[0]  # it had been working: a fresh failure
        slot.restart_at = time.monotonic() + slot.pause
        log.warning(
            "worker %s exited with %d; restarting in %.0f s", slot.worker_id, code, slot.pause
        )
        slot.pause = min(slot.pause * 2, RESTART_PAUSE[1])
        return True

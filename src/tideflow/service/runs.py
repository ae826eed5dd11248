"""Start, stop and watch runs, each in its own process.

A reader thread per run turns the child's events into the run's live state (counts,
throughput, taps, logs) and into metrics. When the child ends without saying how (it
crashed, ran out of memory, was killed), the run is marked ``crashed`` here and in the
state store, and the server carries on.

Server and child talk over two one-way pipes and nothing else: events flow up one; the
other is the stop signal, which the child reads as "stop" when the server closes it *or
dies*. No multiprocessing ``Queue`` or ``Event``: those are named POSIX semaphores, which
outlive a server ended by a signal (uvicorn re-raises SIGTERM after its graceful shutdown,
so no ``atexit`` hook runs) and made the resource tracker warn about leaked semaphores.
A pipe is a file descriptor: the kernel closes it with its process, whatever ends it.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tideflow.errors import PipelineError
from tideflow.observe.metrics import PipelineMetrics
from tideflow.secrets import redact
from tideflow.service.catalog import Catalog, Conflict, Entry, NotFound
from tideflow.service.worker import worker_main
from tideflow.state.locate import open_state_store, state_location, state_path
from tideflow.state.store import StateStore

log = logging.getLogger("tideflow.service")
ACTIVE = ("starting", "running", "stopping")
"""Statuses of a run whose process is alive."""
MAX_LOG_LINES = 5000
"""Log lines kept per run."""
MAX_RUNS_KEPT = 200
"""Finished runs kept in memory (older ones remain in the state store)."""
LATENCY_KEPT = 500
"""Latest end-to-end latencies kept per source for the run's percentiles."""


def _quantile(values: list[float], q: float) -> float:
    """The nearest-rank ``q`` quantile of sorted ``values``."""
    return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]


@dataclass
class Run:
    """One run as the server sees it."""

    id: str
    pipeline: str
    name: str
    kind: str
    trigger: str
    started_at: float
    status: str = "starting"
    ended_at: float | None = None
    error: str | None = None
    counts: dict[str, dict[str, Any]] = field(default_factory=dict)
    elapsed: float = 0.0
    rate: float = 0.0
    logs: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_LOG_LINES))
    log_seq: int = 0
    taps: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    matches: dict[str, float] = field(default_factory=dict)
    """Per `matching_records` alert: records that matched its condition so far."""
    end_to_end: dict[str, deque[float]] = field(default_factory=dict)
    """Per source: the latest end-to-end latencies (seconds), one per batch made visible."""
    visible_batches: dict[str, int] = field(default_factory=dict)
    """Per source: batches made visible so far (all of them, not only those kept)."""
    process: Any = None
    stop_channel: Any = None
    """The server's end of the stop pipe (closing it asks the run to stop)."""
    final_status: str | None = None
    state_file: Path | None = None
    """The SQLite state store of the run (None for PostgreSQL), measured for metrics."""
    _last_sample: tuple[float, float] = (0.0, 0.0)
    _stop_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def records_in(self) -> int:
        """Records read by all sources so far."""
        return sum(
            int(c.get("out", 0)) + int(c.get("dead_lettered", 0))
            for c in self.counts.values()
            if c.get("kind") == "source"
        )

    @property
    def dead_lettered(self) -> int:
        """Records dead-lettered anywhere in the pipeline so far."""
        return sum(int(c.get("dead_lettered", 0)) for c in self.counts.values())

    def summary(self) -> dict[str, Any]:
        """The run as JSON, without logs and taps."""
        return {
            "id": self.id,
            "pipeline": self.pipeline,
            "name": self.name,
            "kind": self.kind,
            "trigger": self.trigger,
            "status": self.status,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "elapsed": round(self.elapsed, 3),
            "records_in": self.records_in,
            "dead_lettered": self.dead_lettered,
            "rate": round(self.rate, 1),
            "error": self.error,
            "counts": self.counts,
            "end_to_end": self.latency_summary(),
            "state_bytes": self.state_sizes(),
            "lag": self.lags(),
        }

    def latency_summary(self) -> dict[str, dict[str, float]]:
        """Per source: end-to-end latency of the latest batches (last, p50, p95, max, in
        seconds) and how many batches have become visible."""
        summary = {}
        for source, kept in list(self.end_to_end.items()):
            values = sorted(kept)
            if not values:
                continue
            summary[source] = {
                "batches": self.visible_batches.get(source, len(values)),
                "last": round(kept[-1], 3),
                "p50": round(_quantile(values, 0.5), 3),
                "p95": round(_quantile(values, 0.95), 3),
                "max": round(values[-1], 3),
            }
        return summary

    def state_sizes(self) -> dict[str, int]:
        """Per stateful step: its state's encoded size at the latest checkpoint (bytes)."""
        return {
            step: int(node["report"]["state_bytes"])
            for step, node in self.counts.items()
            if isinstance(node.get("report"), dict) and "state_bytes" in node["report"]
        }

    def lags(self) -> dict[str, dict[str, float]]:
        """Per source that reports it: how far behind it is (``records``, ``seconds``)."""
        found: dict[str, dict[str, float]] = {}
        for name, node in self.counts.items():
            report = node.get("report")
            if node.get("kind") != "source" or not isinstance(report, dict):
                continue
            lag = {k: report[k] for k in ("lag_records", "lag_seconds") if k in report}
            if lag:
                found[name] = {k.removeprefix("lag_"): float(v) for k, v in lag.items()}
        return found

    def request_stop(self) -> None:
        """Ask the run's process to drain, checkpoint and end: close the stop pipe (once,
        whichever thread asks: a second close could hit a descriptor number reused since)."""
        with self._stop_lock:
            channel, self.stop_channel = self.stop_channel, None
        if channel is not None:
            channel.close()

    def add_log(self, at: float, level: str, text: str) -> None:
        """Append a log line, numbered so clients can ask for what is new."""
        self.log_seq += 1
        self.logs.append({"seq": self.log_seq, "at": at, "level": level, "text": redact(text)})


class RunManager:
    """Every run the server started; at most one active run per pipeline."""

    def __init__(
        self,
        catalog: Catalog,
        metrics: PipelineMetrics,
        on_event: Callable[[Run], None] | None = None,
    ) -> None:
        self.catalog = catalog
        self.metrics = metrics
        self.on_event = on_event
        self._runs: dict[str, Run] = {}
        self._lock = threading.Lock()
        self._mp = multiprocessing.get_context("spawn")

    # -- queries -------------------------------------------------------------------------

    def get(self, run_id: str) -> Run:
        """A run by id, or :class:`NotFound`."""
        with self._lock:
            run = self._runs.get(run_id)
        if run is None:
            raise NotFound(f"no run {run_id!r} is known to this server")
        return run

    def active(self, pid: str) -> Run | None:
        """The pipeline's active run, if any."""
        with self._lock:
            return next(
                (r for r in self._runs.values() if r.pipeline == pid and r.status in ACTIVE), None
            )

    def latest(self, pid: str) -> Run | None:
        """The pipeline's most recent run started by this server."""
        with self._lock:
            runs = [r for r in self._runs.values() if r.pipeline == pid]
        return max(runs, key=lambda r: r.started_at) if runs else None

    def runs(self, pid: str | None = None) -> list[Run]:
        """Runs started by this server, newest first."""
        with self._lock:
            runs = [r for r in self._runs.values() if pid is None or r.pipeline == pid]
        return sorted(runs, key=lambda r: r.started_at, reverse=True)

    # -- control -------------------------------------------------------------------------

    def start(
        self,
        pid: str,
        trigger: str = "api",
        kind: str = "run",
        options: dict[str, Any] | None = None,
    ) -> Run:
        """Start a run of a valid pipeline in a new process; :class:`Conflict` if one is
        active already (runs of one pipeline never overlap: they share its checkpoint)."""
        entry = self.catalog.get(pid)
        if entry.spec is None:
            first = entry.issues[0]["message"] if entry.issues else "see its issues"
            raise Conflict(f"pipeline {pid!r} is not valid; fix it before running it: {first}")
        with self._lock:
            busy = any(r.pipeline == pid and r.status in ACTIVE for r in self._runs.values())
            if busy:
                raise Conflict(f"pipeline {pid!r} is running already; stop it first")
            run = Run(
                id=uuid.uuid4().hex[:12],
                pipeline=pid,
                name=entry.name,
                kind=kind,
                trigger=trigger,
                started_at=time.time(),
            )
            self._runs[run.id] = run
            self._forget_old()
        location = state_location(entry.spec.state)
        if not (location and "://" in location):
            run.state_file = state_path(location, entry.path.parent)
        events, child_events = self._mp.Pipe(duplex=False)
        child_stop, run.stop_channel = self._mp.Pipe(duplex=False)
        run.process = self._mp.Process(
            target=worker_main,
            args=(
                str(entry.path),
                run.id,
                kind,
                options or {},
                child_events,
                child_stop,
                self.catalog.policy,
            ),
            name=f"tideflow-run-{pid}",
            daemon=True,
        )
        try:
            run.process.start()
        except Exception as exc:
            run.status, run.ended_at = "failed", time.time()
            run.error = redact(f"the run's process could not start: {exc}")
            events.close()
            run.request_stop()
            raise PipelineError(run.error) from exc
        finally:
            # The child has its own copies now. Closing ours makes the events pipe end (EOF)
            # exactly when the child does, and leaves the child the only reader of the stop
            # pipe.
            child_events.close()
            child_stop.close()
        run.add_log(time.time(), "INFO", f"process {run.process.pid} started ({trigger})")
        self.metrics.run_started(entry.name)
        threading.Thread(
            target=self._follow, args=(run, events, entry), name=f"follow-{run.id}", daemon=True
        ).start()
        return run

    def stop(self, run_id: str, grace: float = 30.0) -> Run:
        """Ask a run to drain and checkpoint; kill its process if it has not ended after
        ``grace`` seconds (in the background, so the request returns at once)."""
        run = self.get(run_id)
        if run.status not in ACTIVE:
            return run
        run.status = "stopping"
        run.request_stop()

        def enforce() -> None:
            run.process.join(grace)
            if run.process.is_alive():
                run.add_log(time.time(), "WARNING", f"no stop after {grace:.0f}s: killing")
                run.process.kill()

        threading.Thread(target=enforce, name=f"stop-{run.id}", daemon=True).start()
        return run

    def shutdown(self, grace: float = 10.0) -> None:
        """Stop every active run (the server is going down)."""
        active = [r for r in self.runs() if r.status in ACTIVE and r.process.pid is not None]
        for run in active:
            run.request_stop()
        deadline = time.monotonic() + grace
        for run in active:
            run.process.join(max(deadline - time.monotonic(), 0.1))
            if run.process.is_alive():
                run.process.kill()

    def record_missed(self, pid: str, due_at: float, reason: str) -> None:
        """Note a scheduled start that did not happen, in the pipeline's run history."""
        entry = self.catalog.get(pid)
        if entry.spec is None:
            return
        run_id = uuid.uuid4().hex[:12]
        log.warning("%s: scheduled run due at %s missed: %s", pid, time.ctime(due_at), reason)
        with self._store(entry) as store:
            store.history.record_missed(run_id, entry.spec.name, due_at, reason)

    def _store(self, entry: Entry) -> _StoreScope:
        assert entry.spec is not None
        return _StoreScope(open_state_store(entry.spec.state, entry.path.parent))

    def _forget_old(self) -> None:
        done = sorted(
            (r for r in self._runs.values() if r.status not in ACTIVE), key=lambda r: r.started_at
        )
        for run in done[: max(len(self._runs) - MAX_RUNS_KEPT, 0)]:
            del self._runs[run.id]

    # -- following a child ---------------------------------------------------------------

    def _follow(self, run: Run, events: Any, entry: Entry) -> None:
        """Apply the child's events until it says it is done or its process ends."""
        finished = False
        try:
            while not finished:
                # The pipe ends (EOFError) when the child's process does, however it ends;
                # the liveness check covers a grandchild that kept a copy of its end open.
                if not events.poll(0.25):
                    if run.process.is_alive():
                        continue
                    if not events.poll(0.5):
                        break
                finished = self._apply(run, events.recv())
        except (EOFError, OSError):
            pass  # the child ended without its final message: a crash, judged below
        finally:
            events.close()
        run.process.join(5)
        status = run.final_status
        if not finished or status is None:
            code = run.process.exitcode
            status = "crashed"
            run.error = f"the run's process ended without finishing (exit code {code})"
            run.add_log(time.time(), "ERROR", run.error)
            self._record_crash(run, entry)
        run.ended_at = time.time()
        run.rate = 0.0
        self.metrics.run_finished(run.name, status)
        run.status = status  # last, so whoever sees the end also sees its metrics
        run.request_stop()  # nothing left to stop: release the pipe
        if self.on_event is not None:
            self.on_event(run)

    def _apply(self, run: Run, event: tuple[Any, ...]) -> bool:
        kind = event[0]
        if kind == "log":
            run.add_log(event[1], event[2], event[3])
        elif kind == "progress":
            if run.status == "starting":
                run.status = "running"
            previous = run.counts
            run.elapsed, run.counts = float(event[1]), event[2]
            self.metrics.progress(run.name, previous, run.counts)
            self._measure_state(run)
            now, total = time.monotonic(), float(run.records_in)
            then, before = run._last_sample
            if then and now > then:
                run.rate = max(total - before, 0) / (now - then)
            run._last_sample = (now, total)
        elif kind == "matches":
            run.matches = dict(event[1])
        elif kind == "tap":
            # Swap in a new dict so request threads iterating the old one never see it change.
            run.taps = {**run.taps, event[1]: event[2]}
        elif kind == "batches":
            for source, _records, seconds in event[1]:
                self.metrics.batch(run.name, source, seconds)
        elif kind == "visible":
            for source, seconds in event[1]:
                self.metrics.visible(run.name, source, seconds)
                kept = run.end_to_end.get(source)
                if kept is None:
                    kept = run.end_to_end[source] = deque(maxlen=LATENCY_KEPT)
                kept.append(float(seconds))
                run.visible_batches[source] = run.visible_batches.get(source, 0) + 1
        elif kind == "checkpoints":
            for seconds in event[3]:
                self.metrics.checkpoint(run.name, float(seconds))
            self.metrics.checkpoint_status(run.name, float(event[1]), int(event[2]))
        elif kind == "done":
            previous = run.counts
            run.final_status, run.error = event[1], event[3]
            if event[2]:
                run.counts = event[2]
                self.metrics.progress(run.name, previous, run.counts)
            return True
        return False

    def _measure_state(self, run: Run) -> None:
        if run.state_file is None:
            return
        size = 0
        for suffix in ("", "-wal"):
            try:
                size += run.state_file.with_name(run.state_file.name + suffix).stat().st_size
            except OSError:
                continue
        self.metrics.state_bytes.labels(run.name).set(size)

    def _record_crash(self, run: Run, entry: Entry) -> None:
        if entry.spec is None or run.kind != "run":
            return
        try:
            with self._store(entry) as store:
                store.end_run(run.id, "crashed", run.counts, run.error)
        except Exception as exc:  # noqa: BLE001 - history is best effort; the run is over
            log.warning("could not record the crash of run %s: %s", run.id, redact(str(exc)))


class _StoreScope:
    """A state store opened for one short operation."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    def __enter__(self) -> StateStore:
        return self.store

    def __exit__(self, *exc: object) -> None:
        self.store.close()

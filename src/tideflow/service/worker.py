"""One run in its own process, reporting to the server through a queue.

The server starts :func:`worker_main` with the ``spawn`` method, so a run that crashes, leaks
memory or is killed takes nothing else down. The child sends plain tuples (never frames):
``("log", time, level, text)``, ``("progress", elapsed, counts)``, ``("tap", node, rows)``,
``("batches", [(source, records, seconds), ...])``, ``("visible", [(source, seconds), ...])``
(end-to-end latencies, at each checkpoint) and finally ``("done", status, counts, error)``.
Everything textual is redacted before it leaves the child.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import polars as pl

from tideflow.core.expressions import condition_mask
from tideflow.secrets import RedactingFilter, redact

TAP_ROWS = 20
"""Latest records kept per step for the live tap."""


class _QueueHandler(logging.Handler):
    """Forward log records to the server (already redacted by the filter)."""

    def __init__(self, events: Any) -> None:
        super().__init__(logging.INFO)
        self.events = events
        self.addFilter(RedactingFilter())

    def emit(self, record: logging.LogRecord) -> None:
        """Send one formatted line."""
        try:
            self.events.put(("log", record.created, record.levelname, self.format(record)))
        except Exception:  # noqa: BLE001 - a log line must never fail the run
            self.handleError(record)


def frame_rows(frame: pl.DataFrame, limit: int = TAP_ROWS) -> list[dict[str, Any]]:
    """The last ``limit`` rows as JSON-safe dicts, with secrets redacted."""
    rows = frame.tail(limit).to_dicts()
    text = redact(orjson.dumps(rows, default=str).decode())
    result: list[dict[str, Any]] = orjson.loads(text)
    return result


class _Reporter:
    """The observer of the run: collects taps and batch timings, sends them in bursts."""

    def __init__(self, events: Any, watches: list[tuple[str, str, pl.Expr]]) -> None:
        self.events = events
        self.watches = watches
        self.matches: dict[str, int] = {name: 0 for name, _, _ in watches}
        self.taps: dict[str, pl.DataFrame] = {}
        self.batches: list[tuple[str, int, float]] = []
        self.visible: list[tuple[str, float]] = []
        self.lock = threading.Lock()

    def on_output(self, node: str, port: str, frame: pl.DataFrame) -> None:
        """Keep the latest records of each step's output."""
        key = node if port == "out" else f"{node}.{port}"
        for name, step, condition in self.watches:
            if step == key:
                # Counted here, on every record, not on the tap's sample of the latest ones.
                self.matches[name] += int(condition_mask(frame, condition).sum())
        with self.lock:
            have = self.taps.get(key)
            if have is None or frame.height >= TAP_ROWS:
                self.taps[key] = frame.tail(TAP_ROWS)
            else:
                joined = pl.concat([have, frame], how="diagonal_relaxed")
                self.taps[key] = joined.tail(TAP_ROWS)

    def on_batch(self, source: str, records: int, seconds: float) -> None:
        """Remember one batch's latency."""
        with self.lock:
            self.batches.append((source, records, seconds))

    def on_visible(self, source: str, seconds: float) -> None:
        """Remember one batch's end-to-end latency (its checkpoint has committed)."""
        with self.lock:
            self.visible.append((source, seconds))

    def on_progress(self, engine: Any) -> None:
        """Send counts, then the taps and batch timings gathered since the last call."""
        self.events.put(("progress", engine.elapsed, engine.counts()))
        if self.watches:
            self.events.put(("matches", dict(self.matches)))
        with self.lock:
            taps, self.taps = self.taps, {}
            batches, self.batches = self.batches, []
            visible, self.visible = self.visible, []
        for key, frame in taps.items():
            self.events.put(("tap", key, frame_rows(frame)))
        if batches:
            self.events.put(("batches", batches))
        if visible:
            self.events.put(("visible", visible))


def worker_main(
    path: str,
    run_id: str,
    mode: str,
    options: dict[str, Any],
    events: Any,
    stop: Any,
) -> None:
    """Entry point of a run process: load ``path`` and run it (``mode="run"``) or replay
    dead letters (``mode="replay"``, ``options`` holding ``step`` and ``ids``)."""
    root = logging.getLogger()
    root.handlers[:] = [_QueueHandler(events)]
    root.setLevel(logging.INFO)
    counts: dict[str, Any] = {}
    try:
        from tideflow import runner
        from tideflow.core.engine import Engine, RunObserver
        from tideflow.spec.loader import load_pipeline

        spec = load_pipeline(path)
        base = Path(path).resolve().parent
        service_log = logging.getLogger("tideflow.service")
        if mode == "replay":
            ids = list(options["ids"])
            service_log.info(
                "replay %s of %s: %s dead letter(s) of step %s",
                run_id,
                spec.name,
                len(ids) or "all",
                options["step"],
            )
            result = runner.replay(spec, base, str(options["step"]), ids)
            service_log.info("replay %s %s after %.1fs", run_id, result.status, result.seconds)
            events.put(("done", result.status, result.counts, None))
            return
        watches = [
            (a.name, str(a.step), pl.sql_expr(str(a.where)))
            for a in spec.alerts
            if a.metric == "matching_records"
        ]
        reporter = _Reporter(events, watches)
        observer = RunObserver(
            on_output=reporter.on_output,
            on_progress=reporter.on_progress,
            on_batch=reporter.on_batch,
            on_visible=reporter.on_visible,
        )
        engine = Engine(spec, base, observer=observer)
        engine.run_id = run_id  # the server's id, so its history and the state store agree

        def stop_when_asked() -> None:
            stop.wait()
            engine.stop()

        threading.Thread(target=stop_when_asked, name="stop-watch", daemon=True).start()
        logging.getLogger("tideflow.service").info("run %s of %s started", run_id, spec.name)
        result = engine.run()
        reporter.on_progress(engine)
        counts = result.counts
        logging.getLogger("tideflow.service").info(
            "run %s %s after %.1fs", run_id, result.status, result.seconds
        )
        events.put(("done", result.status, counts, None))
    except BaseException as exc:  # noqa: BLE001 - reported to the server, then the child ends
        message = redact(f"{type(exc).__name__}: {exc}") if str(exc) else type(exc).__name__
        logging.getLogger("tideflow.service").error("run %s failed: %s", run_id, message)
        events.put(("done", "failed", counts, message))
    finally:
        # Give the queue's feeder thread time to hand everything to the pipe before exit.
        time.sleep(0.05)

"""One run in its own process, reporting to the server through a pipe.

The server starts :func:`worker_main` with the ``spawn`` method, so a run that crashes, leaks
memory or is killed takes nothing else down. It hands the child two pipe ends: one to send
events up, one to watch for the stop signal (the server closing its end, or dying: an
orphaned run would hold the pipeline's checkpoint while nobody can see or stop it, and a new
server would start a second run on the same checkpoint). The child sends plain tuples
(never frames):
``("log", time, level, text)``, ``("progress", elapsed, counts)``, ``("tap", node, rows)``,
``("batches", [(source, records, seconds), ...])``, ``("visible", [(source, seconds), ...])``
(end-to-end latencies, at each checkpoint), ``("checkpoints", last_at, pending, [seconds,
...])`` (the latest checkpoint's time, the records no checkpoint covers yet, and the durations
of the checkpoints since the last report) and finally ``("done", status, counts, error)``.
Everything textual is redacted before it leaves the child.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import orjson
import polars as pl

from tideflow.core.expressions import Expression, compile_expr, condition_mask
from tideflow.run.plan import engine_for
from tideflow.secrets import RedactingFilter, redact

TAP_ROWS = 20
"""Latest records kept per step for the live tap."""
PROGRESS_LOG_SECONDS = 5.0
"""Seconds between two progress lines in the run's log."""
SUMMARY_WIDTH = 120
"""Characters per line of the end-of-run summary in the run's log."""


class Channel:
    """The child's end of the events pipe. Sends are serialised (the engine, its source
    threads and logging all send), and a server that has gone away is not an error: the run
    then stops through its stop pipe, and what it would have reported has no reader."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.open = True
        self._lock = threading.Lock()

    def put(self, event: tuple[Any, ...]) -> None:
        """Send one event (blocks while the pipe is full: the server reads continuously)."""
        with self._lock:
            if not self.open:
                return
            try:
                self.connection.send(event)
            except (OSError, EOFError):
                self.open = False

    def close(self) -> None:
        """Close the pipe (the server then sees the end of the events)."""
        with self._lock:
            self.open = False
            self.connection.close()


class _QueueHandler(logging.Handler):
    """Forward log records to the server (already redacted by the filter)."""

    def __init__(self, events: Channel) -> None:
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

    def __init__(self, events: Channel, watches: list[tuple[str, str, Expression]]) -> None:
        self.events = events
        self.watches = watches
        self.matches: dict[str, int] = {name: 0 for name, _, _ in watches}
        self.taps: dict[str, pl.DataFrame] = {}
        self.batches: list[tuple[str, int, float]] = []
        self.visible: list[tuple[str, float]] = []
        self.checkpoints: list[float] = []
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

    def on_checkpoint_seconds(self, checkpoint: int, seconds: float) -> None:
        """Remember how long a committed checkpoint took."""
        with self.lock:
            self.checkpoints.append(seconds)

    def on_progress(self, engine: Any) -> None:
        """Send counts, then the taps and batch timings gathered since the last call."""
        self.events.put(("progress", engine.elapsed, engine.counts()))
        if self.watches:
            self.events.put(("matches", dict(self.matches)))
        with self.lock:
            taps, self.taps = self.taps, {}
            batches, self.batches = self.batches, []
            visible, self.visible = self.visible, []
            checkpoints, self.checkpoints = self.checkpoints, []
        self.events.put(
            ("checkpoints", engine.last_checkpoint_at, engine.pending_records, checkpoints)
        )
        for key, frame in taps.items():
            self.events.put(("tap", key, frame_rows(frame)))
        if batches:
            self.events.put(("batches", batches))
        if visible:
            self.events.put(("visible", visible))


def describe(spec: Any) -> str:
    """A pipeline in one line for the run's log: sources, steps, sinks and checkpoints."""
    sources = ", ".join(f"{s.name} ({s.type})" for s in spec.all_sources)
    sinks = ", ".join(f"{s.name} ({s.type})" for s in spec.all_sinks)
    every = [
        f"{spec.checkpoint.every_records:,} records" if spec.checkpoint.every_records else "",
        f"{spec.checkpoint.every_seconds:g} s" if spec.checkpoint.every_seconds else "",
    ]
    checkpoint = " or ".join(e for e in every if e) or "the end"
    return f"{sources} -> {len(spec.steps)} step(s) -> {sinks}; checkpoint every {checkpoint}"


def log_summary(result: Any, log: logging.Logger, pipeline: str | None = None) -> None:
    """Log the end-of-run summary that `tideflow run` prints (the per-step table, the
    accounting check, what components reported), one record per line."""
    import io

    from rich.console import Console

    from tideflow.observe.progress import print_summary

    buffer = io.StringIO()
    console = Console(file=buffer, width=SUMMARY_WIDTH, no_color=True, highlight=False)
    print_summary(result, console, pipeline)
    level = logging.ERROR if result.unbalanced else logging.INFO
    for line in buffer.getvalue().splitlines():
        if line.strip():
            log.log(level, "%s", line.rstrip())


def wait_for_stop(stop: Any) -> None:
    """Block until the server closes its end of the stop pipe or its process ends."""
    try:
        while True:
            stop.recv_bytes()  # the server sends nothing; only the pipe's end matters
    except (EOFError, OSError):
        return


def worker_main(
    path: str,
    run_id: str,
    mode: str,
    options: dict[str, Any],
    connection: Any,
    stop: Any,
    policy: Any = None,
) -> None:
    """Entry point of a run process: load ``path`` and run it (``mode="run"``) or replay
    dead letters (``mode="replay"``, ``options`` holding ``step`` and ``ids``), sending
    events through the pipe end ``connection`` and stopping when the pipe end ``stop``
    closes. The server's ``policy`` (:class:`tideflow.service.policy.Policy`) is checked
    again on the file as loaded here, and SQL file access is switched off in this process
    unless it allows it."""
    events = Channel(connection)
    root = logging.getLogger()
    root.handlers[:] = [_QueueHandler(events)]
    root.setLevel(logging.INFO)
    counts: dict[str, Any] = {}
    try:
        from tideflow.core.observer import RunObserver
        from tideflow.observe.progress import ProgressLine
        from tideflow.run import runner
        from tideflow.spec.loader import load_pipeline

        spec = load_pipeline(path)
        base = Path(path).resolve().parent
        if policy is not None:
            from tideflow.errors import ConfigError
            from tideflow.sandbox import refuse_sql_files

            text = Path(path).read_text(encoding="utf-8")
            refused = policy.issues(spec, text, Path(path).name, base)
            if refused:
                raise ConfigError(refused)
            if not policy.allow_sql_files:
                refuse_sql_files()
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
            log_summary(result, service_log, path)
            service_log.info("replay %s %s after %.1fs", run_id, result.status, result.seconds)
            events.put(("done", result.status, result.counts, None))
            return
        watches = [
            (a.name, str(a.step), compile_expr(str(a.where), f"alerts.{a.name}.where"))
            for a in spec.alerts
            if a.metric == "matching_records"
        ]
        reporter = _Reporter(events, watches)
        progress = ProgressLine(log=service_log, log_every=PROGRESS_LOG_SECONDS)

        def on_progress(engine: Any) -> None:
            reporter.on_progress(engine)
            progress.update(engine)

        observer = RunObserver(
            on_output=reporter.on_output,
            on_progress=on_progress,
            on_batch=reporter.on_batch,
            on_visible=reporter.on_visible,
            on_checkpoint_seconds=reporter.on_checkpoint_seconds,
        )
        # The server's run id, so its history and the state store agree.
        engine = engine_for(spec, base, observer=observer, run_id=run_id)

        def stop_when_asked() -> None:
            wait_for_stop(stop)
            engine.stop()

        threading.Thread(target=stop_when_asked, name="stop-watch", daemon=True).start()
        service_log.info("run %s of %s started: %s", run_id, spec.name, describe(spec))
        result = engine.run()
        reporter.on_progress(engine)
        counts = result.counts
        log_summary(result, service_log, path)
        service_log.info("run %s %s after %.1fs", run_id, result.status, result.seconds)
        events.put(("done", result.status, counts, None))
    except BaseException as exc:  # noqa: BLE001 - reported to the server, then the child ends
        message = redact(f"{type(exc).__name__}: {exc}") if str(exc) else type(exc).__name__
        logging.getLogger("tideflow.service").error("run %s failed: %s", run_id, message)
        events.put(("done", "failed", counts, message))
    finally:
        events.close()

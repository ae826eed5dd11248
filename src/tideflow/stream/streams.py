"""The :class:`Stream`: processors registered as pipelines (``<stream>-<processor>``, a
``topic`` source, the processor's steps, a ``topic`` sink), run in threads, in waves when one
reads what another writes, until the end of their input or :meth:`Stream.stop`."""

from __future__ import annotations

import itertools
import logging
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import orjson
from ruamel.yaml import YAML

from tideflow.core.engine import Engine
from tideflow.core.observer import RunObserver
from tideflow.core.result import RunResult
from tideflow.errors import ConfigError, PipelineError, require
from tideflow.run.plan import engine_for
from tideflow.secrets import redact
from tideflow.spec.models import NAME_PATTERN
from tideflow.stream.backend import check_backend
from tideflow.stream.processors import FUNCTIONS, PREFIX, BuiltinProcessor, Processor, ProcessorLike
from tideflow.topics.names import topic_name_problem

log = logging.getLogger("tideflow.stream")

_ids = itertools.count(1)
_ids_lock = threading.Lock()

DEFAULT_CHECKPOINT_SECONDS = 0.5
"""How often a processor checkpoints while records flow. On the embedded log a processor's
output becomes visible downstream at its checkpoint, so this bounds the delay per processor
(about 0.5 s plus a poll); each checkpoint costs one durable transaction in the state store
and one in the topic log. ``tideflow run`` pipelines default to 10 s."""

_VALUE_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


@dataclass
class _Registered:
    """A registered processor: its pipeline as plain data and where it reads and writes."""

    name: str
    data: dict[str, Any]
    input_topic: str
    output_topic: str | None
    alerts: list[Any] = field(default_factory=list)


@dataclass
class _Running:
    """A processor being run: its engine, thread and hooks."""

    name: str
    engine: Engine
    thread: threading.Thread
    alerts: Any = None


def _check_name(what: str, name: str) -> str:
    if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
        raise ConfigError(
            f"{what} {name!r}: use letters, digits, '_' and '-', starting with a letter or '_'"
        )
    return name


def _check_topic(what: str, topic: str) -> str:
    problem = topic_name_problem(topic) if isinstance(topic, str) else "not a string"
    if problem is not None:
        raise ConfigError(f"{what}: {problem}")
    return topic


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """In the main thread, SIGTERM (``docker stop``, ``kill``) stops a blocking ``start()``
    as Ctrl-C does: drain, checkpoint, return."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _records(data: Any) -> list[Any]:
    """What ``stream_data`` publishes: each item of a list, tuple or other iterable; a dict,
    string, bytes or scalar is one record."""
    if isinstance(data, dict | str | bytes) or not isinstance(data, Iterable):
        return [data]
    return list(data)


class Stream:
    """Processors connected by topics, each run as a tideflow pipeline.

    ``broker``: ``host:port`` (or ``kafka://host:port``) of a Kafka cluster; default
    ``KAFKA_BROKER``, else the embedded log in ``state_dir/.tideflow``. ``state_dir``: the
    folder of the state store and embedded log (default: the current folder), where
    ``tideflow deadletters list <stream>-<processor>`` finds the dead letters.
    ``checkpoint_seconds``: how often processors checkpoint (see
    :data:`DEFAULT_CHECKPOINT_SECONDS`). ``metrics_port``: serve Prometheus metrics of every
    processor on ``127.0.0.1:PORT/metrics`` while the stream runs."""

    def __init__(
        self,
        name: str | None = None,
        broker: str | None = None,
        config: str | Path | None = None,
        state_dir: str | Path | None = None,
        checkpoint_seconds: float | None = None,
        metrics_port: int | None = None,
    ) -> None:
        settings: dict[str, Any] = {}
        if config is not None:
            loaded = YAML(typ="safe").load(Path(config).read_text(encoding="utf-8")) or {}
            if not isinstance(loaded, dict):
                raise ConfigError(f"{config}: expected a mapping of stream settings")
            settings = loaded
        self.name = _check_name(
            "stream name",
            name or settings.get("name") or os.environ.get("STREAM_NAME") or "stream",
        )
        self.broker = broker or settings.get("broker") or os.environ.get("KAFKA_BROKER") or None
        self.topic = _check_topic(
            "topic", settings.get("topic") or os.environ.get("TOPIC") or f"{self.name}-input"
        )
        self.base_dir = Path(state_dir or settings.get("state_dir") or ".").resolve()
        seconds = checkpoint_seconds or settings.get("checkpoint_seconds")
        self.checkpoint_seconds = float(seconds or DEFAULT_CHECKPOINT_SECONDS)
        self.metrics_port: int | None = metrics_port or settings.get("metrics_port")
        self.results: dict[str, RunResult] = {}
        """Per processor, its run's result once it ended (status ``failed`` with ``error``
        when its thread died)."""
        self._registered: dict[str, _Registered] = {}
        self._running: dict[str, _Running] = {}
        self._failures: dict[str, BaseException] = {}
        self._controller: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._metrics: Any = None
        self._metrics_server: Any = None
        self._admin_handle: Any = None
        self._done = threading.Event()
        """Set by the controller thread when every processor has ended."""

    # -- configuration -------------------------------------------------------------------

    def _broker_setting(self) -> str:
        if not self.broker:
            return "embedded"
        return self.broker if self.broker.startswith("kafka://") else f"kafka://{self.broker}"

    def _bootstrap(self) -> str | None:
        return self.broker.removeprefix("kafka://") if self.broker else None

    def _admin(self) -> Any:
        """Topic operations on this stream's backend (one, so that publishing on Kafka
        reuses its producer)."""
        if self._admin_handle is None:
            from tideflow.connectors.topic.admin import Admin

            self._admin_handle = Admin(self._bootstrap(), self.base_dir / ".tideflow")
        return self._admin_handle

    def close(self) -> None:
        """Release the Kafka producer ``stream_data`` keeps (a stream may be used again)."""
        if self._admin_handle is not None:
            self._admin_handle.close()
            self._admin_handle = None

    def pipeline_name(self, processor: str) -> str:
        """The name of a processor's pipeline (its state, dead letters and metrics)."""
        return f"{self.name}-{processor}"

    def register_processor(
        self,
        name: str,
        processor: ProcessorLike,
        input_topic: str | None = None,
        output_topic: str | None = None,
        *,
        sink: dict[str, Any] | None = None,
        alerts: list[dict[str, Any]] | None = None,
    ) -> None:
        """Run ``processor`` on every record of ``input_topic`` (default: the stream's
        topic), sending what it returns to ``output_topic`` (default ``<name>-output``).

        ``processor`` is a function, a :class:`Processor`, or a built-in processor
        (:func:`window`, :func:`interpolate`, :func:`outliers`, :func:`normalize`).
        ``sink``: any tideflow sink instead of the output topic, e.g.
        ``tideflow.connector("sql", url=..., table=..., mode="upsert", key=[...])`` (a
        function's results reach it as JSON text in a ``value`` column). ``alerts``: alert
        rules as in a pipeline file's ``alerts:``, evaluated while the stream runs."""
        _check_name("processor name", name)
        if name in self._registered:
            raise ConfigError(f"processor {name!r} is already registered")
        if output_topic is not None and sink is not None:
            raise ConfigError(f"processor {name!r}: give `output_topic` or `sink`, not both")
        source_topic = _check_topic(
            f"processor {name!r}: input_topic", self.topic if input_topic is None else input_topic
        )
        target = None if sink is not None else output_topic
        if sink is None and output_topic is None:
            target = f"{name}-output"
        if target is not None:
            _check_topic(f"processor {name!r}: output_topic", target)
        broker = self._broker_setting()
        source: dict[str, Any] = {
            "type": "topic",
            "topic": source_topic,
            "group": f"{self.name}.{name}",
            "broker": broker,
        }
        if isinstance(processor, type) and issubclass(processor, Processor):
            processor = processor()  # a Processor class given instead of an instance
        if isinstance(processor, BuiltinProcessor):
            steps = processor.steps(name)
            if processor.needs_message_time:
                source["metadata"] = ["timestamp"]
            out_format = "json"
        elif isinstance(processor, Processor) or callable(processor):
            call = processor.process if isinstance(processor, Processor) else processor
            with _ids_lock:
                attribute = f"{next(_ids)}"
            # The python step finds the callable by name through this module's __getattr__.
            FUNCTIONS[attribute] = call
            source["format"] = "raw"
            steps = [
                {
                    "type": "python",
                    "name": name,
                    "function": f"tideflow.stream:{PREFIX}{attribute}",
                    "mode": "value",
                }
            ]
            out_format = "raw"
        else:
            raise ConfigError(
                f"processor {name!r}: expected a function, a Processor or a built-in "
                f"processor, got {type(processor).__name__}"
            )
        data: dict[str, Any] = {
            "name": self.pipeline_name(name),
            "source": source,
            "steps": steps,
            "sink": sink
            if sink is not None
            else {"type": "topic", "topic": target, "broker": broker, "format": out_format},
            "checkpoint": {"every_seconds": self.checkpoint_seconds},
        }
        if alerts:
            data["alerts"] = list(alerts)
        spec = self._validate(data)  # configuration errors surface here, not at start
        self._registered[name] = _Registered(
            name, data, source_topic, target, alerts=list(spec.alerts)
        )

    @staticmethod
    def _validate(data: dict[str, Any]) -> Any:
        from tideflow.spec.loader import revalidate

        return revalidate(data)

    # -- publishing and reading ----------------------------------------------------------

    def stream_data(self, data: Any, stream_name: str | None = None) -> int:
        """Append records to ``stream_name`` (default: the stream's topic); returns how many.

        ``data`` is a list (or other iterable) of records, or one record: any JSON value
        (a dict, a string, a number, ...; to publish a list as one record, wrap it in a
        list). Every call appends every record, across calls, objects and processes; the
        records are visible to readers when the call returns. Nothing is appended if a
        record cannot be encoded as JSON."""
        topic = _check_topic(
            "stream_data: stream_name", self.topic if stream_name is None else stream_name
        )
        records = _records(data)
        encoded = []
        for i, record in enumerate(records):
            try:
                encoded.append(orjson.dumps(record, option=_VALUE_OPTIONS))
            except TypeError as exc:
                raise TypeError(
                    f"stream_data: record {i} ({type(record).__name__}) cannot be published "
                    f"as JSON: {exc}; nothing was published"
                ) from None
        if not encoded:
            return 0
        sent: int = self._admin().produce(topic, encoded)
        return sent

    def read_data(self, stream_name: str) -> list[Any]:
        """Every record ``stream_name`` holds now, decoded from JSON, partition by partition
        in the order written. Reads as no consumer group: call it as often as you like."""
        topic = _check_topic("read_data: stream_name", stream_name)
        values = self._admin().read_all(topic)
        return [None if v is None else orjson.loads(v) for v in values]

    # -- running -------------------------------------------------------------------------

    def start(
        self, block: bool = True, stop_at_end: bool = False, metrics_port: int | None = None
    ) -> None:
        """Run every registered processor.

        With ``block`` (the default), return when the processors end: at :meth:`stop` from
        another thread, Ctrl-C (a graceful stop), or with ``stop_at_end`` once every
        processor has read everything its input holds. Raises :class:`PipelineError` if a
        processor failed. Without ``block``, return at once; :meth:`join` or :meth:`stop`
        then wait and raise.

        ``stop_at_end``: a bounded run. Processors run in the order their topics connect
        them (a processor starts once the processors writing its input have ended), and
        each ends when it has read its input up to the offsets the input had when it
        started: the end is decided by the data, never by a quiet period."""
        if self._running_now():
            raise ConfigError("the stream is already running; stop() or join() it first")
        if not self._registered:
            raise ConfigError("register a processor before starting the stream")
        waves = self._waves() if stop_at_end else [list(self._registered)]
        self.results = {}
        self._failures = {}
        self._running = {}
        self._stopping.clear()
        pipelines = {name: self.pipeline_name(name) for name in self._registered}
        check_backend(self.base_dir, self.name, self._broker_setting(), pipelines)
        admin = self._admin()
        for entry in self._registered.values():
            # A consumer of a missing Kafka topic fails; outputs exist once start() returns.
            for topic in (entry.input_topic, entry.output_topic):
                if topic is not None:
                    admin.ensure(topic)
        port = metrics_port or self.metrics_port
        if port is not None:
            self._serve_metrics(port)
        self._done.clear()
        self._controller = threading.Thread(
            target=self._run_waves,
            args=(waves, stop_at_end),
            name=f"tideflow-stream-{self.name}",
            daemon=True,
        )
        self._controller.start()
        if not block:
            return
        try:
            with _terminate_as_interrupt():
                # An Event, not Thread.join: a join interrupted by Ctrl-C can leave the thread
                # marked as stopped while it still runs (CPython before 3.13).
                while not self._done.wait(0.2):
                    pass
        except KeyboardInterrupt:
            log.warning("stopping the stream: draining and checkpointing every processor")
            self.stop()
            return
        self._finish()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the processors to end (at most ``timeout`` seconds); raise
        :class:`PipelineError` if any failed."""
        if self._controller is not None:
            deadline = None if timeout is None else time.monotonic() + timeout
            while not self._done.is_set():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._done.wait(0.2 if left is None else min(0.2, left))
            if not self._done.is_set():
                self._raise_failures()
                return
        self._finish()

    def _running_now(self) -> bool:
        """True from ``start()`` until every processor has ended."""
        return self._controller is not None and not self._done.is_set()

    def stop(self) -> None:
        """Stop every processor after a final checkpoint, wait for them, and raise
        :class:`PipelineError` if any failed."""
        self._stopping.set()
        with self._lock:
            running = list(self._running.values())
        for run in running:
            run.engine.stop()
        self.join()

    def _finish(self) -> None:
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
            self._metrics_server = self._metrics = None
        self._raise_failures()

    def _raise_failures(self) -> None:
        if not self._failures:
            return
        names = ", ".join(repr(n) for n in self._failures)
        first = next(iter(self._failures.values()))
        reasons = "; ".join(
            f"{n}: {self.results[n].error}" for n in self._failures if n in self.results
        )
        raise PipelineError(
            redact(f"stream {self.name!r}: processor(s) {names} failed: {reasons}")
        ) from first

    def _waves(self) -> list[list[str]]:
        """Processors grouped so that each group only reads topics written by earlier
        groups (or by no processor); a cycle cannot be run to an end."""
        writers: dict[str, set[str]] = {}
        for entry in self._registered.values():
            if entry.output_topic is not None:
                writers.setdefault(entry.output_topic, set()).add(entry.name)
        needs = {
            name: writers.get(entry.input_topic, set()) - {name}
            for name, entry in self._registered.items()
        }
        waves: list[list[str]] = []
        done: set[str] = set()
        while len(done) < len(needs):
            ready = [n for n, before in needs.items() if n not in done and before <= done]
            if not ready:
                cycle = sorted(set(needs) - done)
                raise ConfigError(
                    f"processors {', '.join(cycle)} feed each other's input topics in a cycle, "
                    "so a bounded run (stop_at_end) cannot tell where their data ends; run "
                    "them without stop_at_end"
                )
            waves.append(ready)
            done.update(ready)
        return waves

    def _run_waves(self, waves: list[list[str]], bounded: bool) -> None:
        """Controller thread: run the waves in order, each to its end."""
        try:
            for wave in waves:
                if self._stopping.is_set() or self._failures:
                    break
                threads = []
                for name in wave:
                    try:
                        threads.append(self._launch(name, bounded))
                    except BaseException as exc:  # noqa: BLE001 - recorded, raised by join()
                        self._fail(name, None, exc)
                for thread in threads:
                    thread.join()
        finally:
            self._done.set()

    def _source_end(self, topic: str) -> dict[str, int]:
        """The next offset of every partition of ``topic`` now: where a bounded read ends."""
        ends: dict[int, int] = self._admin().end_offsets(topic)
        return {f"{topic}:{part}": int(end) for part, end in ends.items()}

    def _launch(self, name: str, bounded: bool) -> threading.Thread:
        from tideflow.observe.alerts import RunAlerts

        entry = self._registered[name]
        data = dict(entry.data)
        if bounded:
            data["source"] = dict(
                data["source"], stop_at_end=True, end_offsets=self._source_end(entry.input_topic)
            )
        spec = self._validate(data)
        alerts = RunAlerts(spec.name, entry.alerts) if entry.alerts else None
        observer = self._observer(spec.name, alerts)
        engine = engine_for(spec, self.base_dir, observer=observer)
        thread = threading.Thread(
            target=self._run_one, args=(name, engine), name=f"tideflow-{spec.name}", daemon=True
        )
        with self._lock:
            self._running[name] = _Running(name, engine, thread, alerts)
        if self._stopping.is_set():
            engine.stop()  # stop() came while this processor was being set up
        thread.start()
        return thread

    def _observer(self, pipeline: str, alerts: Any) -> RunObserver:
        observer = RunObserver()
        hooks: list[Callable[[Any], None]] = []
        if self._metrics is not None:
            from tideflow.observe.metrics import run_hooks

            metric_hooks = run_hooks(self._metrics, pipeline)
            hooks.append(metric_hooks.on_progress)
            # Every other hook the run's metrics have, as `tideflow run --metrics-port` sets.
            for field_name in vars(metric_hooks):
                if field_name != "on_progress" and hasattr(observer, field_name):
                    setattr(observer, field_name, getattr(metric_hooks, field_name))
        if alerts is not None:
            hooks.append(alerts.on_progress)
            if alerts.watches:
                observer.on_output = alerts.on_output
        if hooks:

            def on_progress(engine: Any) -> None:
                for hook in hooks:
                    hook(engine)

            observer.on_progress = on_progress
        return observer

    def _run_one(self, name: str, engine: Engine) -> None:
        """Processor thread: run the pipeline; record how it ended."""
        try:
            self.results[name] = engine.run()
        except BaseException as exc:  # noqa: BLE001 - recorded, raised by start/join/stop
            self._fail(name, engine, exc)
        finally:
            run = self._running.get(name)
            result = self.results.get(name)
            if run is not None and run.alerts is not None and result is not None:
                run.alerts.finished(result.counts)
            if self._metrics is not None and result is not None:
                self._metrics.run_finished(engine.plan.name, result.status)

    def _fail(self, name: str, engine: Engine | None, exc: BaseException) -> None:
        """A processor died: record it, and stop the others (a chain with a dead link only
        piles up input; the caller hears of it at once instead)."""
        error = redact(f"{type(exc).__name__}: {exc}")
        log.error("processor %s of stream %s failed: %s", name, self.name, error)
        self.results[name] = RunResult(
            run_id=engine.run_id if engine is not None else "",
            pipeline=self.pipeline_name(name),
            status="failed",
            seconds=engine.elapsed if engine is not None else 0.0,
            checkpoints=engine.checkpoints if engine is not None else 0,
            counts=engine.counts() if engine is not None else {},
            error=error,
        )
        self._failures[name] = exc
        self._stopping.set()
        with self._lock:
            others = [r for n, r in self._running.items() if n != name]
        for run in others:
            run.engine.stop()

    def _serve_metrics(self, port: int) -> None:
        require("prometheus_client", "service")
        from tideflow.observe.metrics import serve_metrics

        if self._metrics_server is not None:
            return
        try:
            self._metrics, self._metrics_server = serve_metrics(port)
        except OSError as exc:
            raise ConfigError(f"metrics_port {port}: cannot listen there: {exc.strerror}") from exc

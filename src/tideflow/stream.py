"""The Stream/Processor API, for people used to stream-processor libraries.

    from tideflow.stream import Processor, Stream

    class Doubler(Processor):
        def process(self, data):
            return {**data, "value": data["value"] * 2}

    stream = Stream("sensors")  # embedded log; Kafka with broker= or KAFKA_BROKER
    stream.register_processor("double", Doubler(), input_topic="readings", output_topic="doubled")
    stream.stream_data([{"value": 1}, {"value": 2}], stream_name="readings")
    stream.start()                                    # runs until stop() (or the input ends)

Each processor is an ordinary tideflow pipeline — ``topic`` source (consumer group
``<stream>.<processor>``), a per-record ``python`` step calling it, ``topic`` sink — so it gets
checkpoints, offsets committed after them, and the dead-letter ledger: a processor that raises
sends that record there and the stream goes on. Configuration comes from the arguments, else
a YAML file (``config=``, keys ``name``, ``broker``, ``topic``, ``state_dir``), else the
environment: ``STREAM_NAME``, ``KAFKA_BROKER``, ``TOPIC``; ``WINDOW_SIZE`` and
``AGGREGATION_TYPE`` set the defaults of ``window`` steps.
"""

from __future__ import annotations

import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from tideflow.core.engine import Engine, RunResult
from tideflow.errors import ConfigError

_processors: dict[str, Callable[[dict[str, Any]], Any]] = {}
_PREFIX = "processor__"


def __getattr__(name: str) -> Any:
    """Registered processors, by the name the pipelines' ``python`` steps refer to them."""
    if name.startswith(_PREFIX) and name[len(_PREFIX) :] in _processors:
        return _processors[name[len(_PREFIX) :]]
    raise AttributeError(name)


class Processor(ABC):
    """A record-at-a-time processor: return the record to pass on, or None to drop it."""

    @abstractmethod
    def process(self, data: dict[str, Any]) -> dict[str, Any] | None:
        """Handle one record."""


class Stream:
    """Processors connected by topics, run as tideflow pipelines."""

    def __init__(
        self,
        name: str | None = None,
        broker: str | None = None,
        config: str | Path | None = None,
        state_dir: str | Path | None = None,
    ) -> None:
        settings: dict[str, Any] = {}
        if config is not None:
            loaded = YAML(typ="safe").load(Path(config).read_text(encoding="utf-8")) or {}
            if not isinstance(loaded, dict):
                raise ConfigError(f"{config}: expected a mapping of stream settings")
            settings = loaded
        self.name = name or settings.get("name") or os.environ.get("STREAM_NAME") or "stream"
        self.broker = broker or settings.get("broker") or os.environ.get("KAFKA_BROKER")
        self.topic = settings.get("topic") or os.environ.get("TOPIC") or f"{self.name}-input"
        self.base_dir = Path(state_dir or settings.get("state_dir") or ".").resolve()
        self._pipelines: dict[str, dict[str, Any]] = {}
        self._engines: list[Engine] = []
        self._threads: list[threading.Thread] = []
        self.results: dict[str, RunResult] = {}

    def _broker_setting(self) -> str:
        if not self.broker:
            return "embedded"
        return self.broker if self.broker.startswith("kafka://") else f"kafka://{self.broker}"

    def register_processor(
        self,
        name: str,
        fn_or_processor: Callable[[dict[str, Any]], Any] | Processor,
        input_topic: str | None = None,
        output_topic: str | None = None,
    ) -> None:
        """Run ``fn_or_processor`` on every record of ``input_topic`` (default: the stream's
        topic), sending what it returns to ``output_topic`` (default ``<name>-output``)."""
        if name in self._pipelines:
            raise ConfigError(f"processor {name!r} is already registered")
        key = f"{self.name}.{name}"
        call = (
            fn_or_processor.process if isinstance(fn_or_processor, Processor) else fn_or_processor
        )
        # The python step finds the callable by name through this module's __getattr__.
        attribute = key.replace(".", "__").replace("-", "_")
        _processors[attribute] = call
        ref = f"tideflow.stream:{_PREFIX}{attribute}"
        self._pipelines[name] = {
            "name": key.replace(".", "-"),
            "source": {
                "type": "topic",
                "topic": input_topic or self.topic,
                "group": key,
                "broker": self._broker_setting(),
            },
            "steps": [{"type": "python", "name": name, "function": ref, "mode": "record"}],
            "sink": {
                "type": "topic",
                "topic": output_topic or f"{name}-output",
                "broker": self._broker_setting(),
            },
        }

    def stream_data(
        self, data: dict[str, Any] | Iterable[dict[str, Any]], stream_name: str | None = None
    ) -> int:
        """Publish records (a dict or several) to ``stream_name`` (default: the stream's
        topic); returns how many."""
        records = [data] if isinstance(data, dict) else list(data)
        if not records:
            return 0
        from tideflow.pipeline import Pipeline

        (
            Pipeline(f"{self.name}-publish")
            .source({"type": "memory", "records": records})
            .sink(
                {
                    "type": "topic",
                    "topic": stream_name or self.topic,
                    "broker": self._broker_setting(),
                }
            )
            .run(self.base_dir)
        )
        return len(records)

    def start(self, block: bool = True, stop_at_end: bool = False) -> None:
        """Run every registered processor; with ``block``, until :meth:`stop` or, with
        ``stop_at_end``, until the input topics are drained."""
        from tideflow.runner import revalidate

        if not self._pipelines:
            raise ConfigError("register a processor before starting the stream")
        for name, data in self._pipelines.items():
            source = dict(data["source"], stop_at_end=stop_at_end)
            spec = revalidate({**data, "source": source})
            engine = Engine(spec, self.base_dir)
            self._engines.append(engine)

            def run(engine: Engine = engine, name: str = name) -> None:
                self.results[name] = engine.run()

            thread = threading.Thread(target=run, name=f"tideflow-stream-{name}", daemon=True)
            self._threads.append(thread)
            thread.start()
        if block:
            self.join()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the processors to end."""
        for thread in self._threads:
            thread.join(timeout)

    def stop(self) -> None:
        """Stop every processor after a final checkpoint."""
        for engine in self._engines:
            engine.stop()
        self.join()

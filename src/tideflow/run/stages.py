"""Group workers and keyed state: a pipeline cut into stages at the steps whose keys the
source topics are not partitioned by, joined by repartition topics (``tideflow run --workers``,
``--worker-id``).

A group worker reads only its partitions of the source topics, so a step that keeps state per
key sees all records of a key only when no key is spread over two partitions. When a step's
keys are not declared as the topic's partitioning (``partitioned_by``), the pipeline is cut in
front of it, as Kafka Streams and Quix Streams do for a ``groupBy``:

- stage 1 is the pipeline up to that step: its sources, the steps before it, the sinks fed
  only by them, and a ``repartition`` sink writing the records that enter the step to the
  topic ``<pipeline>-<step>-repartition``, each in the partition its keys give (as many
  partitions as the source topic; one for state over all records);
- stage 2 reads that topic with a ``repartition`` source in the group
  ``<group>-<step>-repartition``, runs the step and everything after it, and is cut again if a
  later step keeps state by other keys. It is the pipeline ``<pipeline>--<step>``: its own
  checkpoints and per-partition state in the same state store.

Every stage is an ordinary pipeline run by the same engine, so the repartition topic is written
and read with the protocol of any topic: on the embedded log, in the transaction of the stage's
checkpoint; on Kafka, by the exactly-once sink in one transaction with the consumed offsets.
Each worker runs all stages, side by side; a bounded run (``stop_at_end``, ``end_offsets``)
runs them one after the other, each to its end, since a stage ends only once the group has read
every partition of its topics to the end (so everything the stage before wrote is there). The
run's summary counts both ends of a repartition topic as kind ``repartition``.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from tideflow.core.engine import Engine, RunObserver, RunResult
from tideflow.core.ownership import check_group_worker, needs_repartition
from tideflow.errors import ConfigError
from tideflow.registry import Registry, default_registry
from tideflow.spec.graph import build_graph
from tideflow.spec.models import PipelineSpec

log = logging.getLogger("tideflow.run")

REPARTITION_KIND = "repartition"
"""The kind both ends of a repartition topic have in a run's counts."""


@dataclass
class Stage:
    """One stage of a cut pipeline: its spec, and the names of the repartition nodes it
    writes and reads (internal, counted apart from the job's input and output)."""

    spec: PipelineSpec
    internal: tuple[str, ...] = ()


def plan_stages(
    spec: PipelineSpec, registry: Registry | None = None, partitions: Any = None
) -> list[Stage]:
    """The stages group workers run for ``spec`` (one when no step needs a repartition),
    each checked to be exact with workers. ``partitions(source_spec)`` gives the partition
    count of a source's topic (the count a repartition topic is created with)."""
    from tideflow.run.runner import revalidate, spec_data

    registry = registry or default_registry
    stages: list[Stage] = []
    internal: tuple[str, ...] = ()
    while True:
        graph = build_graph(spec, registry)
        cut = next((n for n in graph.steps if needs_repartition(n, graph)), None)
        keys = None if cut is None else cut.component.state_keys()
        if cut is None or keys is None:
            check_group_worker(graph)  # raises when state no key can split is kept
            stages.append(Stage(spec, internal))
            return stages
        count = 1 if not keys else _partition_count(spec, partitions)
        before, after = _cut(spec_data(spec), cut.name, keys, count)
        first = revalidate(before, registry)
        check_group_worker(build_graph(first, registry))
        stages.append(Stage(first, (*internal, f"{cut.name}-repartition")))
        spec, internal = revalidate(after, registry), (f"{cut.name}-repartitioned",)


def _partition_count(spec: PipelineSpec, partitions: Any) -> int:
    counts = {partitions(source) for source in spec.all_sources} if partitions else {1}
    return max(counts)


def _cut(
    data: dict[str, Any], step: str, keys: list[str], partitions: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Plain data of the two pipelines ``data`` is cut into in front of ``step``."""
    steps: list[dict[str, Any]] = data.get("steps", [])
    at = next(i for i, s in enumerate(steps) if s["name"] == step)
    sources = data["sources"]
    earlier = {s["name"] for s in sources} | {s["name"] for s in steps[:at]}
    entering = _inputs(steps[at], steps[at - 1]["name"] if at else None, sources)
    last = steps[-1]["name"] if steps else None
    later_steps = steps[at:]
    for later in later_steps[1:]:
        if set(_inputs(later, None, [])) & earlier:
            raise ConfigError(
                f"step {later['name']!r} reads {', '.join(sorted(set(later['input']) & earlier))}"
                f" from before step {step!r}, which group workers run in another stage (its "
                f"records move to the worker that keeps their {', '.join(keys) or 'state'}); "
                "feed it from the steps after, or declare the topic's partitioning "
                "(`partitioned_by`) so no repartition is needed"
            )
    first_sinks, second_sinks = [], []
    for sink in data.get("sinks", []):
        reads = set(_inputs(sink, last, []))
        if reads <= earlier:
            first_sinks.append(sink)
        elif reads & earlier:
            raise ConfigError(
                f"sink {sink['name']!r} reads from before and after step {step!r}, which group "
                "workers run in two stages; give it one side, or two sinks"
            )
        else:
            second_sinks.append(sink)
    source = sources[0]
    topic = f"{data['name']}-{step}-repartition"
    node, read = f"{step}-repartition", f"{step}-repartitioned"
    taken = earlier | {s["name"] for s in [*later_steps, *data.get("sinks", [])]}
    if {node, read} & taken:
        raise ConfigError(
            f"the names {node!r} and {read!r} are the ends of the repartition group workers "
            f"put in front of step {step!r}; rename the node that has one"
        )
    broker = _broker(source)
    ends = {k: source[k] for k in ("stop_at_end", "idle_seconds", "max_wait") if k in source}
    if "end_offsets" in source:
        ends["stop_at_end"] = True
    before = {
        **data,
        "steps": steps[:at],
        "sinks": [
            *first_sinks,
            {
                "type": "repartition",
                "name": node,
                "input": entering,
                "topic": topic,
                "by": keys,
                "partitions": partitions,
                **broker,
            },
        ],
    }
    before.pop("alerts", None)
    moved = {**steps[at], "input": read}
    after = {
        **data,
        "name": f"{data['name']}--{step}",
        "sources": [
            {
                "type": "repartition",
                "name": read,
                "topic": topic,
                "group": f"{source['group']}-{step}-repartition",
                "by": keys,
                "batch_size": 64,
                **broker,
                **ends,
            }
        ],
        "steps": [moved, *later_steps[1:]],
        "sinks": second_sinks,
    }
    after.pop("schedule", None)
    return before, after


def _inputs(node: dict[str, Any], previous: str | None, sources: list[dict[str, Any]]) -> list[str]:
    """The node names a step or sink reads (its ``input``, else the node before it)."""
    given = node.get("input")
    if given:
        refs = [given] if isinstance(given, str) else list(given)
        return [ref.partition(".")[0] if "." in ref else ref for ref in refs]
    if previous is not None:
        return [previous]
    return [s["name"] for s in sources]


def _broker(source: dict[str, Any]) -> dict[str, Any]:
    """The ``broker`` setting a repartition topic gets: the source topic's log or cluster."""
    if source["type"] == "kafka":
        address = source.get("broker") or source.get("bootstrap")
        if address and not str(address).startswith("kafka://"):
            address = f"kafka://{address}"
        return {"broker": address, "options": source.get("options", {})}
    return {"broker": source["broker"]} if source.get("broker") else {}


def bounded(spec: PipelineSpec) -> bool:
    """Whether the first stage's sources end (``stop_at_end``, ``end_offsets``)."""
    return all(
        getattr(s, "stop_at_end", False) or getattr(s, "end_offsets", None) is not None
        for s in spec.all_sources
    )


def run_stages(
    stages: list[Stage],
    engines: list[Engine],
    handle_signals: bool,
) -> RunResult:
    """Run the engines of ``stages``: one after the other when the input is bounded, else
    side by side until they end or are stopped; one :class:`RunResult` for the job."""
    results: list[RunResult | None] = [None] * len(engines)
    failures: list[BaseException] = []

    def run(index: int) -> None:
        try:
            results[index] = engines[index].run()
        except BaseException as exc:  # noqa: BLE001 - raised in the calling thread
            failures.append(exc)
            for engine in engines:
                engine.stop()

    with _stop_on_signal(engines, handle_signals):
        if bounded(stages[0].spec):
            for index in range(len(engines)):
                if failures or any(e.stop_event.is_set() for e in engines):
                    break
                run(index)
        else:
            threads = [
                threading.Thread(target=run, args=(i,), name=f"stage-{i}", daemon=True)
                for i in range(len(engines))
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                while thread.is_alive():
                    thread.join(0.2)
    if failures:
        raise failures[0]
    return merge_results(stages, [r for r in results if r is not None])


@contextmanager
def _stop_on_signal(engines: list[Engine], enabled: bool) -> Iterator[None]:
    """SIGINT/SIGTERM stop every stage (drain, checkpoint, end); a second one means now."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if any(e.stop_event.is_set() for e in engines):
            raise KeyboardInterrupt
        log.warning("stopping: draining in-flight batches and checkpointing")
        for engine in engines:
            engine.stop()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


STATUS_ORDER = ("failed", "refused", "incomplete", "stopped", "succeeded")


def merge_results(stages: list[Stage], results: list[RunResult]) -> RunResult:
    """One result for the job: every stage's counts (a repartition topic's ends as kind
    ``repartition``, so the job's input is what its sources read), the worst status."""
    counts: dict[str, dict[str, Any]] = {}
    for stage, result in zip(stages, results, strict=False):
        for name, figures in result.counts.items():
            kind = REPARTITION_KIND if name in stage.internal else figures["kind"]
            counts[name if name not in counts else f"{stage.spec.name}.{name}"] = {
                **figures,
                "kind": kind,
            }
    first = results[0]
    status = min((r.status for r in results), key=STATUS_ORDER.index)
    if len(results) < len(stages) and status == "succeeded":
        status = "stopped"
    return RunResult(
        run_id=first.run_id,
        pipeline=first.pipeline,
        status=status,
        seconds=max(r.seconds for r in results),
        checkpoints=sum(r.checkpoints for r in results),
        counts=counts,
        notices=[n for r in results for n in r.notices],
        stopped=any(r.stopped for r in results) or len(results) < len(stages),
        unbalanced=[u for r in results for u in r.unbalanced],
        error=next((r.error for r in results if r.error), None),
    )


def source_partitions(state_dir: Path) -> Any:
    """A function giving the partition count of a topic source's topic (1 when it does not
    exist yet)."""
    from tideflow.connectors.kafka.client import kafka_bootstrap
    from tideflow.connectors.topic.admin import Admin
    from tideflow.connectors.topic.settings import resolve_broker
    from tideflow.errors import PipelineError

    def count(source: Any) -> int:
        topics = [source.topic] if isinstance(source.topic, str) else source.topic
        bootstrap: str | None
        if source.type == "kafka":
            bootstrap = kafka_bootstrap(source.broker, source.bootstrap, "source")
        else:
            bootstrap = resolve_broker(source.broker)
        admin = Admin(bootstrap, state_dir)
        try:
            found = []
            for topic in topics:
                try:
                    found.append(len(admin.end_offsets(topic)))
                except PipelineError:
                    found.append(1)
            return max(found, default=1)
        finally:
            admin.close()

    return count


def new_engines(
    stages: list[Stage],
    base: Path,
    registry: Registry | None,
    observer: RunObserver | None,
    worker: str,
    dead_letters: str,
) -> list[Engine]:
    """An engine per stage for worker ``worker``; every stage's dead letters are kept under
    the job's name (``dead_letters``), where ``tideflow deadletters`` looks."""
    from tideflow.run.plan import engine_for

    engines = []
    for stage in stages:
        engine = engine_for(stage.spec, base, registry=registry, observer=observer, worker=worker)
        engine.dead_letter_ledger = dead_letters
        engines.append(engine)
    return engines

"""Group workers and keyed state: a pipeline cut into stages at the steps whose keys the
source topics are not partitioned by, joined by repartition topics (``tideflow run --workers``,
``--worker-id``).

A group worker reads only its partitions of the source topics, so a step that keeps state per
key sees all records of a key only when no key is spread over two partitions. When a step's
keys are not declared as the topic's partitioning (``partitioned_by``), the pipeline is cut in
front of it, as Kafka Streams and Quix Streams do for a ``groupBy``:

- stage 1 is the pipeline up to that step: its sources, the steps before it, the sinks fed
  only by them, and a ``repartition`` sink writing the records that enter the step to the
  topic ``<pipeline>-<group>-<step>-repartition``, each in the partition its keys give (as
  many partitions as the source topic; one for state over all records);
- stage 2 reads that topic with a ``repartition`` source in the group
  ``<group>-<step>-repartition``, runs the step and everything after it that reads it (another
  branch keyed differently gets a stage of its own), and is cut again where a later step keeps
  state by other keys. It is the pipeline ``<pipeline>~<step>``: its own checkpoints and
  per-partition state in the same state store, forgotten with the pipeline's.

Every stage is an ordinary pipeline run by the same engine, so the repartition topic is written
and read with the protocol of any topic: on the embedded log, in the transaction of the stage's
checkpoint; on Kafka, by the exactly-once sink in one transaction with the consumed offsets.
Each worker runs all stages, side by side; a bounded run (``stop_at_end``, ``end_offsets``)
runs them one after the other, each to its end, since a stage ends only once the group has read
every partition of its topics to the end (so everything the stage before wrote is there). The
run's summary counts both ends of a repartition topic as kind ``repartition``.
"""

from __future__ import annotations

import functools
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tideflow.core.engine import Engine
from tideflow.core.observer import RunObserver
from tideflow.core.ownership import check_group_worker
from tideflow.core.partitions import keeps_state
from tideflow.core.plan import STAGE_SEPARATOR
from tideflow.core.result import RunResult
from tideflow.core.signals import stop_on_signals
from tideflow.errors import ConfigError
from tideflow.registry import Registry, default_registry
from tideflow.spec.graph import build_graph
from tideflow.spec.loader import revalidate, spec_data
from tideflow.spec.models import PipelineSpec

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
    parents before children, each checked to be exact with workers.
    ``partitions(source_spec)`` gives the partition count of a source's topic (the count a
    repartition topic is created with; 1 without it)."""
    registry = registry or default_registry
    graph = build_graph(spec, registry)
    components = {node.name: node.component for node in graph.nodes}
    data = spec_data(spec)
    topics = [s for s in spec.all_sources if hasattr(s, "topic")]
    count = max((partitions(s) for s in topics), default=1) if partitions else 1
    planner = _Planner(data, components, count)
    stages = []
    for stage_data, internal in planner.plan():
        # A stage's name has a character pipeline names may not have: validate without it.
        name = stage_data["name"]
        stage = revalidate({**stage_data, "name": spec.name}, registry)
        stage = stage.model_copy(update={"name": name})
        check_group_worker(build_graph(stage, registry))  # the plan's own proof, once more
        stages.append(Stage(stage, internal))
    return stages


Partitioning = frozenset[frozenset[str] | None]
"""How the records reaching a node were put in partitions: one entry per way they came (a
set of columns, or None when nothing is known)."""


class _Planner:
    """Assigns each node of a pipeline (plain data, names filled in) to a stage."""

    def __init__(self, data: dict[str, Any], components: dict[str, Any], partitions: int):
        self.data = data
        self.components = components
        self.partitions = partitions
        sources = data["sources"]
        self.stages: list[dict[str, Any]] = [
            {"name": data["name"], "sources": sources, "steps": [], "sinks": []}
        ]
        self.internal: list[tuple[str, ...]] = [()]
        self.stage_of = {s["name"]: 0 for s in sources}
        self.parted: dict[str, Partitioning] = {
            s["name"]: frozenset([_columns(components[s["name"]].partition_keys())])
            for s in sources
        }

    def plan(self) -> list[tuple[dict[str, Any], tuple[str, ...]]]:
        """Each stage's pipeline data and the names of its repartition ends."""
        previous = [s["name"] for s in self.data["sources"]]
        for step in self.data.get("steps", []):
            refs = _refs(step, previous)
            self._place_step(step, refs)
            previous = [step["name"]]
        for sink in self.data.get("sinks", []):
            refs = _refs(sink, previous)
            self.stages[self._stage(sink["name"], refs)]["sinks"].append({**sink, "input": refs})
        shared = {k: v for k, v in self.data.items() if k not in _PER_STAGE}
        alerts = self.data.get("alerts", [])
        out = []
        for index, stage in enumerate(self.stages):
            names = {s["name"] for s in stage["steps"]}
            mine = [
                a for a in alerts if a.get("step") in names or (not index and not a.get("step"))
            ]
            body = {**shared, **stage, "alerts": mine}
            if index:
                body.pop("schedule", None)
            out.append((body, self.internal[index]))
        return out

    def _place_step(self, step: dict[str, Any], refs: list[str]) -> None:
        name = step["name"]
        stage = self._stage(name, refs)
        arriving: Partitioning = frozenset().union(*(self.parted[_node(r)] for r in refs))
        component = self.components[name]
        keys = component.state_keys() if keeps_state(component) else None
        if not keeps_state(component):
            self.stages[stage]["steps"].append({**step, "input": refs})
            self.stage_of[name], self.parted[name] = stage, arriving
            return
        if keys is not None and all(p is not None and p <= set(keys) for p in arriving):
            self.stages[stage]["steps"].append({**step, "input": refs})
            self.stage_of[name], self.parted[name] = stage, arriving
            return
        if keys is None:
            raise ConfigError(
                f"step {name!r} ({step['type']}) keeps state that is not kept per key, so "
                "no repartition can split it between workers; run one worker"
            )
        self._repartition(step, refs, stage, keys)

    def _repartition(
        self, step: dict[str, Any], refs: list[str], parent: int, keys: list[str]
    ) -> None:
        """Put ``step`` first in a new stage, fed by a repartition topic its parent writes."""
        name = step["name"]
        write, read = f"{name}-repartition", f"{name}-repartitioned"
        taken = set(self.components)
        if {write, read} & taken:
            raise ConfigError(
                f"the names {write!r} and {read!r} are the ends of the repartition group "
                f"workers put in front of step {name!r}; rename the node that has one"
            )
        source = self.data["sources"][0]
        topic = topic_for(self.data["name"], source["group"], name)
        broker = _broker(source)
        ends = {k: source[k] for k in ("stop_at_end", "idle_seconds", "max_wait") if k in source}
        if "end_offsets" in source:
            ends["stop_at_end"] = True
        self.stages[parent]["sinks"].append(
            {
                "type": "repartition",
                "name": write,
                "input": refs,
                "topic": topic,
                "by": keys,
                "partitions": self.partitions if keys else 1,
                **broker,
            }
        )
        self.internal[parent] = (*self.internal[parent], write)
        reader = {
            "type": "repartition",
            "name": read,
            "topic": topic,
            "group": f"{source['group']}-{name}-repartition",
            "by": keys,
            "batch_size": 64,
            **broker,
            **ends,
        }
        self.stages.append(
            {
                "name": f"{self.data['name']}{STAGE_SEPARATOR}{name}",
                "sources": [reader],
                "steps": [{**step, "input": [read]}],
                "sinks": [],
            }
        )
        self.internal.append((read,))
        self.stage_of[name] = len(self.stages) - 1
        self.parted[name] = frozenset([frozenset(keys)])

    def _stage(self, name: str, refs: list[str]) -> int:
        """The one stage every input of ``name`` is in."""
        stages = {self.stage_of[_node(r)] for r in refs}
        if len(stages) > 1:
            raise ConfigError(
                f"{name!r} merges records from before and after a repartition (group "
                "workers move a stateful step's records to the worker that keeps their key, "
                f"so {', '.join(refs)} are read in different stages); merge them before the "
                "stateful step, or declare the topic's partitioning (`partitioned_by`) so "
                "no repartition is needed"
            )
        return stages.pop()


_PER_STAGE = ("name", "sources", "steps", "sinks", "alerts")


def topic_for(pipeline: str, group: str, step: str) -> str:
    """The repartition topic in front of ``step``: named after the pipeline, the consumer
    group and the step, so a pipeline run in a new group (which reads its sources from the
    start) never reads what an earlier group wrote there."""
    name = f"{pipeline}-{group}-{step}-repartition"
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:249]


def _columns(keys: list[str] | None) -> frozenset[str] | None:
    return None if keys is None else frozenset(keys)


def _node(ref: str) -> str:
    return ref.partition(".")[0]


def _refs(node: dict[str, Any], previous: list[str]) -> list[str]:
    """What a step or sink reads (``input``, else the node before it, or every source)."""
    given = node.get("input")
    if given:
        return [given] if isinstance(given, str) else list(given)
    return list(previous)


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
    side by side until they end or are stopped; one :class:`RunResult` for the job. SIGINT
    and SIGTERM stop every stage (each drains and checkpoints); a second one means now."""
    results: list[RunResult | None] = [None] * len(engines)
    failures: list[BaseException] = []
    stopping = threading.Event()

    def run(index: int) -> None:
        try:
            results[index] = engines[index].run()
        except BaseException as exc:  # noqa: BLE001 - raised in the calling thread
            failures.append(exc)
            stopping.set()

    def in_order() -> None:
        for index in range(len(engines)):
            if failures or stopping.is_set():
                break
            run(index)

    targets = (
        [in_order]
        if bounded(stages[0].spec)
        else [functools.partial(run, index) for index in range(len(engines))]
    )
    threads = [threading.Thread(target=t, name="stages", daemon=True) for t in targets]
    with stop_on_signals(stopping, handle_signals):
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                if stopping.is_set():
                    for engine in engines:
                        engine.stop()
                thread.join(0.2)
    if failures:
        raise failures[0]
    return merge_results(stages, [r for r in results if r is not None])


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

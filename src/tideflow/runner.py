"""Ways to run a pipeline spec: a normal run, a preview, a replay of dead letters, a test.

Each variant rewrites the spec (as plain data, re-validated by the same models) and runs it in
its own *scope*, so it never touches the main run's checkpoints or output file names.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import polars as pl

from tideflow.connectors.memory import clear, collected
from tideflow.core.contracts import MAIN_PORT, Context, PlansSchema
from tideflow.core.engine import Engine, RunObserver, RunResult
from tideflow.core.graph import build_graph
from tideflow.errors import ConfigError, PipelineError
from tideflow.registry import Registry, default_registry
from tideflow.spec.loader import LoadedYaml, validate
from tideflow.spec.models import PipelineSpec
from tideflow.state.store import StateStore

REPLAY_SOURCE = "dead_letter_replay"


def spec_data(spec: PipelineSpec) -> dict[str, Any]:
    """The spec as plain data (names filled in), ready to edit and re-validate."""
    data = spec.model_dump(mode="json", exclude_none=True)
    for single, many in (("source", "sources"), ("sink", "sinks")):
        if single in data:
            data[many] = [data.pop(single)]
    return data


def revalidate(data: dict[str, Any], registry: Registry | None = None) -> PipelineSpec:
    """Validate edited spec data again."""
    return validate(LoadedYaml(data, {}, None), registry or default_registry)


def run(
    spec: PipelineSpec,
    base_dir: str | Path = ".",
    observer: RunObserver | None = None,
    registry: Registry | None = None,
    handle_signals: bool = False,
    scope: str = "main",
    state: StateStore | None = None,
    worker: str | None = None,
) -> RunResult:
    """Run a pipeline to the end (or until stopped); ``worker`` runs it as one worker of
    its consumer group (see :mod:`tideflow.workers`)."""
    engine = Engine(
        spec,
        base_dir,
        registry=registry,
        observer=observer,
        scope=scope,
        state=state,
        worker=worker,
    )
    return engine.run(handle_signals=handle_signals)


def _without_sinks(data: dict[str, Any], collector_prefix: str) -> dict[str, str]:
    """Replace every sink by a memory sink with the same name, input and condition."""
    collectors = {}
    for sink in data["sinks"]:
        name = sink["name"]
        collectors[name] = f"{collector_prefix}:{name}"
        keep = {k: sink[k] for k in ("name", "input", "when") if k in sink}
        sink.clear()
        sink.update(keep, type="memory", collector=collectors[name])
    data.pop("on_error", None)
    data["on_error"] = {"action": "dead_letter"}
    return collectors


@dataclass
class Preview:
    """The first records seen after each step."""

    frames: dict[str, pl.DataFrame] = field(default_factory=dict)
    result: RunResult | None = None


def preview(
    spec: PipelineSpec,
    base_dir: str | Path,
    rows: int,
    registry: Registry | None = None,
    timeout: float = 10.0,
) -> Preview:
    """Run until every step has shown ``rows`` records, the sources end, or ``timeout``
    seconds pass; write no sink, keep no state."""
    data = spec_data(spec)
    collectors = _without_sinks(data, f"preview-{uuid.uuid4().hex}")
    preview_spec = revalidate(data, registry)
    out = Preview()
    step_names = {s.name for s in preview_spec.steps} | {s.name for s in preview_spec.all_sources}
    engine: Engine | None = None

    def on_output(node: str, port: str, frame: pl.DataFrame) -> None:
        key = node if port == "out" else f"{node}.{port}"
        have = out.frames.get(key)
        if have is None or have.height < rows:
            joined = frame if have is None else pl.concat([have, frame], how="diagonal_relaxed")
            out.frames[key] = joined.head(rows)
        filled = {k.split(".")[0] for k, f in out.frames.items() if f.height >= rows}
        if engine is not None and step_names <= filled:
            engine.stop()

    engine = Engine(
        preview_spec,
        base_dir,
        registry=registry,
        observer=RunObserver(on_output=on_output),
        scope="preview",
        state=StateStore(":memory:"),
    )
    timer = threading.Timer(timeout, engine.stop)
    timer.start()
    try:
        out.result = engine.run()
    finally:
        timer.cancel()
        for collector in collectors.values():
            clear(collector)
    return out


def replay(
    spec: PipelineSpec,
    base_dir: str | Path,
    step: str,
    ids: list[int],
    registry: Registry | None = None,
) -> RunResult:
    """Send dead-lettered records of ``step`` through the pipeline again, from that step.

    Records re-enter where they failed: as the input of a step or sink, or as the output of a
    source for parse errors. The replay has its own scope, so its checkpoint and file names never
    clash with the main run. Replayed ledger rows are marked; ones that fail again are
    dead-lettered anew.
    """
    engine_probe = Engine(spec, base_dir, registry=registry)
    store = engine_probe.state
    letters = store.dead_letters(spec.name, step=step, ids=ids or None, include_replayed=False)
    if not letters:
        raise ConfigError(f"no dead letters to replay for step {step!r}")
    records = []
    for letter in letters:
        try:
            record = orjson.loads(letter.record)
        except orjson.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            raise ConfigError(
                f"dead letter {letter.id} holds text that is not a JSON object "
                f"({letter.record[:60]!r}); fix the input and re-run instead"
            )
        records.append(record)
    data = spec_data(spec)
    names = {n["name"]: kind for kind in ("sources", "steps", "sinks") for n in data[kind]}
    if step not in names:
        raise ConfigError(f"the pipeline has no step named {step!r}")
    replay_source = {"type": "memory", "name": REPLAY_SOURCE, "records": records}
    if names[step] == "sources":
        data["sources"] = [
            replay_source | {"name": s["name"]}
            if s["name"] == step
            else {"type": "memory", "name": s["name"], "records": []}
            for s in data["sources"]
        ]
    else:
        data["sources"] = [
            {"type": "memory", "name": s["name"], "records": []} for s in data["sources"]
        ] + [replay_source]
        for node in data[names[step]]:
            if node["name"] == step:
                node["input"] = REPLAY_SOURCE
    scope = "replay-" + time.strftime("%Y%m%dT%H%M%S")
    result = Engine(
        revalidate(data, registry), base_dir, registry=registry, scope=scope, state=store
    ).run()
    store.mark_replayed([letter.id for letter in letters])
    store.close()
    return result


@dataclass
class TestOutcome:
    """What a YAML-declared pipeline test saw at the places it checked."""

    outputs: dict[str, pl.DataFrame]
    result: RunResult


def run_with_records(
    spec: PipelineSpec,
    base_dir: str | Path,
    records: Mapping[str, list[dict[str, Any]]],
    registry: Registry | None = None,
) -> TestOutcome:
    """Run with each source replaced by inline records and each sink by a memory sink.

    Returns every step's output and what each sink committed, keyed by name.
    """
    data = spec_data(spec)
    for source in data["sources"]:
        name = source["name"]
        source.clear()
        source.update(type="memory", name=name, records=records.get(name, []))
    collectors = _without_sinks(data, f"test-{uuid.uuid4().hex}")
    test_spec = revalidate(data, registry)
    outputs: dict[str, list[pl.DataFrame]] = {}

    def on_output(node: str, port: str, frame: pl.DataFrame) -> None:
        key = node if port == "out" else f"{node}.{port}"
        outputs.setdefault(key, []).append(frame)

    result = Engine(
        test_spec,
        base_dir,
        registry=registry,
        observer=RunObserver(on_output=on_output),
        scope="test",
        state=StateStore(":memory:"),
    ).run()
    frames = {k: pl.concat(v, how="diagonal_relaxed") for k, v in outputs.items()}
    for name, collector in collectors.items():
        frames[name] = collected(collector)
        clear(collector)
    return TestOutcome(frames, result)


def schema_plans(
    spec: PipelineSpec, base_dir: str | Path, registry: Registry | None = None
) -> dict[str, list[str]]:
    """The DDL each schema-managing sink would run, from the schema of a preview's records.

    Nothing is written: the preview replaces sinks by memory sinks, and planning only reads
    the database catalogue.
    """
    registry = registry or default_registry
    shown = preview(spec, base_dir, rows=100, registry=registry)
    graph = build_graph(spec, registry)
    plans: dict[str, list[str]] = {}
    for node in graph.sinks:
        if not isinstance(node.component, PlansSchema):
            continue
        frames = [
            shown.frames.get(name if port == MAIN_PORT else f"{name}.{port}")
            for name, port in node.inputs
        ]
        present = [f for f in frames if f is not None]
        if not present:
            raise PipelineError(
                f"sink {node.name!r}: no records reached it in a preview, so its table's "
                "columns are unknown; run the pipeline once, or declare `columns`"
            )
        schema = pl.concat(present, how="diagonal_relaxed").schema
        ctx = Context(
            pipeline=spec.name,
            name=node.name,
            base_dir=Path(base_dir).resolve(),
            state_dir=Path(base_dir).resolve() / ".tideflow",
            stop_event=threading.Event(),
            scope="plan",
        )
        plans[node.name] = node.component.plan_ddl(ctx, schema)
    return plans

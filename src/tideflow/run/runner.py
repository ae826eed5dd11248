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

from tideflow.core.contracts import MAIN_PORT, UNREAD, Context, PlansSchema
from tideflow.core.engine import Engine
from tideflow.core.observer import RunObserver
from tideflow.core.result import RunResult
from tideflow.errors import ConfigError, PipelineError
from tideflow.registry import Registry, default_registry
from tideflow.results import OutputTap, PipelineResult, dead_letter_frame
from tideflow.run.plan import engine_for
from tideflow.secrets import redact
from tideflow.spec.graph import build_graph
from tideflow.spec.loader import revalidate, spec_data
from tideflow.spec.models import PipelineSpec
from tideflow.state.locate import open_state_store
from tideflow.state.store import StateStore

REPLAY_SOURCE = "dead_letter_replay"


def run(
    spec: PipelineSpec,
    base_dir: str | Path = ".",
    observer: RunObserver | None = None,
    registry: Registry | None = None,
    handle_signals: bool = False,
    scope: str = "main",
    state: StateStore | None = None,
    worker: str | None = None,
    from_scratch: bool = False,
) -> RunResult:
    """Run a pipeline to the end (or until stopped); ``worker`` runs it as one worker of
    its consumer group (see :mod:`tideflow.run.workers`), cut into stages joined by
    repartition topics where a step keeps state by keys the topics are not partitioned by
    (:mod:`tideflow.run.stages`). ``from_scratch`` first clears the output the sinks can
    clear, the state and the dead letters."""
    if worker is not None and state is None:
        from tideflow.run import stages as staging
        from tideflow.state.locate import state_dir

        base = Path(base_dir).resolve()
        partitions = staging.source_partitions(state_dir(spec.state, base))
        planned = staging.plan_stages(spec, registry, partitions)
        if len(planned) > 1:
            if from_scratch:
                raise ConfigError(
                    "from_scratch cannot start a group worker over: start over with one "
                    "plain run, then start the workers"
                )
            engines = staging.new_engines(planned, base, registry, observer, worker, spec.name)
            return staging.run_stages(planned, engines, handle_signals)
    engine = engine_for(
        spec,
        base_dir,
        registry=registry,
        observer=observer,
        scope=scope,
        state=state,
        worker=worker,
        from_scratch=from_scratch,
    )
    return engine.run(handle_signals=handle_signals)


FRESH_SOURCES = ("file", "generate", "memory", "sql", "http")
"""Sources a fresh run may read: they read without taking anything away from the pipeline's
own runs (a broker, queue or webhook source would consume what its group or queue holds)."""
FRESH_SINKS = ("memory", "stdout")
"""Sinks a fresh run may write: they keep nothing outside the process, so the output of
earlier runs is never written a second time."""


def check_fresh(spec: PipelineSpec) -> None:
    """Refuse a fresh run (no stored state) that would consume records of the pipeline's own
    runs or write its output a second time."""
    issues = [
        f"source {s.name!r} ({s.type}) takes what it reads away from the pipeline's own "
        "consumer group or queue"
        for s in spec.all_sources
        if s.type not in FRESH_SOURCES
    ]
    sinks = [*spec.all_sinks, *([spec.on_error.sink] if spec.on_error.sink else [])]
    issues += [
        f"sink {s.name or s.type!r} ({s.type}) would write the output of earlier runs a second time"
        for s in sinks
        if s.type not in FRESH_SINKS
    ]
    if issues:
        raise ConfigError(
            "a fresh run reads every source from its start and keeps no state, so it is "
            "refused here: "
            + "; ".join(issues)
            + ". Explore with tf.collect(...) or tf.stdout() sinks (and a copy of the input), "
            "or start the pipeline itself over with run(from_scratch=True), which clears its "
            "output and state first"
        )


def run_kept(
    spec: PipelineSpec,
    base_dir: str | Path,
    tap: OutputTap,
    observer: RunObserver | None = None,
    fresh: bool = False,
    registry: Registry | None = None,
    from_scratch: bool = False,
) -> PipelineResult:
    """A normal run (or, with ``fresh``, one with a state store in memory) that keeps each
    source's, step's and sink's output in ``tap``, for notebooks."""
    state: StateStore | None = None
    if fresh:
        # Imported where used (here, in preview and in run_with_records): the memory
        # connector builds its pydantic models at import, which a plain run does not need.
        from tideflow.connectors.memory import clear

        check_fresh(spec)
        for sink in spec.all_sinks:
            if sink.type == "memory":
                clear(getattr(sink, "collector"))  # noqa: B009  # the memory sink's setting
        state = StateStore(":memory:")
    try:
        result = run(
            spec,
            base_dir,
            observer=tap.observer(observer),
            registry=registry,
            state=state,
            from_scratch=from_scratch,
        )
        letters = _dead_letters_of_run(spec, base_dir, result, state, tap.keep_rows)
    finally:
        if state is not None:
            state.close()
    return PipelineResult.of(result, tap, output_names(spec, registry), letters, fresh)


def output_names(spec: PipelineSpec, registry: Registry | None = None) -> list[str]:
    """Every source, step and sink by name, in order, with a step's other outputs as
    ``step.port``: the names a run's outputs can be asked for by."""
    registry = registry or default_registry
    names = [source.name or "" for source in spec.all_sources]
    for step in spec.steps:
        names.append(step.name or "")
        ports = registry.get("step", step.type).cls.ports(step)  # type: ignore[attr-defined]
        names += [f"{step.name}.{port}" for port in ports if port != MAIN_PORT]
    return names + [sink.name or "" for sink in spec.all_sinks]


def _dead_letters_of_run(
    spec: PipelineSpec,
    base_dir: str | Path,
    result: RunResult,
    state: StateStore | None,
    keep_rows: int | None,
) -> tuple[pl.DataFrame, bool] | None:
    """The run's dead letters from the ledger (at most ``keep_rows``) and whether there were
    more; None when they do not go to the ledger."""
    if spec.on_error.action != "dead_letter" or spec.on_error.sink is not None:
        return None
    dead = any(c.get("dead_lettered") for c in result.counts.values())
    if not dead or keep_rows == 0:
        return dead_letter_frame([]), dead
    store = state or open_state_store(spec.state, Path(base_dir).resolve())
    try:
        limit = None if keep_rows is None else keep_rows + 1
        letters = store.ledger.letters(spec.name, run_id=result.run_id, limit=limit)
    finally:
        if state is None:
            store.close()
    cut = keep_rows is not None and len(letters) > keep_rows
    letters = letters[:keep_rows] if keep_rows is not None else letters
    rows = [(d.id, d.step, d.reason, d.record, d.created_at) for d in letters]
    return dead_letter_frame(rows), cut


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
    from tideflow.connectors.memory import clear

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

    engine = engine_for(
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


@dataclass(frozen=True)
class SkippedLetter:
    """A dead letter a replay left alone, and why."""

    id: int
    why: str


def _replayable(letters: list[Any]) -> tuple[list[Any], list[dict[str, Any]], list[SkippedLetter]]:
    """The letters that hold a record (a JSON object) with their records, and the others:
    raw text that never became a record (a broken CSV row, invalid JSON) and a record too long
    to read have no fields to send through the pipeline; they are fixed at the source."""
    kept, records, skipped = [], [], []
    for letter in letters:
        try:
            record = orjson.loads(letter.record)
        except orjson.JSONDecodeError:
            record = None
        if UNREAD in letter.reason:
            skipped.append(
                SkippedLetter(
                    letter.id,
                    "was too long to read (max_record_bytes): its letter keeps only where it "
                    "was and its first bytes",
                )
            )
        elif isinstance(record, dict):
            kept.append(letter)
            records.append(record)
        else:
            excerpt = redact(letter.record[:60])
            skipped.append(
                SkippedLetter(
                    letter.id,
                    f"holds text, not a record ({excerpt!r}); fix the "
                    "input and read it again instead",
                )
            )
    return kept, records, skipped


def replay(
    spec: PipelineSpec,
    base_dir: str | Path,
    step: str,
    ids: list[int],
    registry: Registry | None = None,
    strict: bool = False,
) -> RunResult:
    """Send dead-lettered records of ``step`` through the pipeline again, from that step.

    Records re-enter where they failed: as the input of a step or sink, or as the output of a
    source for parse errors, which first go through the source's parsing settings again
    (``schema_overrides``: their JSON holds the text that was read; one that still does not
    parse is dead-lettered anew). The replay has its own scope, so its checkpoint and file
    names never clash with the main run. Replayed ledger rows are marked; ones that fail
    again are dead-lettered anew. Letters that hold no record (raw text) are skipped, each
    named in the result's notices with the count, and stay in the ledger; ``strict`` refuses
    the replay instead.
    """
    store = open_state_store(spec.state, Path(base_dir).resolve())
    engine_probe = engine_for(spec, base_dir, registry=registry, state=store)
    try:
        letters = store.ledger.letters(
            spec.name, step=step, ids=ids or None, include_replayed=False
        )
        if not letters:
            raise ConfigError(f"no dead letters to replay for step {step!r}")
        unknown = sorted(set(ids) - {letter.id for letter in letters})
        if unknown:
            raise ConfigError(
                f"no dead letter of step {step!r} waiting for a replay has id "
                f"{', '.join(map(str, unknown))} (`tideflow deadletters list --all` shows them)"
            )
        letters, records, skipped = _replayable(letters)
        if skipped and (strict or not letters):
            listed = "\n".join(f"  dead letter {s.id}: {s.why}" for s in skipped)
            reason = "--strict refuses a replay that skips any" if letters else "none is left"
            raise ConfigError(
                f"{len(skipped)} dead letter(s) of step {step!r} cannot be replayed "
                f"({reason}):\n{listed}"
            )
        data = spec_data(spec)
        names = {n["name"]: kind for kind in ("sources", "steps", "sinks") for n in data[kind]}
        if step not in names:
            raise ConfigError(f"the pipeline has no step named {step!r}")
        rejected = None
        replay_source = {"type": "memory", "name": REPLAY_SOURCE, "records": records}
        if names[step] == "sources":
            node = next(n for n in engine_probe.graph.sources if n.name == step)
            frame = pl.from_dicts(records, infer_schema_length=None)
            labels = [f"dead letter {letter.id} replayed" for letter in letters]
            frame, rejected = node.component.reparse(frame, labels)
            replay_source["records"] = frame
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
            for node_data in data[names[step]]:
                if node_data["name"] == step:
                    node_data["input"] = REPLAY_SOURCE
        scope = "replay-" + time.strftime("%Y%m%dT%H%M%S")
        engine = engine_for(
            revalidate(data, registry), base_dir, registry=registry, scope=scope, state=store
        )
        # Letters that fail again join the pipeline's ledger, not the replay's scope: listed
        # and replayable like the first ones.
        engine.dead_letter_ledger = spec.name
        if rejected is not None and rejected.height:
            source = next(n for n in engine.graph.sources if n.name == step)
            source.component.rejected = rejected
        result = engine.run()
        store.ledger.mark_replayed([letter.id for letter in letters])
    finally:
        store.close()
    if skipped:
        result.notices += [f"dead letter {s.id} skipped: {s.why}" for s in skipped]
        result.notices.append(
            f"{len(skipped)} dead letter(s) skipped, {len(letters)} replayed "
            "(--strict refuses a replay that would skip any)"
        )
    return result


@dataclass
class TestOutcome:
    """What a YAML-declared pipeline test saw at the places it checked."""

    outputs: dict[str, pl.DataFrame]
    result: RunResult


def run_with_records(
    spec: PipelineSpec,
    base_dir: str | Path,
    records: Mapping[str, list[dict[str, Any]] | pl.DataFrame],
    registry: Registry | None = None,
) -> TestOutcome:
    """Run with each source replaced by inline records and each sink by a memory sink.

    Returns every step's output and what each sink committed, keyed by name.
    """
    from tideflow.connectors.memory import clear, collected

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

    result = engine_for(
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

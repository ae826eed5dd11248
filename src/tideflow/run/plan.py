"""From a validated pipeline spec to a running engine: build the graph through a registry,
open the state store the spec names, and hand both to :class:`~tideflow.core.engine.Engine`
as a :class:`~tideflow.core.plan.RunPlan` (the engine imports neither ``spec`` nor
``registry`` nor ``state``)."""

from __future__ import annotations

from pathlib import Path

from tideflow.core.engine import Engine
from tideflow.core.graph import Graph, Node
from tideflow.core.observer import RunObserver
from tideflow.core.plan import RunPlan
from tideflow.registry import Registry, default_registry
from tideflow.spec.graph import build_graph
from tideflow.spec.models import PipelineSpec
from tideflow.state.locate import open_state_store
from tideflow.state.store import StateStore


def plan_run(
    spec: PipelineSpec, registry: Registry | None = None, graph: Graph | None = None
) -> RunPlan:
    """The graph of ``spec`` (built through ``registry`` unless given) and the settings the
    engine reads."""
    registry = registry or default_registry
    dead = spec.on_error.sink
    dead_sink = None
    if spec.on_error.action == "dead_letter" and dead is not None:
        component = registry.get("sink", dead.type).cls(dead)
        dead_sink = Node(dead.name or "dead_letters", "sink", dead.type, component)
    return RunPlan(
        name=spec.name,
        graph=graph or build_graph(spec, registry),
        checkpoint=spec.checkpoint,
        on_error=spec.on_error.action,
        dead_letter_sink=dead_sink,
        queue_size=spec.queue_size,
    )


def engine_for(
    spec: PipelineSpec,
    base_dir: str | Path = ".",
    registry: Registry | None = None,
    state: StateStore | None = None,
    observer: RunObserver | None = None,
    scope: str = "main",
    graph: Graph | None = None,
    progress_interval: float = 0.5,
    worker: str | None = None,
    from_scratch: bool = False,
    run_id: str | None = None,
) -> Engine:
    """An engine for one run of ``spec``; without ``state`` it opens the store the spec
    names (relative to ``base_dir``) and closes it when the run ends."""
    base = Path(base_dir).resolve()
    plan = plan_run(spec, registry, graph)
    store = state if state is not None else open_state_store(spec.state, base)
    return Engine(
        plan,
        store,
        base,
        observer=observer,
        scope=scope,
        progress_interval=progress_interval,
        worker=worker,
        from_scratch=from_scratch,
        owns_state=state is None,
        run_id=run_id,
    )

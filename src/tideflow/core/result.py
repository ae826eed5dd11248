"""What a finished run reports: its status, counts per node, checkpoints and the notices for
the person who ran it."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from tideflow.core.status import RunStatus

log = logging.getLogger("tideflow.engine")


@dataclass
class RunResult:
    """What a finished run reports."""

    run_id: str
    pipeline: str
    status: str
    seconds: float
    checkpoints: int
    counts: dict[str, dict[str, Any]]
    notices: list[str] = field(default_factory=list)
    """What the run did not read and why, what changed since, what was cleared: sentences
    for the person who ran it (printed under the summary, in ``--json``)."""
    stopped: bool = False
    unbalanced: list[str] = field(default_factory=list)
    error: str | None = None
    """Why the run failed (status ``failed``), as the exception said it; None otherwise."""

    @property
    def records_in(self) -> int:
        """Records read by all sources."""
        return sum(
            c["out"] + c["dead_lettered"]
            for n, c in self.counts.items()
            if c.get("kind") == "source"
        )


def run_result(run: RunStatus) -> RunResult:
    """The result of ``run``, which ended without failing: ``succeeded``, ``stopped``, or
    ``incomplete`` when a source says it did not read all it was asked to."""
    counts = run.counts()
    unbalanced = [n.name for n in run.plan.nodes() if not n.counts.balanced()]
    for name in unbalanced:
        log.error("record accounting does not balance for %s: %s", name, counts[name])
    incomplete = [
        f"source {node.name!r}: {why}"
        for node in run.graph.sources
        if (why := node.component.incomplete())
    ]
    status = "stopped" if run.stop_event.is_set() else "succeeded"
    return RunResult(
        run_id=run.run_id,
        pipeline=run.plan.name,
        status="incomplete" if incomplete and status == "succeeded" else status,
        seconds=run.elapsed,
        checkpoints=run.checkpoints,
        counts=counts,
        stopped=run.stop_event.is_set(),
        unbalanced=unbalanced,
        notices=run.resumption.notices + source_notices(run) + incomplete,
    )


def source_notices(run: RunStatus) -> list[str]:
    """What the sources of ``run`` say about what they did not read and why."""
    notices = []
    for node in run.graph.sources:
        notices += [f"source {node.name!r}: {text}" for text in node.component.notices()]
    return notices

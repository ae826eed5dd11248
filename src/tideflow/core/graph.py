"""The graph the engine runs: nodes (sources, steps, sinks) in topological order, who
consumes each output, and each node's record counts. ``tideflow.spec.graph`` builds it from
a validated pipeline spec."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tideflow.core.contracts import Kind
from tideflow.core.expressions import Expression


@dataclass
class Counts:
    """Per-node record counts; ``in + generated == out + filtered + dead + consumed`` holds."""

    records_in: int = 0
    generated: int = 0
    out: int = 0
    filtered: int = 0
    dead: int = 0
    consumed: int = 0
    batches: int = 0
    seconds: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    """What the component reports through ``Context.metrics`` (retries, outage seconds)."""

    def balanced(self) -> bool:
        """Does every record that came in have a fate?"""
        return (
            self.records_in + self.generated == self.out + self.filtered + self.dead + self.consumed
        )

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for JSON and summaries."""
        return {
            "in": self.records_in,
            "out": self.out,
            "filtered": self.filtered,
            "dead_lettered": self.dead,
            "consumed": self.consumed,
            "generated": self.generated,
            "batches": self.batches,
            "seconds": round(self.seconds, 6),
        }


@dataclass
class Node:
    """One source, step or sink in the graph."""

    name: str
    kind: Kind
    type_name: str
    component: Any
    inputs: list[tuple[str, str]] = field(default_factory=list)
    when: Expression | None = None
    counts: Counts = field(default_factory=Counts)


@dataclass
class Graph:
    """Nodes in topological order and who consumes each (node, port)."""

    sources: list[Node]
    steps: list[Node]
    sinks: list[Node]
    consumers: dict[tuple[str, str], list[Node]]

    @property
    def nodes(self) -> list[Node]:
        """Every node, sources first, in topological order."""
        return [*self.sources, *self.steps, *self.sinks]

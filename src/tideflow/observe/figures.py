"""Figures read from a run's counts: what components report beside their record counts.

Shared by the Prometheus exporter (:mod:`tideflow.observe.metrics`) and the alert rules
(:mod:`tideflow.observe.alerts`), which also run where ``prometheus_client`` is not installed.
"""

from __future__ import annotations

from typing import Any

OUTCOMES = ("in", "out", "filtered", "dead_lettered", "consumed", "generated")
"""Record counts exported per step."""
_PLAIN = {*OUTCOMES, "batches", "seconds", "kind", "type"}


def figures(node: dict[str, Any]) -> dict[str, float]:
    """The numbers a component reported beside its record counts: those under ``report``
    (``Context.metrics`` and ``report()``, as the engine's ``counts()`` puts them) and any
    other numeric key next to the counts."""
    found = {
        k: float(v)
        for k, v in node.items()
        if k not in _PLAIN and isinstance(v, int | float) and not isinstance(v, bool)
    }
    report = node.get("report")
    if isinstance(report, dict):
        found.update(
            (k, float(v))
            for k, v in report.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        )
    return found


def source_lag(counts: dict[str, dict[str, Any]]) -> tuple[float | None, float | None]:
    """The largest lag any source of a run reports: (seconds, records); None where no
    source reports it. ``lag`` is an older name of ``lag_seconds``."""
    seconds: list[float] = []
    records: list[float] = []
    for node in counts.values():
        if node.get("kind") != "source":
            continue
        found = figures(node)
        if "lag_seconds" in found or "lag" in found:
            seconds.append(found.get("lag_seconds", found.get("lag", 0.0)))
        if "lag_records" in found:
            records.append(found["lag_records"])
    return (max(seconds) if seconds else None, max(records) if records else None)

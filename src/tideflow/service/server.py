"""The server's parts wired together: the pipeline catalog, runs in processes, the
scheduler, metrics and alerts, and the views of them the routes return."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
from fastapi import Request

from tideflow.observe.alerts import AlertManager
from tideflow.observe.figures import source_lag
from tideflow.observe.metrics import PipelineMetrics
from tideflow.service.catalog import Catalog, Entry
from tideflow.service.grouplag import GroupLagCollector
from tideflow.service.policy import Policy
from tideflow.service.runs import ACTIVE, RunManager
from tideflow.service.scheduler import Scheduler
from tideflow.service.web import STREAM_INTERVAL, STREAM_LIFETIME, STREAM_RETRY_MS, sse
from tideflow.state.locate import open_state_store


class Service:
    """The server's parts, wired together."""

    def __init__(self, folder: str | Path, policy: Policy | None = None) -> None:
        self.catalog = Catalog(folder, policy)
        self.metrics = PipelineMetrics()
        self.metrics.registry.register(GroupLagCollector(self.catalog))
        self.alerts = AlertManager()
        self.runs = RunManager(self.catalog, self.metrics)
        self.scheduler = Scheduler(self.catalog, self.runs)
        self._alert_runs: dict[str, str] = {}

    def tick(self) -> None:
        """One background pass: scheduled starts, then alert rules."""
        self.scheduler.tick()
        self.check_alerts()

    def check_alerts(self, now: float | None = None) -> None:
        """Sample every pipeline with alert rules and evaluate them."""
        for entry in self.catalog.entries():
            if entry.spec is None or not entry.spec.alerts:
                continue
            run = self.runs.active(entry.id)
            if run is not None:
                if self._alert_runs.get(entry.id) != run.id:
                    self.alerts.reset(entry.id)
                    self._alert_runs[entry.id] = run.id
                lag, lag_records = source_lag(run.counts)
                self.alerts.observe(
                    entry.id,
                    run.records_in,
                    run.dead_lettered,
                    lag,
                    True,
                    now=now,
                    matches=run.matches,
                    lag_records=lag_records,
                )
            else:
                self.alerts.observe(entry.id, 0, 0, None, False, now=now)
            self.alerts.evaluate(entry.id, list(entry.spec.alerts), now=now)

    # -- views ---------------------------------------------------------------------------

    def pipeline_summary(self, entry: Entry) -> dict[str, Any]:
        """A pipeline for the list view."""
        schedule = self.scheduler.describe(entry.id) if entry.spec is not None else None
        return {
            "id": entry.id,
            "name": entry.name,
            "file": entry.path.name,
            "description": entry.spec.description if entry.spec is not None else None,
            "valid": entry.spec is not None,
            "issues": entry.issues,
            **self._run_state(entry.id),
            "schedule": schedule,
            "alerts": [a.name for a in entry.spec.alerts] if entry.spec is not None else [],
        }

    def pipeline_detail(self, entry: Entry) -> dict[str, Any]:
        """A pipeline for its own page: the summary, the text, the graph and the live run."""
        latest = self.runs.latest(entry.id)
        detail = self.pipeline_summary(entry)
        detail.update(
            yaml=entry.text,
            graph=entry.graph(),
            bounded=entry.bounded if entry.spec is not None else None,
            run=latest.summary() if latest is not None else None,
            taps=sorted(latest.taps) if latest is not None else [],
        )
        return detail

    def live(self, pid: str) -> dict[str, Any]:
        """What changes while a pipeline runs: its status, throughput and latest run (with
        counts, lag, end-to-end latency and state sizes) and the steps with a tap."""
        latest = self.runs.latest(pid)
        return {
            **self._run_state(pid),
            "run": latest.summary() if latest is not None else None,
            "taps": sorted(latest.taps) if latest is not None else [],
        }

    def _run_state(self, pid: str) -> dict[str, Any]:
        """The latest run's status and figures, as the list and the live stream show them."""
        latest = self.runs.latest(pid)
        active = latest is not None and latest.status in ACTIVE
        return {
            "status": latest.status if latest is not None else "idle",
            "active": active,
            "rate": latest.rate if latest is not None and active else 0.0,
            "records_in": latest.records_in if latest is not None else 0,
            "dead_lettered": latest.dead_lettered if latest is not None else 0,
            "run_id": latest.id if latest is not None else None,
        }

    async def stream(
        self,
        pid: str,
        request: Request,
        interval: float = STREAM_INTERVAL,
        lifetime: float = STREAM_LIFETIME,
    ) -> AsyncIterator[bytes]:
        """Server-sent events of a pipeline's latest run: ``run`` (see :meth:`live`)
        whenever it changes, ``tap`` ``{step, records}`` whenever a step's latest records
        change, and ``end`` once no run is active, after which the stream closes (the
        browser reconnects after ``retry``; a started run is followed from then on)."""
        yield f"retry: {STREAM_RETRY_MS}\n\n".encode()
        sent_live = b""
        sent_taps: dict[str, Any] = {}
        deadline = time.monotonic() + lifetime
        quiet_since = time.monotonic()
        while True:
            live = self.live(pid)
            packed = orjson.dumps(live, default=str)
            if packed != sent_live:
                sent_live = packed
                quiet_since = time.monotonic()
                yield sse("run", live)
            run = self.runs.latest(pid)
            for step, records in list(run.taps.items()) if run is not None else []:
                # The reader thread swaps in a new list per update: identity means "unchanged".
                if sent_taps.get(step) is not records:
                    sent_taps[step] = records
                    yield sse("tap", {"step": step, "records": records})
            if not live["active"]:
                yield sse("end", {"status": live["status"], "run_id": live["run_id"]})
                return
            if time.monotonic() >= deadline or await request.is_disconnected():
                return
            if time.monotonic() - quiet_since >= 15:
                quiet_since = time.monotonic()
                yield b": keep-alive\n\n"  # a comment: proxies see traffic, clients ignore it
            await asyncio.sleep(interval)

    def history(self, entry: Entry, limit: int) -> list[dict[str, Any]]:
        """Run history from the state store, with how each run was started where known."""
        if entry.spec is None:
            return []
        store = open_state_store(entry.spec.state, entry.path.parent)
        try:
            rows = store.history.runs(entry.spec.name, limit=limit)
        finally:
            store.close()
        known = {r.id: r for r in self.runs.runs(entry.id)}
        for row in rows:
            run = known.get(row["id"])
            row["trigger"] = run.trigger if run is not None else None
            if run is not None and row["status"] == "running" and run.status not in ACTIVE:
                row["status"] = run.status
        return rows

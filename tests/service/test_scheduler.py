"""Scheduled runs: intervals and cron, never overlapping, missed runs recorded."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

from tests.service.conftest import demo_pipeline, wait_for

from tideflow.observe.metrics import PipelineMetrics
from tideflow.service.catalog import Catalog
from tideflow.service.runs import RunManager
from tideflow.service.scheduler import Scheduler, next_due
from tideflow.spec.models import ScheduleSpec


def test_next_due_for_cron_and_interval() -> None:
    start = datetime(2026, 3, 1, 10, 2, 30, tzinfo=UTC).timestamp()
    due = next_due(ScheduleSpec(cron="*/5 * * * *"), start)
    assert datetime.fromtimestamp(due, UTC) == datetime(2026, 3, 1, 10, 5, tzinfo=UTC)
    assert next_due(ScheduleSpec(every=90), start) == start + 90


def test_scheduled_runs_start_never_overlap_and_missed_ones_are_recorded(folder: Path) -> None:
    slow = demo_pipeline(count=4000, rate=1000)  # about four seconds
    (folder / "demo.yaml").write_text(slow + "schedule:\n  every: 1\n", encoding="utf-8")
    (folder / "endless.yaml").write_text(
        "name: endless\nsource: {type: generate, rate: 10}\nsink: {type: stdout}\n"
        "schedule: {every: 1}\n",
        encoding="utf-8",
    )
    catalog = Catalog(folder)
    runs = RunManager(catalog, PipelineMetrics())
    scheduler = Scheduler(catalog, runs)
    try:
        now = time.time()
        scheduler.tick(now)  # first sight: only computes the next start
        assert runs.runs() == []
        described = scheduler.describe("demo")
        assert described is not None and described["next"] == now + 1
        endless = scheduler.describe("endless")
        assert endless is not None and "unbounded" in str(endless["problem"])

        scheduler.tick(now + 1)
        [run] = runs.runs("demo")
        assert run.trigger == "schedule"
        scheduler.tick(now + 2)  # still running: missed, not started beside it
        scheduler.tick(now + 5.5)  # three more periods passed at once: 3, 4 missed, 5 missed
        assert len(runs.runs("demo")) == 1
        assert [m["due_at"] - now for m in scheduler.missed] == [2, 3, 4, 5]
        wait_for(lambda: run.status == "succeeded", timeout=60)
        history = runs.runs("demo")
        from tideflow.state.locate import open_state_store

        store = open_state_store(None, folder)
        try:
            rows = store.history.runs("demo", limit=20)
        finally:
            store.close()
        assert sorted(r["status"] for r in rows) == ["missed"] * 4 + ["succeeded"]
        assert history[0].id == next(r["id"] for r in rows if r["status"] == "succeeded")
        assert runs.runs("endless") == []  # unbounded pipelines are never scheduled
    finally:
        runs.shutdown()

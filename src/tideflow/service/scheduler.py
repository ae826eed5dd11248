"""Cron and interval starts for bounded pipelines.

Every tick, each scheduled pipeline's due times up to now are taken in order: the latest
starts a run unless one is still active; every other one (the run was still going, or the
server was busy or down for several periods) is recorded as a missed run in the pipeline's
history. Runs of a pipeline never overlap. Cron expressions are evaluated in UTC.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tideflow.secrets import redact
from tideflow.service.catalog import Catalog, Conflict
from tideflow.service.runs import RunManager
from tideflow.spec.models import ScheduleSpec

log = logging.getLogger("tideflow.scheduler")
MAX_MISSED_RECORDED = 100
"""Missed starts recorded at once (a server down for a week does not write thousands)."""


def next_due(schedule: ScheduleSpec, after: float) -> float:
    """The first start strictly after ``after`` (Unix seconds)."""
    if schedule.every is not None:
        return after + schedule.every
    from croniter import croniter

    base = datetime.fromtimestamp(after, UTC)
    due: datetime = croniter(str(schedule.cron), base).get_next(datetime)
    return due.timestamp()


def cron_problem(expression: str) -> str | None:
    """Why croniter refuses a cron expression, or None when it is valid."""
    from croniter import croniter

    if croniter.is_valid(expression):
        return None
    return f"{expression!r} is not a valid cron expression"


@dataclass
class _Slot:
    schedule: ScheduleSpec
    due: float


class Scheduler:
    """Starts scheduled runs; :meth:`tick` does one pass (the server calls it every second)."""

    def __init__(self, catalog: Catalog, runs: RunManager) -> None:
        self.catalog = catalog
        self.runs = runs
        self._slots: dict[str, _Slot] = {}
        self.missed: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def describe(self, pid: str) -> dict[str, Any] | None:
        """The pipeline's schedule and next start, for the API."""
        entry = self.catalog.get(pid)
        if entry.spec is None or entry.spec.schedule is None:
            return None
        schedule = entry.spec.schedule
        slot = self._slots.get(pid)
        problem = self._problem(entry.bounded, schedule)
        upcoming = None
        if problem is None:
            current = slot is not None and slot.schedule == schedule
            upcoming = slot.due if current and slot else next_due(schedule, time.time())
        return {
            "cron": schedule.cron,
            "every": schedule.every,
            "next": upcoming,
            "problem": problem,
        }

    @staticmethod
    def _problem(bounded: bool, schedule: ScheduleSpec) -> str | None:
        if not bounded:
            return "not scheduled: a source never ends by itself (unbounded pipeline)"
        if schedule.cron is not None:
            return cron_problem(schedule.cron)
        return None

    def tick(self, now: float | None = None) -> None:
        """Start what is due; record what was missed."""
        at = time.time() if now is None else now
        with self._lock:
            scheduled = {}
            for entry in self.catalog.entries():
                if entry.spec is None or entry.spec.schedule is None:
                    continue
                if self._problem(entry.bounded, entry.spec.schedule) is not None:
                    continue
                scheduled[entry.id] = entry.spec.schedule
            for pid in set(self._slots) - set(scheduled):
                del self._slots[pid]
            for pid, schedule in scheduled.items():
                slot = self._slots.get(pid)
                if slot is None or slot.schedule != schedule:
                    # New or changed schedule: the first start is the next due time from now.
                    self._slots[pid] = _Slot(schedule, next_due(schedule, at))
                    continue
                self._fire(pid, slot, at)

    def _fire(self, pid: str, slot: _Slot, now: float) -> None:
        due_times: list[float] = []
        while slot.due <= now and len(due_times) <= MAX_MISSED_RECORDED:
            due_times.append(slot.due)
            slot.due = next_due(slot.schedule, slot.due)
        while slot.due <= now:  # far behind: skip without recording each one
            slot.due = next_due(slot.schedule, slot.due)
        if not due_times:
            return
        for due in due_times[:-1]:
            self._missed(pid, due, "the server could not start it in time")
        try:
            self.runs.start(pid, trigger="schedule")
        except Conflict:
            self._missed(pid, due_times[-1], "the previous run was still going")
        except Exception as exc:  # noqa: BLE001 - one pipeline's failure must not stop others
            log.error("%s: scheduled start failed: %s", pid, redact(str(exc)))

    def _missed(self, pid: str, due: float, reason: str) -> None:
        self.missed.append({"pipeline": pid, "due_at": due, "reason": reason})
        del self.missed[:-1000]
        try:
            self.runs.record_missed(pid, due, reason)
        except Exception as exc:  # noqa: BLE001 - recording is best effort
            log.warning("%s: could not record a missed run: %s", pid, redact(str(exc)))


class Ticker:
    """A daemon thread calling ``fn`` every ``interval`` seconds until stopped."""

    def __init__(self, fn: Callable[[], None], interval: float) -> None:
        self.fn = fn
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tideflow-ticker", daemon=True)

    def start(self) -> None:
        """Start ticking."""
        self._thread.start()

    def stop(self) -> None:
        """Stop after the current tick."""
        self._stop.set()
        self._thread.join(5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.fn()
            except Exception as exc:  # the ticker must survive any one failure
                log.exception("background tick failed: %s", redact(str(exc)))

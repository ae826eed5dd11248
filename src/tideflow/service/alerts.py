"""Alert rules from pipeline files, checked against live runs, with notifications.

Each rule is a small state machine: *ok* -> *pending* (the condition holds) -> *firing* (it
held for ``for`` seconds: notify once) -> notify again every ``repeat`` seconds while it holds
-> *ok* with a resolved notification when it clears. Samples of each pipeline's cumulative
counts are taken every tick, so rates are computed over exactly the rule's window.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from tideflow.secrets import redact
from tideflow.spec.models import AlertSpec, NotifySpec

log = logging.getLogger("tideflow.alerts")
WEBHOOK_TIMEOUT = 5.0
"""Seconds a webhook may take to answer."""
_SAMPLE_HORIZON = 3600.0
_LAG_METRICS = ("source_lag", "source_lag_records")
"""Rules on a gauge that must hold for ``for`` seconds (the others judge a window)."""


@dataclass
class Sample:
    """A pipeline's cumulative counts at one moment."""

    at: float
    records: float
    dead: float
    lag: float | None
    running: bool
    matches: dict[str, float]
    lag_records: float | None = None


@dataclass
class _RuleState:
    holding_since: float | None = None
    firing: bool = False
    last_sent: float = 0.0
    value: float | None = None


def deliver(notify: NotifySpec, event: dict[str, Any]) -> None:
    """Send one notification (blocking; call it off the request path)."""
    if notify.type == "log":
        level = logging.INFO if event["state"] == "resolved" else logging.WARNING
        log.log(level, "%s", event["message"])
        return
    assert notify.url is not None
    if not notify.url.lower().startswith(("http://", "https://")):
        log.warning(
            "alert %s: webhook URL must be http(s), not %s", event["alert"], redact(notify.url)
        )
        return
    body = {"text": event["message"]} if notify.format == "slack" else event
    request = urllib.request.Request(
        notify.url,
        data=orjson.dumps(body),
        headers={"Content-Type": "application/json", "User-Agent": "tideflow-alerts"},
        method="POST",
    )
    try:
        # nosec B310: the scheme is checked above (http or https only)
        with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT) as response:  # nosec B310
            response.read(1024)
    except Exception as exc:  # noqa: BLE001 - a failed notification is logged, never raised
        log.warning(
            "alert %s: webhook %s failed: %s", event["alert"], redact(notify.url), redact(str(exc))
        )


class AlertManager:
    """Evaluates every pipeline's rules; keeps recent alert events for the UI."""

    def __init__(self, send: Callable[[NotifySpec, dict[str, Any]], None] | None = None) -> None:
        self._send = send or deliver
        self._samples: dict[str, deque[Sample]] = {}
        self._states: dict[tuple[str, str], _RuleState] = {}
        self.events: deque[dict[str, Any]] = deque(maxlen=500)
        self._lock = threading.Lock()

    def observe(
        self,
        pipeline: str,
        records: float,
        dead: float,
        lag: float | None,
        running: bool,
        now: float | None = None,
        matches: dict[str, float] | None = None,
        lag_records: float | None = None,
    ) -> None:
        """Record a pipeline's cumulative counts right now: records read, dead-lettered,
        per `matching_records` rule the records that matched its condition, and the largest
        source lag in seconds (``lag``) and in records (``lag_records``), where reported."""
        at = time.time() if now is None else now
        samples = self._samples.setdefault(pipeline, deque())
        samples.append(Sample(at, records, dead, lag, running, dict(matches or {}), lag_records))
        while samples and samples[0].at < at - _SAMPLE_HORIZON:
            samples.popleft()

    def reset(self, pipeline: str) -> None:
        """Forget a pipeline's samples (a new run starts its counts from zero)."""
        self._samples.pop(pipeline, None)

    def _window(self, pipeline: str, seconds: float, now: float) -> list[Sample] | None:
        """Samples covering the last ``seconds``, or None while they do not reach back."""
        samples = list(self._samples.get(pipeline, ()))
        older = [s for s in samples if s.at <= now - seconds]
        if not older:
            return None
        return [older[-1], *[s for s in samples if s.at > now - seconds]]

    def condition(self, pipeline: str, rule: AlertSpec, now: float) -> tuple[bool, float | None]:
        """Does the rule's condition hold now, and the value it was judged on."""
        samples = self._samples.get(pipeline)
        if not samples or not samples[-1].running:
            return False, None
        last = samples[-1]
        if rule.metric in _LAG_METRICS:
            lag = last.lag if rule.metric == "source_lag" else last.lag_records
            if lag is None:
                return False, None
            return lag > float(rule.above or 0), lag
        window = self._window(pipeline, rule.for_, now)
        if window is None or not all(s.running for s in window):
            return False, None
        first = window[0]
        if rule.metric == "matching_records":
            matched = last.matches.get(rule.name, 0.0) - first.matches.get(rule.name, 0.0)
            return matched > float(rule.above or 0), matched
        read = last.records - first.records
        if rule.metric == "no_records":
            return read <= 0, read
        if read <= 0:
            return False, 0.0
        rate = (last.dead - first.dead) / read
        return rate > float(rule.above or 0), rate

    def evaluate(
        self, pipeline: str, rules: list[AlertSpec], now: float | None = None
    ) -> list[dict[str, Any]]:
        """Check a pipeline's rules; send and return the notifications due now."""
        at = time.time() if now is None else now
        sent = []
        for rule in rules:
            state = self._states.setdefault((pipeline, rule.name), _RuleState())
            # `for` is already the window of rate and no-records rules; lag must persist.
            holds, value = self.condition(pipeline, rule, at)
            state.value = value
            if holds:
                if state.holding_since is None:
                    state.holding_since = at
                persisted = rule.metric not in _LAG_METRICS or at - state.holding_since >= rule.for_
                due_repeat = (
                    state.firing and rule.repeat is not None and at - state.last_sent >= rule.repeat
                )
                if persisted and (not state.firing or due_repeat):
                    sent.append(self._notify(pipeline, rule, "firing", value, at, state.firing))
                    state.firing, state.last_sent = True, at
            else:
                state.holding_since = None
                if state.firing:
                    sent.append(self._notify(pipeline, rule, "resolved", value, at, False))
                    state.firing = False
        return sent

    def firing(self) -> list[dict[str, Any]]:
        """Rules firing now."""
        return [
            {"pipeline": p, "alert": a, "value": s.value, "since": s.holding_since}
            for (p, a), s in self._states.items()
            if s.firing
        ]

    def _notify(
        self,
        pipeline: str,
        rule: AlertSpec,
        state: str,
        value: float | None,
        at: float,
        repeat: bool,
    ) -> dict[str, Any]:
        shown = "n/a" if value is None else f"{value:.4g}"
        what = {
            "dead_letter_rate": f"dead-letter rate {shown} above {rule.above}",
            "no_records": f"no records read for {rule.for_:g}s",
            "source_lag": f"source lag {shown}s above {rule.above}s",
            "source_lag_records": f"source lag {shown} records above {rule.above:g}"
            if rule.above is not None
            else "",
            "matching_records": f"{shown} records at {rule.step} matched `{rule.where}` in "
            f"{rule.for_:g}s (above {rule.above:g})"
            if rule.above is not None
            else "",
        }[rule.metric]
        if state == "resolved":
            message = f"[tideflow] RESOLVED {pipeline}/{rule.name}: {rule.metric} is back to normal"
        else:
            again = " (still firing)" if repeat else ""
            message = f"[tideflow] FIRING {pipeline}/{rule.name}: {what}{again}"
        event = {
            "pipeline": pipeline,
            "alert": rule.name,
            "state": state,
            "metric": rule.metric,
            "value": value,
            "threshold": rule.above,
            "for": rule.for_,
            "at": datetime.fromtimestamp(at, UTC).isoformat(),
            "message": redact(message),
        }
        with self._lock:
            self.events.appendleft(event)
        for notify in rule.notify:
            threading.Thread(
                target=self._send, args=(notify, event), name="alert-notify", daemon=True
            ).start()
        return event

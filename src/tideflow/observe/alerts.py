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
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import orjson

from tideflow.observe.figures import source_lag
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
    metric: str = ""
    threshold: float | None = None


def target(notify: NotifySpec) -> str:
    """Where a notification goes, safe to show: a webhook's scheme, host and port only (a
    webhook's path and query often are its secret, as in Slack's)."""
    if notify.type == "log":
        return "log"
    parts = urlsplit(notify.url or "")
    host = parts.hostname or "?"
    where = f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")
    kind = "slack webhook" if notify.format == "slack" else "webhook"
    return f"{kind} {redact(where)}"


def failure_reason(exc: BaseException) -> str:
    """Why a webhook call failed, in words a user can act on."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}".strip()
    reason: object = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, TimeoutError):
        return f"no answer within {WEBHOOK_TIMEOUT:g} s"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return f"{type(reason).__name__}: {reason}" if str(reason) else type(reason).__name__


def deliver(notify: NotifySpec, event: dict[str, Any]) -> str | None:
    """Send one notification (blocking; call it off the request path). A failure is logged,
    never raised: its reason is returned (None: delivered)."""
    if notify.type == "log":
        level = logging.INFO if event["state"] == "resolved" else logging.WARNING
        log.log(level, "%s", event["message"])
        return None
    assert notify.url is not None
    if not notify.url.lower().startswith(("http://", "https://")):
        log.warning(
            "alert %s: webhook URL must be http(s), not %s", event["alert"], redact(notify.url)
        )
        return "the webhook URL must start with http:// or https://"
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
        reason = redact(failure_reason(exc))
        log.warning("alert %s: webhook %s failed: %s", event["alert"], redact(notify.url), reason)
        return reason
    return None


class AlertManager:
    """Evaluates every pipeline's rules; keeps recent alert events for the UI, each with
    the outcome of its notifications (``sending``, ``sent``, or ``failed`` with the reason).

    ``send`` delivers one notification and returns why it failed (None: delivered);
    :func:`deliver` by default."""

    def __init__(
        self, send: Callable[[NotifySpec, dict[str, Any]], str | None] | None = None
    ) -> None:
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
            state.metric, state.threshold = rule.metric, rule.above
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
        """Rules firing now, with the metric and threshold their value is measured against."""
        return [
            {
                "pipeline": p,
                "alert": a,
                "metric": s.metric,
                "value": s.value,
                "threshold": s.threshold,
                "since": s.holding_since,
            }
            for (p, a), s in list(self._states.items())
            if s.firing
        ]

    def recent(self, limit: int = 100) -> list[dict[str, Any]]:
        """The latest alert events, newest first, as they stand now (notifications are
        delivered on threads of their own: their outcome fills in as they finish)."""
        with self._lock:
            events = list(self.events)[:limit]
            return [
                {**e, "notifications": [dict(n) for n in e.get("notifications", [])]}
                for e in events
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
            "dead_letter_rate": f"dead-letter rate {_percent(value)} of records read above "
            f"{_percent(rule.above)}",
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
        # What is sent is the event as above; the UI's copy also tracks each delivery.
        payload = dict(event)
        outcomes = [{"to": target(n), "status": "sending", "error": None} for n in rule.notify]
        with self._lock:
            self.events.appendleft({**event, "notifications": outcomes})
        for notify, outcome in zip(rule.notify, outcomes, strict=True):
            threading.Thread(
                target=self._deliver,
                args=(notify, payload, outcome),
                name="alert-notify",
                daemon=True,
            ).start()
        return event

    def _deliver(
        self, notify: NotifySpec, payload: dict[str, Any], outcome: dict[str, Any]
    ) -> None:
        try:
            error = self._send(notify, payload)
        except Exception as exc:  # noqa: BLE001 - a notification never takes the server down
            error = f"{type(exc).__name__}: {exc}"
        with self._lock:
            outcome["status"] = "failed" if error else "sent"
            outcome["error"] = redact(error) if error else None


def _percent(fraction: float | None) -> str:
    """A share as a percentage with three significant digits: 0.0020973 -> ``0.21%``."""
    return "n/a" if fraction is None else f"{fraction * 100:.3g}%"


class RunAlerts:
    """The alert rules of one pipeline, evaluated inside the process that runs it.

    ``tideflow serve`` samples its runs from the server; a pipeline run from Python (the
    Stream API) has no server, so this gives its engine's observer the same sampling: counts
    at every progress call (about twice a second), records matching `matching_records`
    conditions on every output frame, and the same :class:`AlertManager` state machine and
    notifications.
    """

    def __init__(
        self, pipeline: str, rules: list[AlertSpec], manager: AlertManager | None = None
    ) -> None:
        from tideflow.core.expressions import compile_expr

        self.pipeline = pipeline
        self.rules = list(rules)
        self.manager = manager or AlertManager()
        self.watches = [
            (a.name, str(a.step), compile_expr(str(a.where), f"alerts.{a.name}.where"))
            for a in self.rules
            if a.metric == "matching_records"
        ]
        self.matches: dict[str, float] = {name: 0.0 for name, _, _ in self.watches}

    def on_output(self, node: str, port: str, frame: Any) -> None:
        """Count the records of a step's output that match a `matching_records` rule."""
        from tideflow.core.expressions import condition_mask

        key = node if port == "out" else f"{node}.{port}"
        for name, step, condition in self.watches:
            if step == key:
                self.matches[name] += float(condition_mask(frame, condition).sum())

    def on_progress(self, engine: Any) -> None:
        """Sample the run's counts and evaluate every rule."""
        self._sample(engine.counts(), running=True)

    def finished(self, counts: dict[str, dict[str, Any]]) -> None:
        """The run ended: a last sample, so firing rules resolve."""
        self._sample(counts, running=False)

    def _sample(self, counts: dict[str, dict[str, Any]], running: bool) -> None:
        records = sum(
            float(c.get("out", 0)) + float(c.get("dead_lettered", 0))
            for c in counts.values()
            if c.get("kind") == "source"
        )
        dead = sum(float(c.get("dead_lettered", 0)) for c in counts.values())
        lag, lag_records = source_lag(counts)
        self.manager.observe(
            self.pipeline,
            records,
            dead,
            lag,
            running,
            matches=dict(self.matches),
            lag_records=lag_records,
        )
        self.manager.evaluate(self.pipeline, self.rules)

"""Retrying an operation through an outage: exponential backoff with full jitter.

A connector marks which failures are transient (a refused connection, a server restarting);
anything else is raised at once. Each wait is drawn uniformly from ``[0, min(cap, first *
2**attempt)]`` (full jitter, so many workers do not reconnect in lockstep), the first retry
comes within ``first`` seconds, and the outage is logged when it starts and when it ends and
counted in the node's metrics (``retries``, ``outage_seconds``, and ``in_outage``: 1 while
retrying, 0 once recovered).

A long backoff alone would make the run sleep up to ``cap`` seconds past the service's
return. A connector that can tell cheaply whether the service is back (a TCP connect, a
login) passes it as ``probe``: during a wait it is polled every ``probe_every`` seconds, and
the wait ends early when the probe, having failed during this wait, succeeds — a return seen
happening. A probe that succeeds from the start of a wait (the service answers, yet the
operation fails) does not shorten it, so backoff still spaces out retries that cannot work.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

from pydantic import Field

from tideflow.core.contracts import Context
from tideflow.core.settings import Settings
from tideflow.errors import PipelineError
from tideflow.secrets import redact

T = TypeVar("T")


class RetryPolicy(Settings):
    """How long and how often to retry through an outage."""

    first: float = Field(0.5, gt=0, description="Longest wait before the first retry (s).")
    cap: float = Field(30.0, gt=0, description="Longest wait between two retries (s).")
    give_up_after: float = Field(
        900.0, gt=0, description="Fail the run when an outage lasts longer than this (s)."
    )
    probe_every: float = Field(
        1.0,
        gt=0,
        description="While waiting, check this often whether the service is back (s), so "
        "that the run resumes soon after it returns, not at the end of a long backoff "
        "(connectors that can check cheaply: sql).",
    )


def with_retries(
    operation: Callable[[], T],
    is_transient: Callable[[BaseException], bool],
    ctx: Context,
    policy: RetryPolicy,
    what: str,
    recover: Callable[[], None] | None = None,
    probe: Callable[[], bool] | None = None,
) -> T:
    """Run ``operation``; on a transient failure wait, call ``recover`` (reconnect, replay)
    and try again, until it succeeds, the policy gives up, or the run is stopped.

    ``probe`` (optional) says whether the service answers again; see the module's docstring.
    """
    attempt = 0
    started = 0.0
    while True:
        try:
            result = operation()
        except Exception as exc:
            if not is_transient(exc):
                raise
            now = time.monotonic()
            if attempt == 0:
                started = now
                # 1 while retrying: a health check reports the node as disconnected.
                ctx.metrics["in_outage"] = 1.0
                ctx.log.warning("%s: %s; retrying with backoff", what, redact(_first_line(exc)))
            elif now - started > policy.give_up_after:
                raise PipelineError(
                    redact(
                        f"{what}: still failing after {now - started:.0f} s and {attempt} "
                        f"retries (give_up_after is {policy.give_up_after:.0f} s): "
                        f"{_first_line(exc)}"
                    )
                ) from exc
            delay = random.uniform(0, min(policy.cap, policy.first * 2**attempt))  # nosec B311 - jitter, not security
            attempt += 1
            ctx.metrics["retries"] = ctx.metrics.get("retries", 0) + 1
            if _wait(ctx, delay, probe, policy.probe_every):
                raise PipelineError(f"{what}: stopped while waiting to retry") from exc
            if recover is not None:
                try:
                    recover()
                except Exception as again:
                    if not is_transient(again):
                        raise
            continue
        if attempt:
            outage = time.monotonic() - started
            ctx.metrics["outage_seconds"] = ctx.metrics.get("outage_seconds", 0.0) + outage
            ctx.metrics["in_outage"] = 0.0
            ctx.log.warning("%s: recovered after %.1f s and %d retries", what, outage, attempt)
        return result


def _wait(ctx: Context, delay: float, probe: Callable[[], bool] | None, every: float) -> bool:
    """Wait ``delay`` seconds, or less once ``probe`` sees the service come back; True when
    the run is asked to stop meanwhile."""
    if probe is None:
        return ctx.wait(delay)
    deadline = time.monotonic() + delay
    seen_down = False
    while True:
        # Probed at once too: a service found down right after the failure and up at a
        # later poll has returned, whatever the backoff had drawn.
        up = _probe(probe)
        if up and seen_down:
            return False
        seen_down = seen_down or not up
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        if ctx.wait(min(every, remaining)):
            return True


def _probe(probe: Callable[[], bool]) -> bool:
    """A probe that raises counts as "not back yet": it only ever shortens a wait."""
    try:
        return probe()
    except Exception:  # noqa: BLE001 - any failure of a probe means "not yet"
        return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]

"""The retry loop's schedule on a fake clock: backoff with full jitter, and a probe that ends
a wait as soon as it sees the service come back (F4: resume within seconds of the return,
not at the end of a 30 s backoff)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tideflow.core import retry
from tideflow.core.contracts import Context
from tideflow.core.retry import RetryPolicy, with_retries
from tideflow.errors import PipelineError


class Down(Exception):
    """A transient failure (a refused connection)."""


@dataclass
class FakeClock:
    """Monotonic time that moves only when the code under test waits."""

    now: float = 0.0
    waits: list[float] = field(default_factory=list)

    def monotonic(self) -> float:
        return self.now

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        self.now += seconds
        return False


@dataclass(frozen=True)
class ClockedContext(Context):
    """A context whose waits advance the fake clock instead of sleeping."""

    clock: FakeClock = field(default_factory=FakeClock)

    def wait(self, seconds: float) -> bool:
        return self.clock.wait(seconds)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(retry.time, "monotonic", fake.monotonic)
    # The longest wait the jitter can draw: the worst case the bound has to hold for.
    monkeypatch.setattr(retry.random, "uniform", lambda low, high: high)
    return fake


def context(clock: FakeClock) -> ClockedContext:
    return ClockedContext(
        pipeline="p",
        name="n",
        base_dir=Path(),
        state_dir=Path(),
        stop_event=threading.Event(),
        clock=clock,
    )


def service_back_at(clock: FakeClock, at: float) -> tuple[Callable[[], str], Callable[[], bool]]:
    """An operation and a probe for a service that is down until ``at`` on the fake clock."""

    def operation() -> str:
        if clock.now < at:
            raise Down("connection refused")
        return "done"

    return operation, lambda: clock.now >= at


def is_down(exc: BaseException) -> bool:
    return isinstance(exc, Down)


def test_backoff_doubles_from_first_up_to_the_cap(clock: FakeClock) -> None:
    operation, _ = service_back_at(clock, 200.0)
    ctx = context(clock)
    policy = RetryPolicy(first=0.5, cap=30.0)
    assert with_retries(operation, is_down, ctx, policy, "op") == "done"
    assert clock.waits[:8] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert max(clock.waits) == 30.0
    assert ctx.metrics["retries"] == len(clock.waits)
    assert ctx.metrics["outage_seconds"] == pytest.approx(clock.now)


def test_a_probe_ends_the_wait_soon_after_the_service_returns(clock: FakeClock) -> None:
    # Back at 62.0 s: the worst-case backoff would sleep until 0.5+1+...+16+30 = 61.5 + 30.
    operation, probe = service_back_at(clock, 62.0)
    policy = RetryPolicy(first=0.5, cap=30.0, probe_every=1.0)
    assert with_retries(operation, is_down, context(clock), policy, "op", probe=probe) == "done"
    assert 62.0 <= clock.now <= 62.0 + policy.probe_every


def test_a_probe_that_answers_while_the_operation_fails_keeps_the_backoff(
    clock: FakeClock,
) -> None:
    operation, _ = service_back_at(clock, 100.0)
    probes: list[float] = []

    def always_up() -> bool:
        probes.append(clock.now)
        return True

    policy = RetryPolicy(first=0.5, cap=30.0, probe_every=1.0)
    with_retries(operation, is_down, context(clock), policy, "op", probe=always_up)
    # The same schedule as without a probe: never a retry storm at the probing rate.
    assert sum(w for w in clock.waits) == pytest.approx(clock.now)
    retry_times = [0.5, 1.5, 3.5, 7.5, 15.5, 31.5, 61.5, 91.5, 121.5]
    assert clock.now == pytest.approx(next(t for t in retry_times if t >= 100.0))
    assert probes, "the probe was never asked"


def test_a_probe_that_raises_counts_as_down(clock: FakeClock) -> None:
    operation, probe = service_back_at(clock, 40.0)

    def flaky() -> bool:
        if clock.now < 40.0:
            raise OSError("no route to host")
        return probe()

    policy = RetryPolicy(first=0.5, cap=30.0, probe_every=1.0)
    assert with_retries(operation, is_down, context(clock), policy, "op", probe=flaky) == "done"
    assert clock.now <= 41.0


def test_an_outage_longer_than_give_up_after_fails_the_run(clock: FakeClock) -> None:
    operation, probe = service_back_at(clock, 10_000.0)
    policy = RetryPolicy(first=0.5, cap=30.0, give_up_after=120.0)
    with pytest.raises(PipelineError, match="give_up_after is 120 s"):
        with_retries(operation, is_down, context(clock), policy, "op", probe=probe)
    assert clock.now <= 120.0 + 30.0 + 1.0


def test_a_permanent_failure_is_raised_at_once(clock: FakeClock) -> None:
    def operation() -> str:
        raise ValueError("bad password")

    with pytest.raises(ValueError, match="bad password"):
        with_retries(operation, is_down, context(clock), RetryPolicy(), "op")
    assert clock.waits == []

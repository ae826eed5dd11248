"""Named crash points, for the fault-injection suite.

``TIDEFLOW_CRASH_AT=checkpoint.after_flush:3`` makes the process end abruptly — ``os._exit``,
no cleanup, no buffered output flushed, as with ``kill -9`` — the 3rd time it passes the point
named ``checkpoint.after_flush``. The suite uses it to crash at every deterministic step of a
checkpoint, which random kills would hit only by luck. Without the variable (always, outside
tests) a crash point is one comparison.
"""

from __future__ import annotations

import os

CRASH_EXIT_CODE = 86
"""The exit status of a process ended by a crash point (distinct from any tideflow exit code)."""

POINTS = (
    "checkpoint.after_flush",
    "checkpoint.after_keeper_commit",
    "checkpoint.in_state_transaction",
    "checkpoint.after_state",
    "checkpoint.after_first_sink_commit",
    "sql_sink.before_commit",
    "file_sink.mid_rename",
    "file_sink.mid_write",
)
"""Every crash point in the code, so tests can enumerate them."""


def _parse(value: str | None) -> tuple[str, int] | None:
    if not value:
        return None
    name, _, nth = value.partition(":")
    if name not in POINTS:
        raise ValueError(f"TIDEFLOW_CRASH_AT names unknown point {name!r}; known: {POINTS}")
    return name, int(nth or 1)


_TARGET = _parse(os.environ.get("TIDEFLOW_CRASH_AT"))
_passes = [0]


def crash_point(name: str) -> None:
    """End the process here if ``TIDEFLOW_CRASH_AT`` names this point and pass."""
    if _TARGET is None or _TARGET[0] != name:
        return
    _passes[0] += 1
    if _passes[0] >= _TARGET[1]:
        os._exit(CRASH_EXIT_CODE)

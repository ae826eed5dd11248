"""Named crash points, for the fault-injection suite.

``TIDEFLOW_CRASH_AT=checkpoint.after_flush:3`` makes the process end abruptly — ``os._exit``,
no cleanup, no buffered output flushed, as with ``kill -9`` — the 3rd time it passes the point
named ``checkpoint.after_flush``. The suite uses it to crash at every deterministic step of a
checkpoint, which random kills would hit only by luck. Without the variables (always, outside
tests) a crash point is two comparisons.

``TIDEFLOW_STOP_AT=point:n`` pauses the process there instead (it sends itself SIGSTOP), for
tests of a zombie: a process that resumes after its replacement took over.
"""

from __future__ import annotations

import os
import signal

CRASH_EXIT_CODE = 86
"""The exit status of a process ended by a crash point (distinct from any tideflow exit code)."""

POINTS = (
    "checkpoint.after_flush",
    "checkpoint.after_keeper_commit",
    "checkpoint.in_state_transaction",
    "checkpoint.compacted",
    "checkpoint.after_state",
    "checkpoint.after_first_sink_commit",
    "sql_sink.before_commit",
    "file_sink.mid_rename",
    "file_sink.mid_write",
    "from_scratch.mid_clear",
    "kafka_sink.before_produce",
    "kafka_sink.after_produce",
    "kafka_sink.after_commit",
    "kafka_sink.recovery_after_produce",
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
_STOP = _parse(os.environ.get("TIDEFLOW_STOP_AT"))
_passes = [0]
_stop_passes = [0]
_MARK = os.environ.get("TIDEFLOW_CRASH_ONCE")
"""With ``TIDEFLOW_CRASH_ONCE=FILE`` only the first process to reach the point crashes (it
creates FILE first): for processes a supervisor restarts with the same environment."""


def crash_point(name: str) -> None:
    """End the process here if ``TIDEFLOW_CRASH_AT`` names this point and pass (pause it if
    ``TIDEFLOW_STOP_AT`` does)."""
    if _STOP is not None and _STOP[0] == name:
        _stop_passes[0] += 1
        if _stop_passes[0] == _STOP[1]:
            os.kill(os.getpid(), signal.SIGSTOP)
    if _TARGET is None or _TARGET[0] != name:
        return
    _passes[0] += 1
    if _passes[0] >= _TARGET[1]:
        if _MARK is not None:
            try:
                os.close(os.open(_MARK, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return
        os._exit(CRASH_EXIT_CODE)

"""SIGINT and SIGTERM during a run: the first asks it to stop (drain what was read, take a
final checkpoint, end); a second means now."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

log = logging.getLogger("tideflow.engine")


@contextmanager
def stop_on_signals(stop_event: threading.Event, enabled: bool) -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM set ``stop_event``, or raise
    :class:`KeyboardInterrupt` when it is set already; the handlers before are put back
    after. Only when ``enabled`` and on the main thread (the only one Python lets set
    signal handlers)."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stop_event.is_set():  # a second Ctrl-C means "now"
            raise KeyboardInterrupt
        log.warning("stopping: draining in-flight batches and checkpointing")
        stop_event.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

"""The source threads, and the bounded queue between them and the engine's main loop.

Each source thread puts its batches (and its end, its failure, or a partition hand-over)
into one queue; its bound gives back-pressure and bounds memory. Batches a group commit
takes together are merged per source where their columns agree (:func:`coalesce`).
"""

from __future__ import annotations

import queue
import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import polars as pl

from tideflow.core.contracts import SourceBatch
from tideflow.core.graph import Node
from tideflow.core.partitions import Handover, HandoverRequest


@dataclass
class SourceItem:
    """What a source thread hands the main loop: a batch, its end, its failure, or a
    partition hand-over."""

    source: Node
    batch: SourceBatch | None = None
    error: BaseException | None = None
    ended: bool = False
    handover: HandoverRequest | None = None
    received: float = 0.0
    """Unix time the source thread got the batch (end-to-end latency starts there)."""


class SourceQueue:
    """A bounded queue of :class:`SourceItem`; a put gives up once ``abort`` is set."""

    def __init__(self, size: int, abort: threading.Event) -> None:
        self._queue: queue.Queue[SourceItem] = queue.Queue(maxsize=max(size, 1))
        self._abort = abort

    def put(self, item: SourceItem) -> None:
        """Queue ``item``, waiting for room (not after an abort)."""
        while not self._abort.is_set():
            with suppress(queue.Full):
                self._queue.put(item, timeout=0.1)
                return

    def get(self, timeout: float) -> SourceItem:
        """The next item; ``queue.Empty`` when none came within ``timeout`` seconds."""
        return self._queue.get(timeout=timeout)

    def queued(self) -> list[SourceItem]:
        """The items queued now (not those that arrive meanwhile: the queue is bounded,
        but a source may keep it full)."""
        items: list[SourceItem] = []
        for _ in range(self._queue.qsize()):
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return items


class SourceThreads:
    """One thread per source, reading batches into ``queue`` until the source ends,
    ``stop_event`` is set or ``abort`` is. ``positions`` are the run's (shared with the main
    loop); in a group (``grouped``) they move per partition, and the sources report
    partitions moving through :attr:`handover`."""

    def __init__(
        self,
        sources: list[Node],
        queue: SourceQueue,
        stop_event: threading.Event,
        abort: threading.Event,
        positions: dict[str, Any],
        grouped: bool,
    ) -> None:
        self.sources = sources
        self.queue = queue
        self.stop_event = stop_event
        self.abort = abort
        self.positions = positions
        self.grouped = grouped
        self.handover = Handover(self._submit_handover)
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Start reading, a thread per source."""
        for node in self.sources:
            thread = threading.Thread(
                target=self._pump, args=(node,), name=f"source-{node.name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def join(self) -> None:
        """Wait for every source thread to end."""
        for thread in self._threads:
            thread.join()

    def _pump(self, node: Node) -> None:
        """Source thread: read batches into the queue until the end or a stop request."""
        source = node.component
        try:
            while not self.stop_event.is_set() and not self.abort.is_set():
                batch = source.read_batch()
                if batch is None:
                    break
                # A group worker's positions move per partition, with records.
                moved = not self.grouped and batch.position != self.positions.get(node.name)
                if batch.size or moved or batch.partition is not None or batch.checkpoint:
                    self.queue.put(SourceItem(node, batch=batch, received=time.time()))
            self.queue.put(SourceItem(node, ended=True))
        except BaseException as exc:  # noqa: BLE001 - handed to the main loop to raise
            self.queue.put(SourceItem(node, error=exc))

    def _submit_handover(self, request: HandoverRequest) -> bool:
        """Source thread: queue a hand-over behind the batches already read; wait for it."""
        node = next(n for n in self.sources if n.name == request.source)
        self.queue.put(SourceItem(node, handover=request))
        while not request.done.wait(0.1):
            if self.abort.is_set() or self.handover.closed:
                return False
        return True


def coalesce(items: list[SourceItem]) -> list[SourceItem]:
    """The items in order, with consecutive batches of one source (and partition) whose
    frames have the same schema merged into one (the last one's position)."""
    out: list[SourceItem] = []
    for item in items:
        last = out[-1] if out else None
        if last is not None and _mergeable(last, item):
            assert last.batch is not None and item.batch is not None
            a, b = last.batch, item.batch
            dead = [d for d in (a.dead, b.dead) if d is not None]
            times = [t for t in (a.event_time, b.event_time) if t is not None]
            merged = SourceBatch(
                pl.concat([a.data, b.data]),
                b.position,
                pl.concat(dead) if dead else None,
                b.partition,
                min(times) if times else None,
            )
            out[-1] = SourceItem(last.source, batch=merged, received=last.received)
        else:
            out.append(item)
    return out


def _mergeable(a: SourceItem, b: SourceItem) -> bool:
    if a.batch is None or b.batch is None or a.source is not b.source:
        return False
    x, y = a.batch.data, b.batch.data
    # A frame without columns may still count records (`{}` messages): not merged.
    return (
        a.batch.partition == b.batch.partition
        and not a.batch.checkpoint
        and x.width > 0
        and x.schema == y.schema
        and (a.batch.event_time is None) == (b.batch.event_time is None)
    )

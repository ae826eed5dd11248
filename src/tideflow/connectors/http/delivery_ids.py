"""The delivery ids a webhook source has taken, so that a sender's repeat is not taken twice.

Many webhook senders put an id in a header of every delivery (``X-GitHub-Delivery``,
``Idempotency-Key``) and send the same id again when they got no answer. A post is answered
only once its checkpoint is durable, so a repeat means the answer was lost — by the network
or by a crash after the checkpoint and before the ``200`` went out. The source remembers the
ids of the posts it took, for a retention window, and answers a repeat of a taken one with
``200`` without taking its records again.

**Exact across crashes.** Each id is stored with the sequence number of its post *before*
the post is handed to the engine (one SQLite transaction, fsync'd, per batch), so it is
durable no later than the checkpoint that covers the post. Whether an id counts as taken is
decided by that checkpoint: on open, ids whose sequence number is above the checkpointed
position belong to posts no checkpoint covers — their senders got no ``200`` and will send
again — and are forgotten. So an id is remembered exactly when its records are in a
committed checkpoint, as if it were stored in the checkpoint itself, without rewriting every
remembered id at every checkpoint.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from tideflow.errors import StateError

PRUNE_EVERY = 60.0
"""Seconds between deletions of ids older than the retention window."""


class DeliveryIds:
    """Delivery ids taken by one webhook source, with their posts' sequence numbers."""

    def __init__(self, path: Path, retention: float, committed: int) -> None:
        """Open (or create) the store at ``path`` and forget every id whose post is not
        covered by the checkpoint at sequence number ``committed``."""
        self.path = path
        self.retention = retention
        self._lock = threading.Lock()
        self._last_prune = 0.0
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(
                str(path), check_same_thread=False, isolation_level=None, timeout=30
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            # The ids of a batch must be on disk before the checkpoint covering it commits.
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS delivery_ids "
                "(id TEXT PRIMARY KEY, seq INTEGER NOT NULL, taken_at REAL NOT NULL)"
            )
            self._conn.execute(
                "CREATE INDEX IF NOT EXISTS delivery_ids_by_time ON delivery_ids (taken_at)"
            )
            self._conn.execute("DELETE FROM delivery_ids WHERE seq > ?", (committed,))
        except (OSError, sqlite3.Error) as exc:
            raise StateError(f"cannot open the webhook's delivery ids {path}: {exc}") from exc
        self.prune()

    def taken(self, delivery_id: str, committed: int) -> bool:
        """Whether ``delivery_id`` was taken within the retention window by a post that the
        checkpoint at ``committed`` covers."""
        with self._lock:
            row = self._conn.execute(
                "SELECT seq FROM delivery_ids WHERE id = ? AND taken_at >= ?",
                (delivery_id, time.time() - self.retention),
            ).fetchone()
        return row is not None and int(row[0]) <= committed

    def remember(self, ids: Iterable[tuple[str, int, float]]) -> None:
        """Store (id, sequence number, time taken) durably, before the posts are handed on."""
        rows = list(ids)
        if not rows:
            return
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(
                    "INSERT OR REPLACE INTO delivery_ids (id, seq, taken_at) VALUES (?,?,?)",
                    rows,
                )
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        if time.monotonic() - self._last_prune >= PRUNE_EVERY:
            self.prune()

    def prune(self) -> None:
        """Forget ids taken before the retention window."""
        self._last_prune = time.monotonic()
        with self._lock:
            self._conn.execute(
                "DELETE FROM delivery_ids WHERE taken_at < ?", (time.time() - self.retention,)
            )

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT count(*) FROM delivery_ids").fetchone()[0])

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._conn.close()

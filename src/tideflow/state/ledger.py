"""What operators read back from the state store: the dead-letter ledger and run history.

Both share the store's :class:`~tideflow.state.database.Database`. Dead letters are written
by the store, in the checkpoint transaction that covers them (:meth:`DeadLetterLedger.add`),
and so are runs as the engine starts and ends them (``StateStore.start_run``/``end_run``);
these objects list them, mark letters replayed, and record the runs that never ran (missed,
a ``state reset``).
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from typing import Any

import orjson
import polars as pl

from tideflow.state.database import Database


@dataclass(frozen=True)
class DeadLetter:
    """One row of the dead-letter ledger."""

    id: int
    pipeline: str
    step: str
    reason: str
    record: str
    created_at: float
    run_id: str
    replayed_at: float | None


class DeadLetterLedger:
    """The dead letters of every pipeline in a state store (``StateStore.ledger``)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def add(
        self,
        conn: Any,
        pipeline: str,
        run_id: str,
        dead_letters: list[tuple[str, pl.DataFrame]],
        now: float,
    ) -> None:
        """Store (step, frame of ``record``, ``reason``) dead letters under ``pipeline``, in
        the transaction holding ``conn`` (the checkpoint's)."""
        for step, frame in dead_letters:
            self.db.executemany(
                conn,
                "INSERT INTO dead_letters (pipeline, step, reason, record, created_at, "
                "run_id) VALUES (?,?,?,?,?,?)",
                (
                    (pipeline, step, reason, record, now, run_id)
                    for record, reason in frame.select("record", "reason").iter_rows()
                ),
            )

    def forget(self, conn: Any, pipeline: str) -> None:
        """Delete the pipeline's dead letters, in the transaction holding ``conn``."""
        self.db.execute(conn, "DELETE FROM dead_letters WHERE pipeline=?", (pipeline,))

    def letters(
        self,
        pipeline: str,
        step: str | None = None,
        reason: str | None = None,
        ids: list[int] | None = None,
        include_replayed: bool = True,
        limit: int | None = None,
        run_id: str | None = None,
    ) -> list[DeadLetter]:
        """Query the ledger; ``reason`` matches as a substring; ``run_id`` keeps one run's."""
        sql = "SELECT * FROM dead_letters WHERE pipeline=?"
        args: list[Any] = [pipeline]
        if run_id:
            sql += " AND run_id=?"
            args.append(run_id)
        if step:
            sql += " AND step=?"
            args.append(step)
        if reason:
            sql += " AND " + self.db.contains("reason")
            args.append(reason)
        if ids:
            sql += f" AND id IN ({','.join('?' * len(ids))})"
            args += ids
        if not include_replayed:
            sql += " AND replayed_at IS NULL"
        sql += " ORDER BY id"
        if limit:
            sql += " LIMIT ?"
            args.append(limit)
        with self.db.reading() as conn:
            rows = self.db.execute(conn, sql, args).fetchall()
        return [DeadLetter(*row) for row in rows]

    def summary(self, pipeline: str) -> list[tuple[str, str, int]]:
        """(step, reason, count) for the pipeline's dead letters not yet replayed."""
        with self.db.reading() as conn:
            rows: list[tuple[str, str, int]] = self.db.execute(
                conn,
                "SELECT step, reason, count(*) FROM dead_letters WHERE pipeline=? AND "
                "replayed_at IS NULL GROUP BY step, reason ORDER BY 3 DESC",
                (pipeline,),
            ).fetchall()
        return [(step, reason, int(n)) for step, reason, n in rows]

    def mark_replayed(self, ids: list[int]) -> None:
        """Mark ledger rows as replayed."""
        with self.db.transaction() as conn:
            self.db.executemany(
                conn,
                "UPDATE dead_letters SET replayed_at=? WHERE id=?",
                [(time.time(), i) for i in ids],
            )


class RunHistory:
    """The runs of every pipeline in a state store (``StateStore.history``), newest first,
    and the runs that never ran: a scheduled run missed, a ``state reset``."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def record_reset(self, run_id: str, pipeline: str, note: str) -> None:
        """Record a deliberate ``state reset`` in the run history (status ``reset``), so the
        next run knows that starting from the beginning is wanted."""
        now = time.time()
        with self.db.transaction() as conn:
            self.db.execute(
                conn,
                "INSERT INTO runs (id, pipeline, started_at, ended_at, status, error) "
                "VALUES (?,?,?,?, 'reset', ?)",
                (run_id, pipeline, now, now, note),
            )

    def record_missed(self, run_id: str, pipeline: str, due_at: float, reason: str) -> None:
        """Record a scheduled run that did not start (the previous run was still going), so
        run history shows the gap."""
        with self.db.transaction() as conn:
            self.db.execute(
                conn,
                "INSERT INTO runs (id, pipeline, started_at, ended_at, status, error) "
                "VALUES (?,?,?,?, 'missed', ?)",
                (run_id, pipeline, due_at, due_at, reason),
            )

    def runs(self, pipeline: str, limit: int = 20) -> list[dict[str, Any]]:
        """The most recent runs of a pipeline, newest first. A run recorded as running whose
        process is gone (on this machine) is ``interrupted``: it died without recording how
        it ended (a crash, ``kill -9``)."""
        with self.db.reading() as conn:
            rows = self.db.execute(
                conn,
                "SELECT id, started_at, ended_at, status, counts, error, p.host, p.pid "
                "FROM runs LEFT JOIN run_processes p ON p.run_id = runs.id "
                "WHERE pipeline=? ORDER BY started_at DESC LIMIT ?",
                (pipeline, limit),
            ).fetchall()
        keys = ("id", "started_at", "ended_at", "status", "counts", "error")
        out = []
        here = socket.gethostname()
        for row in rows:
            item = dict(zip(keys, row[:6], strict=True))
            item["counts"] = orjson.loads(item["counts"]) if item["counts"] else None
            host, pid = row[6], row[7]
            if item["status"] in ("running", "clearing") and host == here and _gone(pid):
                item["status"] = "interrupted"
                item["error"] = f"its process ({pid}) ended without recording how (a crash?)"
            out.append(item)
        return out


def _gone(pid: int | None) -> bool:
    """Whether no process ``pid`` runs on this machine (a reused pid counts as running)."""
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # it exists, and belongs to someone else
        return False
    return False

"""The state store: checkpoints, step state, the dead-letter ledger and run history.

SQLite by default (``.tideflow/state.db``). A checkpoint — source positions, step state, sink
commit tokens and the dead letters since the last one — is written in one transaction, so it
is either wholly there or not at all.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import polars as pl

from tideflow.core.faults import crash_point
from tideflow.errors import StateError
from tideflow.state.codec import decode_state, encode_state

_SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoints (
    pipeline TEXT PRIMARY KEY,
    id INTEGER NOT NULL,
    created_at REAL NOT NULL,
    positions BLOB NOT NULL,
    sink_tokens BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS step_state (
    pipeline TEXT NOT NULL,
    step TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (pipeline, step)
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pipeline TEXT NOT NULL,
    step TEXT NOT NULL,
    reason TEXT NOT NULL,
    record TEXT NOT NULL,
    created_at REAL NOT NULL,
    run_id TEXT NOT NULL,
    replayed_at REAL
);
CREATE INDEX IF NOT EXISTS dead_letters_by_pipeline ON dead_letters (pipeline, step, reason);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    pipeline TEXT NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL,
    status TEXT NOT NULL,
    counts BLOB,
    error TEXT
);
"""


@dataclass
class Checkpoint:
    """The last durable checkpoint of a pipeline."""

    id: int
    created_at: float
    positions: dict[str, Any]
    sink_tokens: dict[str, Any]
    step_states: dict[str, Any] = field(default_factory=dict)


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


class StateStore:
    """A SQLite state store; safe to use from several threads of one process."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(
                str(self.path), check_same_thread=False, isolation_level=None, timeout=30
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StateError(f"cannot open the state store {self.path}: {exc}") from exc
        self._lock = threading.Lock()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()

    # -- checkpoints ---------------------------------------------------------------------

    def load_checkpoint(self, pipeline: str) -> Checkpoint | None:
        """The last checkpoint, with step states, or None if the pipeline never checkpointed."""
        with self._lock:
            row = self._conn.execute(
                "SELECT id, created_at, positions, sink_tokens FROM checkpoints WHERE pipeline=?",
                (pipeline,),
            ).fetchone()
            states = self._conn.execute(
                "SELECT step, data FROM step_state WHERE pipeline=?", (pipeline,)
            ).fetchall()
        if row is None:
            return None
        return Checkpoint(
            id=row[0],
            created_at=row[1],
            positions=orjson.loads(row[2]),
            sink_tokens=orjson.loads(row[3]),
            step_states={step: decode_state(data) for step, data in states},
        )

    def commit_checkpoint(
        self,
        pipeline: str,
        checkpoint_id: int,
        positions: dict[str, Any],
        step_states: dict[str, Any],
        sink_tokens: dict[str, Any],
        dead_letters: list[tuple[str, pl.DataFrame]],
        run_id: str,
    ) -> None:
        """Store a checkpoint and the dead letters it covers, atomically."""
        now = time.time()
        encoded = {step: encode_state(state) for step, state in step_states.items()}
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO checkpoints (pipeline, id, created_at, positions, sink_tokens) "
                "VALUES (?,?,?,?,?) ON CONFLICT(pipeline) DO UPDATE SET id=excluded.id, "
                "created_at=excluded.created_at, positions=excluded.positions, "
                "sink_tokens=excluded.sink_tokens",
                (pipeline, checkpoint_id, now, orjson.dumps(positions), orjson.dumps(sink_tokens)),
            )
            crash_point("checkpoint.in_state_transaction")
            for step, data in encoded.items():
                conn.execute(
                    "INSERT INTO step_state (pipeline, step, data) VALUES (?,?,?) "
                    "ON CONFLICT(pipeline, step) DO UPDATE SET data=excluded.data",
                    (pipeline, step, data),
                )
            for step, frame in dead_letters:
                conn.executemany(
                    "INSERT INTO dead_letters (pipeline, step, reason, record, created_at, run_id)"
                    " VALUES (?,?,?,?,?,?)",
                    (
                        (pipeline, step, reason, record, now, run_id)
                        for record, reason in frame.select("record", "reason").iter_rows()
                    ),
                )

    def reset(self, pipeline: str, dead_letters: bool = False) -> None:
        """Forget a pipeline's checkpoint and state (and its dead letters if asked)."""
        with self._transaction() as conn:
            conn.execute("DELETE FROM checkpoints WHERE pipeline=?", (pipeline,))
            conn.execute("DELETE FROM step_state WHERE pipeline=?", (pipeline,))
            if dead_letters:
                conn.execute("DELETE FROM dead_letters WHERE pipeline=?", (pipeline,))

    # -- dead letters --------------------------------------------------------------------

    def dead_letters(
        self,
        pipeline: str,
        step: str | None = None,
        reason: str | None = None,
        ids: list[int] | None = None,
        include_replayed: bool = True,
        limit: int | None = None,
    ) -> list[DeadLetter]:
        """Query the ledger; ``reason`` matches as a substring."""
        sql = "SELECT * FROM dead_letters WHERE pipeline=?"
        args: list[Any] = [pipeline]
        if step:
            sql += " AND step=?"
            args.append(step)
        if reason:
            sql += " AND instr(reason, ?) > 0"
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
        with self._lock:
            rows = self._conn.execute(sql, args).fetchall()
        return [DeadLetter(*row) for row in rows]

    def dead_letter_summary(self, pipeline: str) -> list[tuple[str, str, int]]:
        """(step, reason, count) for the pipeline's dead letters not yet replayed."""
        with self._lock:
            return self._conn.execute(
                "SELECT step, reason, count(*) FROM dead_letters WHERE pipeline=? AND "
                "replayed_at IS NULL GROUP BY step, reason ORDER BY 3 DESC",
                (pipeline,),
            ).fetchall()

    def mark_replayed(self, ids: list[int]) -> None:
        """Mark ledger rows as replayed."""
        with self._transaction() as conn:
            conn.executemany(
                "UPDATE dead_letters SET replayed_at=? WHERE id=?", ((time.time(), i) for i in ids)
            )

    # -- runs ----------------------------------------------------------------------------

    def start_run(self, run_id: str, pipeline: str) -> None:
        """Record that a run started."""
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO runs (id, pipeline, started_at, status) VALUES (?,?,?, 'running')",
                (run_id, pipeline, time.time()),
            )

    def end_run(self, run_id: str, status: str, counts: Any, error: str | None = None) -> None:
        """Record how a run ended."""
        with self._transaction() as conn:
            conn.execute(
                "UPDATE runs SET ended_at=?, status=?, counts=?, error=? WHERE id=?",
                (time.time(), status, orjson.dumps(counts), error, run_id),
            )

    def runs(self, pipeline: str, limit: int = 20) -> list[dict[str, Any]]:
        """The most recent runs of a pipeline, newest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, started_at, ended_at, status, counts, error FROM runs "
                "WHERE pipeline=? ORDER BY started_at DESC LIMIT ?",
                (pipeline, limit),
            ).fetchall()
        keys = ("id", "started_at", "ended_at", "status", "counts", "error")
        out = []
        for row in rows:
            item = dict(zip(keys, row, strict=True))
            item["counts"] = orjson.loads(item["counts"]) if item["counts"] else None
            out.append(item)
        return out

"""The state store: checkpoints, step state, the dead-letter ledger and run history.

SQLite by default (``.tideflow/state.db``); PostgreSQL (``state: postgresql://...``) when
workers on several machines share state. A checkpoint — source positions, step state, sink
commit tokens and the dead letters since the last one — is written in one transaction, so it
is either wholly there or not at all. Both backends run the same SQL (written with ``?``
placeholders, which the PostgreSQL backend turns into ``%s``).
"""

from __future__ import annotations

import sqlite3
import struct
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import polars as pl

from tideflow.core.faults import crash_point
from tideflow.errors import MissingDependencyError, StateError
from tideflow.secrets import redact
from tideflow.state.codec import decode_state, encode_state

_SCHEMA_TEMPLATE = """
CREATE TABLE IF NOT EXISTS checkpoints (
    pipeline TEXT PRIMARY KEY,
    id INTEGER NOT NULL,
    created_at {real} NOT NULL,
    positions {blob} NOT NULL,
    sink_tokens {blob} NOT NULL
);
CREATE TABLE IF NOT EXISTS step_state (
    pipeline TEXT NOT NULL,
    step TEXT NOT NULL,
    data {blob} NOT NULL,
    PRIMARY KEY (pipeline, step)
);
CREATE TABLE IF NOT EXISTS partition_state (
    pipeline TEXT NOT NULL,
    source TEXT NOT NULL,
    part TEXT NOT NULL,
    owner TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    position {blob},
    states {blob},
    PRIMARY KEY (pipeline, source, part)
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id {serial},
    pipeline TEXT NOT NULL,
    step TEXT NOT NULL,
    reason TEXT NOT NULL,
    record TEXT NOT NULL,
    created_at {real} NOT NULL,
    run_id TEXT NOT NULL,
    replayed_at {real}
);
CREATE INDEX IF NOT EXISTS dead_letters_by_pipeline ON dead_letters (pipeline, step, reason);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    pipeline TEXT NOT NULL,
    started_at {real} NOT NULL,
    ended_at {real},
    status TEXT NOT NULL,
    counts {blob},
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
class PartitionState:
    """One source partition's share of a group worker's checkpoint: its position and the
    states of the steps scoped to it, fenced by the ``epoch`` of the worker's claim."""

    source: str
    part: str
    epoch: int
    position: Any
    step_states: dict[str, Any]


@dataclass(frozen=True)
class GroupCheckpoint:
    """The partitions a group worker (``owner``) of ``pipeline`` checkpoints."""

    pipeline: str
    owner: str
    partitions: list[PartitionState]


class PartitionLostError(StateError):
    """A worker tried to checkpoint a partition that another worker has claimed since."""


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


def _pack(blobs: dict[str, bytes]) -> bytes:
    """Several named state blobs as one (each step's size stays known without re-encoding)."""
    out = [struct.pack(">I", len(blobs))]
    for name, data in blobs.items():
        raw = name.encode()
        out += [struct.pack(">IQ", len(raw), len(data)), raw, data]
    return b"".join(out)


def _unpack(data: bytes | None) -> dict[str, bytes]:
    """Inverse of :func:`_pack`; no blob at all is no state."""
    if data is None:
        return {}
    data = bytes(data)
    (count,) = struct.unpack_from(">I", data)
    pos, out = 4, {}
    for _ in range(count):
        name_len, size = struct.unpack_from(">IQ", data, pos)
        pos += 12
        name = data[pos : pos + name_len].decode()
        pos += name_len
        out[name] = data[pos : pos + size]
        pos += size
    return out


class StateStore:
    """A SQLite state store; safe to use from several threads of one process.

    ``path`` is the database file; its folder is the run's local state directory.
    """

    _begin = "BEGIN IMMEDIATE"
    _pg = False

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn: Any = sqlite3.connect(
                str(self.path), check_same_thread=False, isolation_level=None, timeout=30
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.executescript(
                _SCHEMA_TEMPLATE.format(
                    real="REAL", blob="BLOB", serial="INTEGER PRIMARY KEY AUTOINCREMENT"
                )
            )
        except (OSError, sqlite3.Error) as exc:
            raise StateError(f"cannot open the state store {self.path}: {exc}") from exc

    def _sql(self, text: str) -> str:
        """The backend's spelling of a statement written for SQLite."""
        return text

    def _execute(self, conn: Any, sql: str, args: Any = ()) -> Any:
        return conn.execute(self._sql(sql), args)

    def _executemany(self, conn: Any, sql: str, rows: Iterable[Any]) -> None:
        conn.executemany(self._sql(sql), rows)

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        with self._lock:
            self._conn.execute(self._begin)
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
            row = self._execute(
                self._conn,
                "SELECT id, created_at, positions, sink_tokens FROM checkpoints WHERE pipeline=?",
                (pipeline,),
            ).fetchone()
            states = self._execute(
                self._conn, "SELECT step, data FROM step_state WHERE pipeline=?", (pipeline,)
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
        group: GroupCheckpoint | None = None,
    ) -> dict[str, int]:
        """Store a checkpoint and the dead letters it covers, atomically; returns the size in
        bytes of each step's stored state.

        A worker of a consumer group also stores each partition it owns (``group``). A
        worker that lost a partition to another one since its claim (a rebalance it missed
        while stalled) fails the whole checkpoint with :class:`PartitionLostError` instead
        of overwriting newer state. Its dead letters go to the group's pipeline."""
        now = time.time()
        encoded = {step: encode_state(state) for step, state in step_states.items()}
        sizes = {step: len(data) for step, data in encoded.items()}
        ledger = group.pipeline if group is not None else pipeline
        with self._transaction() as conn:
            self._execute(
                conn,
                "INSERT INTO checkpoints (pipeline, id, created_at, positions, sink_tokens) "
                "VALUES (?,?,?,?,?) ON CONFLICT(pipeline) DO UPDATE SET id=excluded.id, "
                "created_at=excluded.created_at, positions=excluded.positions, "
                "sink_tokens=excluded.sink_tokens",
                (pipeline, checkpoint_id, now, orjson.dumps(positions), orjson.dumps(sink_tokens)),
            )
            crash_point("checkpoint.in_state_transaction")
            for step, data in encoded.items():
                self._execute(
                    conn,
                    "INSERT INTO step_state (pipeline, step, data) VALUES (?,?,?) "
                    "ON CONFLICT(pipeline, step) DO UPDATE SET data=excluded.data",
                    (pipeline, step, data),
                )
            if group is not None:
                for step, size in self._store_partitions(conn, group).items():
                    sizes[step] = sizes.get(step, 0) + size
            for step, frame in dead_letters:
                self._executemany(
                    conn,
                    "INSERT INTO dead_letters (pipeline, step, reason, record, created_at, "
                    "run_id) VALUES (?,?,?,?,?,?)",
                    (
                        (ledger, step, reason, record, now, run_id)
                        for record, reason in frame.select("record", "reason").iter_rows()
                    ),
                )
        return sizes

    def _store_partitions(self, conn: Any, group: GroupCheckpoint) -> dict[str, int]:
        sizes: dict[str, int] = {}
        for part in group.partitions:
            states = {step: encode_state(state) for step, state in part.step_states.items()}
            for step, data in states.items():
                sizes[step] = sizes.get(step, 0) + len(data)
            updated = self._execute(
                conn,
                "UPDATE partition_state SET position=?, states=? WHERE pipeline=? AND "
                "source=? AND part=? AND owner=? AND epoch=?",
                (
                    orjson.dumps(part.position),
                    _pack(states),
                    group.pipeline,
                    part.source,
                    part.part,
                    group.owner,
                    part.epoch,
                ),
            )
            if updated.rowcount != 1:
                raise PartitionLostError(
                    f"partition {part.part} of source {part.source!r} has been claimed by "
                    f"another worker since {group.owner} took it; this worker stops so that "
                    "it cannot overwrite newer state"
                )
        return sizes

    def claim_partitions(
        self, pipeline: str, owner: str, source: str, parts: list[str]
    ) -> list[PartitionState]:
        """Take partitions over for ``owner``: bump each one's epoch (fencing the previous
        owner's checkpoints) and return its last checkpointed position and step states."""
        claims = []
        with self._transaction() as conn:
            for part in parts:
                row = self._execute(
                    conn,
                    "INSERT INTO partition_state (pipeline, source, part, owner, epoch) "
                    "VALUES (?,?,?,?,1) ON CONFLICT (pipeline, source, part) DO UPDATE SET "
                    "owner=excluded.owner, epoch=partition_state.epoch + 1 "
                    "RETURNING epoch, position, states",
                    (pipeline, source, part, owner),
                ).fetchone()
                epoch, position, states = row
                claims.append(
                    PartitionState(
                        source=source,
                        part=part,
                        epoch=int(epoch),
                        position=orjson.loads(position) if position is not None else None,
                        step_states={
                            step: decode_state(data) for step, data in _unpack(states).items()
                        },
                    )
                )
        return claims

    def partition_states(self, pipeline: str) -> list[tuple[str, str, str, int, Any]]:
        """(source, partition, owner, epoch, position) of every partition a group of
        ``pipeline``'s workers has checkpointed, for operators and tests."""
        with self._lock:
            rows = self._execute(
                self._conn,
                "SELECT source, part, owner, epoch, position FROM partition_state "
                "WHERE pipeline=? ORDER BY source, part",
                (pipeline,),
            ).fetchall()
        return [
            (src, part, owner, int(epoch), orjson.loads(pos) if pos is not None else None)
            for src, part, owner, epoch, pos in rows
        ]

    def reset(self, pipeline: str, dead_letters: bool = False) -> None:
        """Forget a pipeline's checkpoint and state (and its dead letters if asked)."""
        with self._transaction() as conn:
            # A group's workers keep their own checkpoints (sink tokens) as `name#worker-ID`.
            workers = pipeline + "#worker-"
            for table in ("checkpoints", "step_state"):
                self._execute(
                    conn,
                    f"DELETE FROM {table} WHERE pipeline=? OR "  # nosec B608 - our table names
                    "substr(pipeline, 1, length(CAST(? AS TEXT)))=?",
                    (pipeline, workers, workers),
                )
            self._execute(conn, "DELETE FROM partition_state WHERE pipeline=?", (pipeline,))
            if dead_letters:
                self._execute(conn, "DELETE FROM dead_letters WHERE pipeline=?", (pipeline,))

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
            sql += " AND strpos(reason, ?) > 0" if self._pg else " AND instr(reason, ?) > 0"
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
            rows = self._execute(self._conn, sql, args).fetchall()
        return [DeadLetter(*row) for row in rows]

    def dead_letter_summary(self, pipeline: str) -> list[tuple[str, str, int]]:
        """(step, reason, count) for the pipeline's dead letters not yet replayed."""
        with self._lock:
            rows: list[tuple[str, str, int]] = self._execute(
                self._conn,
                "SELECT step, reason, count(*) FROM dead_letters WHERE pipeline=? AND "
                "replayed_at IS NULL GROUP BY step, reason ORDER BY 3 DESC",
                (pipeline,),
            ).fetchall()
        return [(step, reason, int(n)) for step, reason, n in rows]

    def mark_replayed(self, ids: list[int]) -> None:
        """Mark ledger rows as replayed."""
        with self._transaction() as conn:
            self._executemany(
                conn,
                "UPDATE dead_letters SET replayed_at=? WHERE id=?",
                [(time.time(), i) for i in ids],
            )

    # -- runs ----------------------------------------------------------------------------

    def start_run(self, run_id: str, pipeline: str) -> None:
        """Record that a run started."""
        with self._transaction() as conn:
            self._execute(
                conn,
                "INSERT INTO runs (id, pipeline, started_at, status) VALUES (?,?,?, 'running')",
                (run_id, pipeline, time.time()),
            )

    def end_run(self, run_id: str, status: str, counts: Any, error: str | None = None) -> None:
        """Record how a run ended."""
        with self._transaction() as conn:
            self._execute(
                conn,
                "UPDATE runs SET ended_at=?, status=?, counts=?, error=? WHERE id=?",
                (time.time(), status, orjson.dumps(counts), error, run_id),
            )

    def record_missed(self, run_id: str, pipeline: str, due_at: float, reason: str) -> None:
        """Record a scheduled run that did not start (the previous run was still going), so
        run history shows the gap."""
        with self._transaction() as conn:
            self._execute(
                conn,
                "INSERT INTO runs (id, pipeline, started_at, ended_at, status, error) "
                "VALUES (?,?,?,?, 'missed', ?)",
                (run_id, pipeline, due_at, due_at, reason),
            )

    def runs(self, pipeline: str, limit: int = 20) -> list[dict[str, Any]]:
        """The most recent runs of a pipeline, newest first."""
        with self._lock:
            rows = self._execute(
                self._conn,
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


class PostgresStateStore(StateStore):
    """The state store in PostgreSQL, shared by workers on several machines.

    One connection, used under a lock like the SQLite one; each checkpoint is one transaction.
    """

    _begin = "BEGIN"
    _pg = True

    def __init__(self, url: str, local_dir: str | Path) -> None:
        try:
            import psycopg
        except ImportError as exc:
            raise MissingDependencyError("psycopg", "postgres") from exc
        self.url = url
        self.path = Path(local_dir) / "state.postgres"
        self._lock = threading.Lock()
        try:
            self._conn = psycopg.connect(url, autocommit=True)
            with self._lock:
                self._conn.execute("SELECT pg_advisory_lock(7316)")  # one schema creator at once
                try:
                    self._conn.execute(
                        _SCHEMA_TEMPLATE.format(
                            real="DOUBLE PRECISION", blob="BYTEA", serial="BIGSERIAL PRIMARY KEY"
                        )
                    )
                finally:
                    self._conn.execute("SELECT pg_advisory_unlock(7316)")
        except psycopg.Error as exc:
            raise StateError(redact(f"cannot open the state store {url}: {exc}")) from exc

    def _sql(self, text: str) -> str:
        return text.replace("?", "%s")

    def _executemany(self, conn: Any, sql: str, rows: Iterable[Any]) -> None:
        with conn.cursor() as cursor:
            cursor.executemany(self._sql(sql), rows)

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()


def open_state_store(location: str | None, base_dir: Path) -> StateStore:
    """The store named by a pipeline's ``state:``: a PostgreSQL URL, or a SQLite file path
    (relative to the pipeline file); ``.tideflow/state.db`` beside the pipeline by default."""
    if location and location.startswith(("postgresql://", "postgres://")):
        return PostgresStateStore(location, base_dir / ".tideflow")
    return StateStore(state_path(location, base_dir))


def state_path(location: str | None, base_dir: Path) -> Path:
    """Where a SQLite state store lives."""
    if location:
        path = Path(location)
        return path if path.is_absolute() else base_dir / path
    return base_dir / ".tideflow" / "state.db"

"""The state store: checkpoints, step state, the dead-letter ledger and run history.

SQLite by default (``.tideflow/state.db``); PostgreSQL (``state: postgresql://...``) when
workers on several machines share state. A checkpoint — source positions, step state, sink
commit tokens and the dead letters since the last one — is written in one transaction, so it
is either wholly there or not at all. Both backends run the same SQL (written with ``?``
placeholders, which the PostgreSQL backend turns into ``%s``).

Step state is stored whole (``step_state``; per partition in ``partition_state``) or, for
steps that can say what changed (:class:`~tideflow.core.delta.StateDelta`), as a base
snapshot plus the deltas stored after it (``state_deltas``, in order of ``epoch``, ``seq``),
applied on load. Storing a full snapshot of a step deletes its deltas (compaction), in the
same transaction.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import struct
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import polars as pl

from tideflow.core.checkpoints import (
    Checkpoint,
    FencedError,
    GroupCheckpoint,
    Lease,
    PartitionLostError,
    PartitionState,
)
from tideflow.core.codec import decode_state, encode_state
from tideflow.core.delta import StateDelta, apply_delta, is_delta
from tideflow.core.faults import crash_point
from tideflow.errors import StateError, require
from tideflow.secrets import redact

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
CREATE TABLE IF NOT EXISTS state_deltas (
    pipeline TEXT NOT NULL,
    scope TEXT NOT NULL,
    step TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    data {blob} NOT NULL,
    PRIMARY KEY (pipeline, scope, step, epoch, seq)
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
CREATE TABLE IF NOT EXISTS store_info (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoint_leases (
    pipeline TEXT PRIMARY KEY,
    epoch INTEGER NOT NULL,
    owner TEXT NOT NULL,
    claimed_at {real} NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    pipeline TEXT NOT NULL,
    sink TEXT NOT NULL,
    checkpoint INTEGER NOT NULL,
    chunk INTEGER NOT NULL,
    data {blob} NOT NULL,
    PRIMARY KEY (pipeline, sink, checkpoint, chunk)
);
CREATE TABLE IF NOT EXISTS source_origins (
    pipeline TEXT NOT NULL,
    source TEXT NOT NULL,
    identity TEXT NOT NULL,
    described TEXT NOT NULL,
    PRIMARY KEY (pipeline, source)
);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    pipeline TEXT NOT NULL,
    started_at {real} NOT NULL,
    ended_at {real},
    status TEXT NOT NULL,
    counts {blob},
    error TEXT
);
CREATE TABLE IF NOT EXISTS run_processes (
    run_id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL
);
"""


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


def _encode(state: Any) -> bytes:
    """A step's state (a full snapshot or a :class:`StateDelta`) as stored."""
    return encode_state(state.encodable() if isinstance(state, StateDelta) else state)


def _scope(source: str, part: str) -> str:
    """The ``state_deltas.scope`` of one source partition's step state ('' outside groups)."""
    return orjson.dumps([source, part]).decode()


def _restore(bases: dict[str, bytes], deltas: list[tuple[str, bytes]]) -> dict[str, Any]:
    """Step states: each step's base snapshot with the deltas stored after it applied in
    order (a step may have deltas only: its first state was empty)."""
    states: dict[str, Any] = {step: decode_state(data) for step, data in bases.items()}
    for step, data in deltas:
        delta = decode_state(data)
        if not is_delta(delta):
            raise StateError(f"step {step!r}: a stored state delta is not a delta")
        states[step] = apply_delta(states.get(step), delta)
    return states


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
        self.found_bytes: int | None = None
        """Size of the file when it was opened; None when it did not exist (a fresh store)."""
        try:
            self.found_bytes = self.path.stat().st_size if str(path) != ":memory:" else 0
        except FileNotFoundError:
            self.found_bytes = None
        except OSError:
            self.found_bytes = 0
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

    def describe(self) -> str:
        """Where the store is and what was found there when it was opened."""
        if str(self.path) == ":memory:":
            return "an in-memory state store"
        if self.found_bytes is None:
            return f"{self.path} (it did not exist)"
        if self.found_bytes == 0:
            return f"{self.path} (it was empty: 0 bytes)"
        return f"{self.path} (it holds nothing of this pipeline)"

    def knows(self, pipeline: str) -> bool:
        """Whether the store holds anything of ``pipeline`` (or of its group workers): a
        checkpoint, a partition's state, or a run (a ``state reset`` counts). The latest run
        does not count when it was refused for lack of state, or is a start-over that was
        interrupted while clearing the output (``clearing``)."""
        workers = pipeline + "#worker-"
        own = "(pipeline=? OR substr(pipeline, 1, length(CAST(? AS TEXT)))=?)"
        args = (pipeline, workers, workers)
        with self._lock:
            if self._execute(
                self._conn,
                f"SELECT 1 FROM checkpoints WHERE {own} LIMIT 1",  # nosec B608 - a fixed clause, values bound
                args,
            ).fetchone():
                return True
            if self._execute(
                self._conn, "SELECT 1 FROM partition_state WHERE pipeline=? LIMIT 1", (pipeline,)
            ).fetchone():
                return True
            latest = self._execute(
                self._conn,
                f"SELECT status FROM runs WHERE {own} ORDER BY started_at DESC LIMIT 1",  # nosec B608
                args,
            ).fetchone()
        return latest is not None and latest[0] not in ("refused", "clearing")

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
            deltas = self._deltas(self._conn, pipeline, "")
        if row is None:
            return None
        return Checkpoint(
            id=row[0],
            created_at=row[1],
            positions=orjson.loads(row[2]),
            sink_tokens=orjson.loads(row[3]),
            step_states=_restore(dict(states), deltas),
        )

    def _deltas(self, conn: Any, pipeline: str, scope: str) -> list[tuple[str, bytes]]:
        """(step, encoded delta) stored for ``scope`` after each step's base, in order."""
        rows = self._execute(
            conn,
            "SELECT step, data FROM state_deltas WHERE pipeline=? AND scope=? "
            "ORDER BY step, epoch, seq",
            (pipeline, scope),
        ).fetchall()
        return [(str(step), bytes(data)) for step, data in rows]

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
        *,
        lease: Lease | None = None,
        outbox: dict[str, Iterable[bytes]] | None = None,
        delivered: dict[str, int] | None = None,
        ledger: str | None = None,
        written: dict[tuple[str, str, str], int] | None = None,
    ) -> dict[str, int]:
        """Store a checkpoint and the dead letters it covers, atomically; returns the size in
        bytes of each step's stored state. The dead letters are kept under ``ledger`` when
        given (a replay's go to its pipeline's own ledger, where they are listed and
        replayed again), else under the group's pipeline or ``pipeline``.

        A worker of a consumer group also stores each partition it owns (``group``). A
        worker that lost a partition to another one since its claim (a rebalance it missed
        while stalled) fails the whole checkpoint with :class:`PartitionLostError` instead
        of overwriting newer state. Its dead letters go to the group's pipeline.

        With ``lease``, the checkpoint is stored only while the lease is the pipeline's
        latest (else :class:`FencedError`). ``outbox`` holds, per sink, the entries the
        sink staged for this checkpoint (see :meth:`store_outbox`); ``delivered`` the last
        checkpoint, per sink, whose entries are delivered and can go.

        A step state that is a :class:`StateDelta` is stored after the step's base (see
        the module's docstring); a full one replaces the base and its deltas. ``written``,
        when given, receives the bytes stored per (step, source, partition), the source
        and partition empty outside a group."""
        now = time.time()
        encoded = {step: _encode(state) for step, state in step_states.items()}
        sizes = {step: len(data) for step, data in encoded.items()}
        if written is not None:
            written.update({(step, "", ""): size for step, size in sizes.items()})
        ledger = ledger or (group.pipeline if group is not None else pipeline)
        with self._transaction() as conn:
            if lease is not None:
                self._check_lease(conn, lease)
            for sink, done in (delivered or {}).items():
                self._execute(
                    conn,
                    "DELETE FROM outbox WHERE pipeline=? AND sink=? AND checkpoint<=?",
                    (pipeline, sink, done),
                )
            if outbox:
                self._insert_outbox(conn, pipeline, checkpoint_id, outbox)
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
                if isinstance(step_states[step], StateDelta):
                    self._insert_delta(conn, pipeline, "", step, 0, checkpoint_id, data)
                    continue
                self._execute(
                    conn,
                    "INSERT INTO step_state (pipeline, step, data) VALUES (?,?,?) "
                    "ON CONFLICT(pipeline, step) DO UPDATE SET data=excluded.data",
                    (pipeline, step, data),
                )
                # A new base: the deltas stored after the old one are in it (compaction).
                gone = self._execute(
                    conn,
                    "DELETE FROM state_deltas WHERE pipeline=? AND scope='' AND step=?",
                    (pipeline, step),
                )
                if gone.rowcount:
                    crash_point("checkpoint.compacted")
            if group is not None:
                stored = self._store_partitions(conn, group, checkpoint_id, written)
                for step, size in stored.items():
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

    def _insert_delta(
        self, conn: Any, pipeline: str, scope: str, step: str, epoch: int, seq: int, data: bytes
    ) -> None:
        self._execute(
            conn,
            "INSERT INTO state_deltas (pipeline, scope, step, epoch, seq, data) "
            "VALUES (?,?,?,?,?,?)",
            (pipeline, scope, step, epoch, seq, data),
        )

    def identity(self) -> str:
        """A random id given to this state store when it was created, stable for its life
        (names that must not clash between deployments include it)."""
        if getattr(self, "_identity", None) is None:
            with self._transaction() as conn:
                self._execute(
                    conn,
                    "INSERT INTO store_info (key, value) VALUES ('id', ?) "
                    "ON CONFLICT (key) DO NOTHING",
                    (uuid.uuid4().hex,),
                )
                row = self._execute(conn, "SELECT value FROM store_info WHERE key='id'").fetchone()
            self._identity: str | None = str(row[0])
        assert self._identity is not None
        return self._identity

    # -- leases: one run stores a pipeline's checkpoints -----------------------------------

    def claim_lease(self, pipeline: str, owner: str) -> Lease:
        """Take ``pipeline``'s checkpoints over for the run ``owner``: bump the lease epoch,
        so that checkpoints of any earlier run still alive (a paused process, a stalled
        worker with the same id) are refused from now on."""
        with self._transaction() as conn:
            row = self._execute(
                conn,
                "INSERT INTO checkpoint_leases (pipeline, epoch, owner, claimed_at) "
                "VALUES (?,1,?,?) ON CONFLICT (pipeline) DO UPDATE SET "
                "epoch=checkpoint_leases.epoch + 1, owner=excluded.owner, "
                "claimed_at=excluded.claimed_at RETURNING epoch",
                (pipeline, owner, time.time()),
            ).fetchone()
        return Lease(pipeline, int(row[0]), owner)

    def check_lease(self, lease: Lease) -> None:
        """Raise :class:`FencedError` unless ``lease`` is still the pipeline's latest."""
        with self._transaction() as conn:
            self._check_lease(conn, lease)

    def _check_lease(self, conn: Any, lease: Lease) -> None:
        # An UPDATE, not a SELECT: on PostgreSQL it locks the row until the transaction
        # ends, so a claim made meanwhile waits for this checkpoint and then fences the next.
        held = self._execute(
            conn,
            "UPDATE checkpoint_leases SET claimed_at=claimed_at WHERE pipeline=? AND epoch=?",
            (lease.pipeline, lease.epoch),
        )
        if held.rowcount != 1:
            row = self._execute(
                conn,
                "SELECT owner, claimed_at FROM checkpoint_leases WHERE pipeline=?",
                (lease.pipeline,),
            ).fetchone()
            if row is None:
                raise FencedError(
                    f"the state of {lease.pipeline!r} was reset while this run ({lease.owner}) "
                    "was going; it stops without storing its checkpoint"
                )
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row[1]))
            raise FencedError(
                f"another run ({row[0]}) took the checkpoints of {lease.pipeline!r} over at "
                f"{since}; this run ({lease.owner}) stops without storing its checkpoint, so "
                "it cannot overwrite the newer run's"
            )

    # -- the outbox: output that is part of a checkpoint ------------------------------------

    def store_outbox(
        self, pipeline: str, checkpoint_id: int, outbox: dict[str, Iterable[bytes]], lease: Lease
    ) -> None:
        """Store sinks' staged entries for ``checkpoint_id`` in a transaction of their own
        (when the checkpoint itself is committed elsewhere first: a sink that keeps it)."""
        with self._transaction() as conn:
            self._check_lease(conn, lease)
            self._insert_outbox(conn, pipeline, checkpoint_id, outbox)

    def _insert_outbox(
        self, conn: Any, pipeline: str, checkpoint_id: int, outbox: dict[str, Iterable[bytes]]
    ) -> None:
        for sink, entries in outbox.items():
            self._executemany(
                conn,
                "INSERT INTO outbox (pipeline, sink, checkpoint, chunk, data) VALUES (?,?,?,?,?)",
                (
                    (pipeline, sink, checkpoint_id, chunk, data)
                    for chunk, data in enumerate(entries)
                ),
            )

    def outbox_checkpoints(self, pipeline: str, sink: str) -> list[int]:
        """The checkpoints whose staged entries ``sink`` has not yet marked delivered."""
        with self._lock:
            rows = self._execute(
                self._conn,
                "SELECT DISTINCT checkpoint FROM outbox WHERE pipeline=? AND sink=? "
                "ORDER BY checkpoint",
                (pipeline, sink),
            ).fetchall()
        return [int(row[0]) for row in rows]

    def outbox_entries(self, pipeline: str, sink: str, checkpoint_id: int) -> Iterator[bytes]:
        """The staged entries of one checkpoint, in order, read one at a time (memory stays
        bounded by the largest entry)."""
        chunk = 0
        while True:
            with self._lock:
                row = self._execute(
                    self._conn,
                    "SELECT data FROM outbox WHERE pipeline=? AND sink=? AND checkpoint=? "
                    "AND chunk=?",
                    (pipeline, sink, checkpoint_id, chunk),
                ).fetchone()
            if row is None:
                return
            yield bytes(row[0])
            chunk += 1

    def outbox_delivered(self, pipeline: str, sink: str, checkpoint_id: int) -> None:
        """``sink`` delivered its entries of ``checkpoint_id`` and every earlier checkpoint."""
        with self._transaction() as conn:
            self._execute(
                conn,
                "DELETE FROM outbox WHERE pipeline=? AND sink=? AND checkpoint<=?",
                (pipeline, sink, checkpoint_id),
            )

    def outbox_summary(self, pipeline: str) -> list[tuple[str, str, int]]:
        """(checkpoint key, sink, checkpoint) of every outbox not yet forgotten, for the
        pipeline and its group workers (``NAME#worker-ID``)."""
        workers = pipeline + "#"
        with self._lock:
            rows = self._execute(
                self._conn,
                "SELECT DISTINCT pipeline, sink, checkpoint FROM outbox WHERE pipeline=? OR "
                "substr(pipeline, 1, length(CAST(? AS TEXT)))=? ORDER BY 1, 2, 3",
                (pipeline, workers, workers),
            ).fetchall()
        return [(str(key), str(sink), int(checkpoint)) for key, sink, checkpoint in rows]

    def drop_outbox_after(self, pipeline: str, checkpoint_id: int) -> int:
        """Delete entries staged for checkpoints after ``checkpoint_id`` (stored before a
        checkpoint that never committed); returns how many."""
        with self._transaction() as conn:
            gone = self._execute(
                conn,
                "DELETE FROM outbox WHERE pipeline=? AND checkpoint>?",
                (pipeline, checkpoint_id),
            )
        return int(gone.rowcount or 0)

    def _store_partitions(
        self,
        conn: Any,
        group: GroupCheckpoint,
        checkpoint_id: int,
        written: dict[tuple[str, str, str], int] | None,
    ) -> dict[str, int]:
        sizes: dict[str, int] = {}
        for part in group.partitions:
            states = {step: _encode(state) for step, state in part.step_states.items()}
            for step, data in states.items():
                sizes[step] = sizes.get(step, 0) + len(data)
                if written is not None:
                    written[(step, part.source, part.part)] = len(data)
            deltas = [s for s, v in part.step_states.items() if isinstance(v, StateDelta)]
            if deltas and len(deltas) != len(states):
                # The packed base holds every step of the partition: it is replaced whole.
                raise StateError(
                    f"partition {part.part}: the states of {', '.join(deltas)} are deltas "
                    "and others full snapshots; a partition's are all one or the other"
                )
            fence = (group.pipeline, part.source, part.part, group.owner, part.epoch)
            if deltas:
                updated = self._execute(
                    conn,
                    "UPDATE partition_state SET position=? WHERE pipeline=? AND "
                    "source=? AND part=? AND owner=? AND epoch=?",
                    (orjson.dumps(part.position), *fence),
                )
            else:
                updated = self._execute(
                    conn,
                    "UPDATE partition_state SET position=?, states=? WHERE pipeline=? AND "
                    "source=? AND part=? AND owner=? AND epoch=?",
                    (orjson.dumps(part.position), _pack(states), *fence),
                )
            if updated.rowcount == 1:
                scope = _scope(part.source, part.part)
                if deltas:
                    for step, data in states.items():
                        self._insert_delta(
                            conn, group.pipeline, scope, step, part.epoch, checkpoint_id, data
                        )
                else:
                    gone = self._execute(
                        conn,
                        "DELETE FROM state_deltas WHERE pipeline=? AND scope=?",
                        (group.pipeline, scope),
                    )
                    if gone.rowcount:
                        crash_point("checkpoint.compacted")
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
                deltas = self._deltas(conn, pipeline, _scope(source, part))
                claims.append(
                    PartitionState(
                        source=source,
                        part=part,
                        epoch=int(epoch),
                        position=orjson.loads(position) if position is not None else None,
                        step_states=_restore(_unpack(states), deltas),
                    )
                )
        return claims

    def source_origin(self, pipeline: str, source: str) -> tuple[str, str] | None:
        """The identity (and its description) of the system ``source``'s stored positions
        are offsets in, as recorded by :meth:`record_source_origin`."""
        with self._lock:
            row = self._execute(
                self._conn,
                "SELECT identity, described FROM source_origins WHERE pipeline=? AND source=?",
                (pipeline, source),
            ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    def record_source_origin(
        self, pipeline: str, source: str, identity: str, described: str
    ) -> None:
        """Remember which system ``source``'s positions are offsets in (replacing any)."""
        with self._transaction() as conn:
            self._execute(
                conn,
                "INSERT INTO source_origins (pipeline, source, identity, described) "
                "VALUES (?,?,?,?) ON CONFLICT (pipeline, source) DO UPDATE SET "
                "identity=excluded.identity, described=excluded.described",
                (pipeline, source, identity, described),
            )

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
            for table in (
                "checkpoints",
                "step_state",
                "state_deltas",
                "outbox",
                "checkpoint_leases",
                "source_origins",
            ):
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

    def record_reset(self, run_id: str, pipeline: str, note: str) -> None:
        """Record a deliberate ``state reset`` in the run history (status ``reset``), so the
        next run knows that starting from the beginning is wanted."""
        now = time.time()
        with self._transaction() as conn:
            self._execute(
                conn,
                "INSERT INTO runs (id, pipeline, started_at, ended_at, status, error) "
                "VALUES (?,?,?,?, 'reset', ?)",
                (run_id, pipeline, now, now, note),
            )

    def start_run(self, run_id: str, pipeline: str, status: str = "running") -> None:
        """Record that a run started (``clearing``: a start-over clearing the output first),
        or, for a run already recorded, that it moved on to ``status``.

        A run starts ``running`` only after it claimed the pipeline's lease, so an earlier
        run still recorded as ``running`` (or ``clearing``) cannot store a checkpoint any
        more: its process died without recording its end (a crash, ``kill -9``), or, alive,
        it is fenced and records its own end when it stops. It is marked ``interrupted``."""
        with self._transaction() as conn:
            self._execute(
                conn,
                "INSERT INTO runs (id, pipeline, started_at, status) VALUES (?,?,?,?) "
                "ON CONFLICT (id) DO UPDATE SET status=excluded.status",
                (run_id, pipeline, time.time(), status),
            )
            # Which process runs it: a run whose process is gone without recording its end
            # shows as interrupted (`runs()`), before any later run starts.
            self._execute(
                conn,
                "INSERT INTO run_processes (run_id, host, pid) VALUES (?,?,?) "
                "ON CONFLICT (run_id) DO NOTHING",
                (run_id, socket.gethostname(), os.getpid()),
            )
            if status == "running":
                self._execute(
                    conn,
                    "UPDATE runs SET status='interrupted', error=? "
                    "WHERE pipeline=? AND id<>? AND status IN ('running', 'clearing')",
                    (
                        f"ended without recording how (a crash?); run {run_id} took over",
                        pipeline,
                        run_id,
                    ),
                )

    def end_run(self, run_id: str, status: str, counts: Any, error: str | None = None) -> None:
        """Record how a run ended."""
        with self._transaction() as conn:
            self._execute(
                conn,
                "UPDATE runs SET ended_at=?, status=?, counts=?, error=? WHERE id=?",
                (time.time(), status, orjson.dumps(counts), error, run_id),
            )
            self._execute(conn, "DELETE FROM run_processes WHERE run_id=?", (run_id,))

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

    def pipelines(self) -> list[str]:
        """Names of the pipelines this store knows (they ran, checkpointed or dead-lettered
        here), without the ``#scope`` of previews, replays and group workers."""
        with self._lock:
            rows = self._execute(
                self._conn,
                "SELECT pipeline FROM runs UNION SELECT pipeline FROM checkpoints "
                "UNION SELECT pipeline FROM dead_letters",
            ).fetchall()
        return sorted({str(row[0]).partition("#")[0] for row in rows})

    def runs(self, pipeline: str, limit: int = 20) -> list[dict[str, Any]]:
        """The most recent runs of a pipeline, newest first. A run recorded as running whose
        process is gone (on this machine) is ``interrupted``: it died without recording how
        it ended (a crash, ``kill -9``)."""
        with self._lock:
            rows = self._execute(
                self._conn,
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


class PostgresStateStore(StateStore):
    """The state store in PostgreSQL, shared by workers on several machines.

    One connection, used under a lock like the SQLite one; each checkpoint is one transaction.
    """

    _begin = "BEGIN"
    _pg = True

    def __init__(self, url: str, local_dir: str | Path) -> None:
        psycopg = require("psycopg", "postgres")
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

    def describe(self) -> str:
        """The store's URL (password masked)."""
        return f"{redact(self.url)} (it holds nothing of this pipeline)"

    def _sql(self, text: str) -> str:
        return text.replace("?", "%s")

    def _executemany(self, conn: Any, sql: str, rows: Iterable[Any]) -> None:
        with conn.cursor() as cursor:
            cursor.executemany(self._sql(sql), rows)

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()


STATE_VARIABLE = "TIDEFLOW_STATE"
"""The environment variable naming the state store of pipelines whose file sets no
``state:`` (how a deployment points every pipeline at one PostgreSQL store, from a secret)."""


def state_location(location: str | None) -> str | None:
    """A pipeline's ``state:``, else ``TIDEFLOW_STATE`` from the environment, else None (the
    SQLite file beside the pipeline)."""
    return location or os.environ.get(STATE_VARIABLE) or None


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


def open_state_store(location: str | None, base_dir: Path) -> StateStore:
    """The store named by a pipeline's ``state:`` (or ``TIDEFLOW_STATE``): a PostgreSQL URL,
    or a SQLite file path (relative to the pipeline file); ``.tideflow/state.db`` beside the
    pipeline by default."""
    location = state_location(location)
    if location and location.startswith(("postgresql://", "postgres://")):
        return PostgresStateStore(location, base_dir / ".tideflow")
    return StateStore(state_path(location, base_dir))


def state_path(location: str | None, base_dir: Path) -> Path:
    """Where a SQLite state store lives (``location`` as :func:`state_location` gives it)."""
    if location:
        path = Path(location)
        return path if path.is_absolute() else base_dir / path
    return base_dir / ".tideflow" / "state.db"

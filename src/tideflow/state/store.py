"""The state store: the engine's checkpoints (``core.checkpoints.CheckpointStore``).

SQLite by default (``.tideflow/state.db``); PostgreSQL (``state: postgresql://...``,
``state.postgres``) when workers on several machines share state; ``state.locate`` says
which a pipeline uses. A checkpoint — source positions, step state, sink commit tokens, the
sinks' outbox entries and the dead letters since the last one — is written in one
transaction, so it is either wholly there or not at all. The store also keeps the leases
that fence zombie runs, group workers' partition claims and where sources' positions were
taken, and records runs as they start and end.

The store is composed of parts sharing one :class:`~tideflow.state.database.Database` (its
connection and transactions): ``store.steps`` stores step state (``state.steps``: whole
snapshots or deltas, per pipeline and per partition), ``store.ledger`` and
``store.history`` are the dead-letter ledger and run history operators read
(``state.ledger``). Both backends run the same SQL.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson
import polars as pl

from tideflow.core.checkpoints import (
    Checkpoint,
    FencedError,
    GroupCheckpoint,
    Lease,
    PartitionState,
)
from tideflow.core.faults import crash_point
from tideflow.core.plan import STAGE_SEPARATOR
from tideflow.state.database import Database, SqliteDatabase
from tideflow.state.ledger import DeadLetterLedger, RunHistory
from tideflow.state.steps import StepStates, encode


class StateStore:
    """A SQLite state store; safe to use from several threads of one process.

    ``path`` is the database file; its folder is the run's local state directory. A
    subclass passes the ``db`` it opened instead (``state.postgres``).
    """

    def __init__(self, path: str | Path, db: Database | None = None) -> None:
        self.path = Path(path)
        self.found_bytes: int | None = None
        """Size of the file when it was opened; None when it did not exist (a fresh store)."""
        if db is None:
            try:
                self.found_bytes = self.path.stat().st_size if str(path) != ":memory:" else 0
            except FileNotFoundError:
                self.found_bytes = None
            except OSError:
                self.found_bytes = 0
            db = SqliteDatabase(self.path)
        self.db = db
        """The connection and transactions, shared with the ledger and the run history."""
        self.steps = StepStates(db)
        """The step states stored in the checkpoints."""
        self.ledger = DeadLetterLedger(db)
        """The dead letters, written here in the checkpoints that cover them."""
        self.history = RunHistory(db)
        """The run history (runs are recorded by :meth:`start_run` and :meth:`end_run`)."""

    def close(self) -> None:
        """Close the connection."""
        self.db.close()

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
        with self.db.reading() as conn:
            if self.db.execute(
                conn,
                f"SELECT 1 FROM checkpoints WHERE {own} LIMIT 1",  # nosec B608 - a fixed clause, values bound
                args,
            ).fetchone():
                return True
            if self.db.execute(
                conn, "SELECT 1 FROM partition_state WHERE pipeline=? LIMIT 1", (pipeline,)
            ).fetchone():
                return True
            latest = self.db.execute(
                conn,
                f"SELECT status FROM runs WHERE {own} ORDER BY started_at DESC LIMIT 1",  # nosec B608
                args,
            ).fetchone()
        return latest is not None and latest[0] not in ("refused", "clearing")

    # -- checkpoints ---------------------------------------------------------------------

    def load_checkpoint(self, pipeline: str) -> Checkpoint | None:
        """The last checkpoint, with step states, or None if the pipeline never checkpointed."""
        with self.db.reading() as conn:
            row = self.db.execute(
                conn,
                "SELECT id, created_at, positions, sink_tokens FROM checkpoints WHERE pipeline=?",
                (pipeline,),
            ).fetchone()
            states = self.steps.load(conn, pipeline)
        if row is None:
            return None
        return Checkpoint(
            id=row[0],
            created_at=row[1],
            positions=orjson.loads(row[2]),
            sink_tokens=orjson.loads(row[3]),
            step_states=states,
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
        ``state.steps``); a full one replaces the base and its deltas. ``written``,
        when given, receives the bytes stored per (step, source, partition), the source
        and partition empty outside a group."""
        now = time.time()
        encoded = {step: encode(state) for step, state in step_states.items()}
        sizes = {step: len(data) for step, data in encoded.items()}
        if written is not None:
            written.update({(step, "", ""): size for step, size in sizes.items()})
        ledger = ledger or (group.pipeline if group is not None else pipeline)
        with self.db.transaction() as conn:
            if lease is not None:
                self._check_lease(conn, lease)
            for sink, done in (delivered or {}).items():
                self.db.execute(
                    conn,
                    "DELETE FROM outbox WHERE pipeline=? AND sink=? AND checkpoint<=?",
                    (pipeline, sink, done),
                )
            if outbox:
                self._insert_outbox(conn, pipeline, checkpoint_id, outbox)
            self.db.execute(
                conn,
                "INSERT INTO checkpoints (pipeline, id, created_at, positions, sink_tokens) "
                "VALUES (?,?,?,?,?) ON CONFLICT(pipeline) DO UPDATE SET id=excluded.id, "
                "created_at=excluded.created_at, positions=excluded.positions, "
                "sink_tokens=excluded.sink_tokens",
                (pipeline, checkpoint_id, now, orjson.dumps(positions), orjson.dumps(sink_tokens)),
            )
            crash_point("checkpoint.in_state_transaction")
            self.steps.store(conn, pipeline, checkpoint_id, step_states, encoded)
            if group is not None:
                stored = self.steps.store_partitions(conn, group, checkpoint_id, written)
                for step, size in stored.items():
                    sizes[step] = sizes.get(step, 0) + size
            self.ledger.add(conn, ledger, run_id, dead_letters, now)
        return sizes

    def identity(self) -> str:
        """A random id given to this state store when it was created, stable for its life
        (names that must not clash between deployments include it)."""
        if getattr(self, "_identity", None) is None:
            with self.db.transaction() as conn:
                self.db.execute(
                    conn,
                    "INSERT INTO store_info (key, value) VALUES ('id', ?) "
                    "ON CONFLICT (key) DO NOTHING",
                    (uuid.uuid4().hex,),
                )
                row = self.db.execute(
                    conn, "SELECT value FROM store_info WHERE key='id'"
                ).fetchone()
            self._identity: str | None = str(row[0])
        assert self._identity is not None
        return self._identity

    # -- leases: one run stores a pipeline's checkpoints -----------------------------------

    def claim_lease(self, pipeline: str, owner: str) -> Lease:
        """Take ``pipeline``'s checkpoints over for the run ``owner``: bump the lease epoch,
        so that checkpoints of any earlier run still alive (a paused process, a stalled
        worker with the same id) are refused from now on."""
        with self.db.transaction() as conn:
            row = self.db.execute(
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
        with self.db.transaction() as conn:
            self._check_lease(conn, lease)

    def _check_lease(self, conn: Any, lease: Lease) -> None:
        # An UPDATE, not a SELECT: on PostgreSQL it locks the row until the transaction
        # ends, so a claim made meanwhile waits for this checkpoint and then fences the next.
        held = self.db.execute(
            conn,
            "UPDATE checkpoint_leases SET claimed_at=claimed_at WHERE pipeline=? AND epoch=?",
            (lease.pipeline, lease.epoch),
        )
        if held.rowcount != 1:
            row = self.db.execute(
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
        with self.db.transaction() as conn:
            self._check_lease(conn, lease)
            self._insert_outbox(conn, pipeline, checkpoint_id, outbox)

    def _insert_outbox(
        self, conn: Any, pipeline: str, checkpoint_id: int, outbox: dict[str, Iterable[bytes]]
    ) -> None:
        for sink, entries in outbox.items():
            self.db.executemany(
                conn,
                "INSERT INTO outbox (pipeline, sink, checkpoint, chunk, data) VALUES (?,?,?,?,?)",
                (
                    (pipeline, sink, checkpoint_id, chunk, data)
                    for chunk, data in enumerate(entries)
                ),
            )

    def outbox_checkpoints(self, pipeline: str, sink: str) -> list[int]:
        """The checkpoints whose staged entries ``sink`` has not yet marked delivered."""
        with self.db.reading() as conn:
            rows = self.db.execute(
                conn,
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
            with self.db.reading() as conn:
                row = self.db.execute(
                    conn,
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
        with self.db.transaction() as conn:
            self.db.execute(
                conn,
                "DELETE FROM outbox WHERE pipeline=? AND sink=? AND checkpoint<=?",
                (pipeline, sink, checkpoint_id),
            )

    def outbox_summary(self, pipeline: str) -> list[tuple[str, str, int]]:
        """(checkpoint key, sink, checkpoint) of every outbox not yet forgotten, for the
        pipeline and its group workers (``NAME#worker-ID``)."""
        workers = pipeline + "#"
        with self.db.reading() as conn:
            rows = self.db.execute(
                conn,
                "SELECT DISTINCT pipeline, sink, checkpoint FROM outbox WHERE pipeline=? OR "
                "substr(pipeline, 1, length(CAST(? AS TEXT)))=? ORDER BY 1, 2, 3",
                (pipeline, workers, workers),
            ).fetchall()
        return [(str(key), str(sink), int(checkpoint)) for key, sink, checkpoint in rows]

    def drop_outbox_after(self, pipeline: str, checkpoint_id: int) -> int:
        """Delete entries staged for checkpoints after ``checkpoint_id`` (stored before a
        checkpoint that never committed); returns how many."""
        with self.db.transaction() as conn:
            gone = self.db.execute(
                conn,
                "DELETE FROM outbox WHERE pipeline=? AND checkpoint>?",
                (pipeline, checkpoint_id),
            )
        return int(gone.rowcount or 0)

    def claim_partitions(
        self, pipeline: str, owner: str, source: str, parts: list[str]
    ) -> list[PartitionState]:
        """Take partitions over for ``owner``: bump each one's epoch (fencing the previous
        owner's checkpoints) and return its last checkpointed position and step states."""
        claims = []
        with self.db.transaction() as conn:
            for part in parts:
                row = self.db.execute(
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
                        step_states=self.steps.claimed(conn, pipeline, source, part, states),
                    )
                )
        return claims

    def source_origin(self, pipeline: str, source: str) -> tuple[str, str] | None:
        """The identity (and its description) of the system ``source``'s stored positions
        are offsets in, as recorded by :meth:`record_source_origin`."""
        with self.db.reading() as conn:
            row = self.db.execute(
                conn,
                "SELECT identity, described FROM source_origins WHERE pipeline=? AND source=?",
                (pipeline, source),
            ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    def record_source_origin(
        self, pipeline: str, source: str, identity: str, described: str
    ) -> None:
        """Remember which system ``source``'s positions are offsets in (replacing any)."""
        with self.db.transaction() as conn:
            self.db.execute(
                conn,
                "INSERT INTO source_origins (pipeline, source, identity, described) "
                "VALUES (?,?,?,?) ON CONFLICT (pipeline, source) DO UPDATE SET "
                "identity=excluded.identity, described=excluded.described",
                (pipeline, source, identity, described),
            )

    def partition_states(self, pipeline: str) -> list[tuple[str, str, str, int, Any]]:
        """(source, partition, owner, epoch, position) of every partition a group of
        ``pipeline``'s workers has checkpointed, for operators and tests."""
        with self.db.reading() as conn:
            rows = self.db.execute(
                conn,
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
        with self.db.transaction() as conn:
            # A group's workers keep their own checkpoints (sink tokens) as `name#worker-ID`,
            # and the stages group workers cut it into are pipelines `name~step`.
            workers, stages = pipeline + "#worker-", pipeline + STAGE_SEPARATOR
            for table in (
                "checkpoints",
                "step_state",
                "state_deltas",
                "outbox",
                "checkpoint_leases",
                "source_origins",
                "partition_state",
            ):
                self.db.execute(
                    conn,
                    f"DELETE FROM {table} WHERE pipeline=? OR "  # nosec B608 - our table names
                    "substr(pipeline, 1, length(CAST(? AS TEXT)))=? OR "
                    "substr(pipeline, 1, length(CAST(? AS TEXT)))=?",
                    (pipeline, workers, workers, stages, stages),
                )
            if dead_letters:
                self.ledger.forget(conn, pipeline)

    # -- runs ----------------------------------------------------------------------------

    def start_run(self, run_id: str, pipeline: str, status: str = "running") -> None:
        """Record that a run started (``clearing``: a start-over clearing the output first),
        or, for a run already recorded, that it moved on to ``status``.

        A run starts ``running`` only after it claimed the pipeline's lease, so an earlier
        run still recorded as ``running`` (or ``clearing``) cannot store a checkpoint any
        more: its process died without recording its end (a crash, ``kill -9``), or, alive,
        it is fenced and records its own end when it stops. It is marked ``interrupted``."""
        with self.db.transaction() as conn:
            self.db.execute(
                conn,
                "INSERT INTO runs (id, pipeline, started_at, status) VALUES (?,?,?,?) "
                "ON CONFLICT (id) DO UPDATE SET status=excluded.status",
                (run_id, pipeline, time.time(), status),
            )
            # Which process runs it: a run whose process is gone without recording its end
            # shows as interrupted (`history.runs()`), before any later run starts.
            self.db.execute(
                conn,
                "INSERT INTO run_processes (run_id, host, pid) VALUES (?,?,?) "
                "ON CONFLICT (run_id) DO NOTHING",
                (run_id, socket.gethostname(), os.getpid()),
            )
            if status == "running":
                self.db.execute(
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
        with self.db.transaction() as conn:
            self.db.execute(
                conn,
                "UPDATE runs SET ended_at=?, status=?, counts=?, error=? WHERE id=?",
                (time.time(), status, orjson.dumps(counts), error, run_id),
            )
            self.db.execute(conn, "DELETE FROM run_processes WHERE run_id=?", (run_id,))

    def pipelines(self) -> list[str]:
        """Names of the pipelines this store knows (they ran, checkpointed or dead-lettered
        here), without the ``#scope`` of previews, replays and group workers."""
        with self.db.reading() as conn:
            rows = self.db.execute(
                conn,
                "SELECT pipeline FROM runs UNION SELECT pipeline FROM checkpoints "
                "UNION SELECT pipeline FROM dead_letters",
            ).fetchall()
        return sorted({str(row[0]).partition("#")[0] for row in rows})

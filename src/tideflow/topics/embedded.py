"""The embedded topic log: durable topics with partitions, offsets, retention and consumer
groups in one SQLite file (WAL mode), shared by every process on the machine.

Why SQLite: it is already the state store's engine, it gives many readers and one writer at a
time across processes with crash-safe transactions, and a partition read is an index range
scan on ``(topic, partition, offset)``. Appends from several processes serialise on SQLite's
write lock, each one a short transaction.

Producers write in two phases, like Kafka transactions: ``append`` under a transaction id
stores the messages and records their offset range as pending (invisible), ``commit_txn``
deletes the range record (visible, O(1) however many messages), ``abort_txns`` deletes what a
crashed producer left pending. Readers never read past the first pending offset of a
partition (the *last stable offset*), so a message that becomes visible later can never land
behind a consumer's position.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from tideflow.errors import ConfigError, PipelineError
from tideflow.topics.codec import Offsets, RawMessages, split_tp, tp
from tideflow.topics.names import topic_name_problem

_SCHEMA = """
CREATE TABLE IF NOT EXISTS topics (
    name TEXT PRIMARY KEY,
    partitions INTEGER NOT NULL,
    retention_ms INTEGER,
    retention_bytes INTEGER,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS partitions (
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS messages (
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    timestamp INTEGER NOT NULL,
    key BLOB,
    value BLOB,
    headers TEXT,
    PRIMARY KEY (topic, partition, offset)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pending (
    txn TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    start_offset INTEGER NOT NULL,
    end_offset INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS pending_by_partition ON pending (topic, partition, start_offset);
CREATE TABLE IF NOT EXISTS log_info (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS group_offsets (
    grp TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    member TEXT,
    PRIMARY KEY (grp, topic, partition)
) WITHOUT ROWID;
"""


COMMIT_OFFSET = (
    "INSERT INTO group_offsets (grp, topic, partition, next_offset, member) VALUES "
    "(?,?,?,?,?) ON CONFLICT (grp, topic, partition) DO UPDATE SET "
    "next_offset = max(next_offset, excluded.next_offset), member = excluded.member"
)
"""Store a group's next offset of a partition (never moving it backwards) and the member
that committed it (for audits: a member commits only partitions it owns)."""


@dataclass(frozen=True)
class TopicInfo:
    """A topic's settings and extent."""

    name: str
    partitions: int
    retention_ms: int | None
    retention_bytes: int | None
    start_offsets: dict[int, int]
    end_offsets: dict[int, int]


class EmbeddedLog:
    """One log file; thread-safe (one connection under a lock per process)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=60
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA busy_timeout=60000")
        # Each CREATE ... IF NOT EXISTS commits on its own; several processes may race here.
        self._conn.executescript(_SCHEMA)
        self._add_member_column()

    def _add_member_column(self) -> None:
        """Logs written before group offsets named their member get the column."""
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(group_offsets)")}
        if "member" in columns:
            return
        try:
            self._conn.execute("ALTER TABLE group_offsets ADD COLUMN member TEXT")
        except sqlite3.OperationalError as exc:
            if "duplicate column" not in str(exc):  # another process added it just now
                raise

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()

    def identity(self) -> str:
        """A random id given to this log file when it was created, stable for its life: a
        log deleted and created again at the same path has another one."""
        with self._write() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO log_info (key, value) VALUES ('id', ?)", (uuid.uuid4().hex,)
            )
            return str(conn.execute("SELECT value FROM log_info WHERE key='id'").fetchone()[0])

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    # -- topics ----------------------------------------------------------------------------

    def create_topic(
        self,
        name: str,
        partitions: int = 1,
        retention_ms: int | None = None,
        retention_bytes: int | None = None,
        exist_ok: bool = True,
    ) -> None:
        """Create a topic; with ``exist_ok`` an existing one is left as it is. A name Kafka
        would refuse is refused here too (see :mod:`tideflow.topics.names`)."""
        problem = topic_name_problem(name)
        if problem is not None:
            raise ConfigError(problem)
        if partitions < 1:
            raise PipelineError(f"topic {name!r}: partitions must be at least 1")
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM topics WHERE name=?", (name,)).fetchone():
                if exist_ok:
                    return
                raise PipelineError(f"topic {name!r} already exists")
            conn.execute(
                "INSERT INTO topics VALUES (?,?,?,?,?)",
                (name, partitions, retention_ms, retention_bytes, time.time()),
            )
            conn.executemany(
                "INSERT INTO partitions VALUES (?,?,0)", [(name, p) for p in range(partitions)]
            )

    def topics(self) -> list[str]:
        """Every topic's name."""
        return [r[0] for r in self._read("SELECT name FROM topics ORDER BY name")]

    def describe(self, name: str) -> TopicInfo:
        """A topic's settings, first and next offsets per partition."""
        row = self._read(
            "SELECT partitions, retention_ms, retention_bytes FROM topics WHERE name=?", (name,)
        )
        if not row:
            known = ", ".join(self.topics()) or "none"
            raise PipelineError(f"topic {name!r} does not exist (topics: {known})")
        ends = dict(
            self._read("SELECT partition, next_offset FROM partitions WHERE topic=?", (name,))
        )
        starts = dict(
            self._read(
                "SELECT partition, min(offset) FROM messages WHERE topic=? GROUP BY partition",
                (name,),
            )
        )
        return TopicInfo(
            name,
            row[0][0],
            row[0][1],
            row[0][2],
            {p: int(starts[p]) if p in starts else int(ends[p]) for p in ends},
            ends,
        )

    # -- producing -------------------------------------------------------------------------

    def append(
        self,
        topic: str,
        partitions: pl.Series,
        keys: pl.Series,
        values: pl.Series,
        headers: pl.Series | None = None,
        txn: str | None = None,
    ) -> dict[int, int]:
        """Append messages (pending under ``txn`` if given); returns the next offset of each
        partition written."""
        now = int(time.time() * 1000)
        frame = pl.DataFrame(
            {
                "partition": partitions.cast(pl.Int64),
                "key": keys.cast(pl.Binary),
                "value": values.cast(pl.Binary),
                "headers": headers
                if headers is not None
                else pl.Series([None] * values.len(), dtype=pl.String),
            }
        ).with_row_index("i")
        written: dict[int, int] = {}
        with self._write() as conn:
            known = dict(
                conn.execute(
                    "SELECT partition, next_offset FROM partitions WHERE topic=?", (topic,)
                ).fetchall()
            )
            if not known:
                raise PipelineError(f"topic {topic!r} does not exist; create it first")
            for (value,), rows in frame.group_by(["partition"], maintain_order=True):
                part = int(value)
                if part not in known:
                    raise PipelineError(f"topic {topic!r} has no partition {part}")
                start = known[part]
                offsets = pl.int_range(start, start + rows.height, eager=True)
                conn.executemany(
                    "INSERT INTO messages VALUES (?,?,?,?,?,?,?)",
                    zip(
                        [topic] * rows.height,
                        [part] * rows.height,
                        offsets.to_list(),
                        [now] * rows.height,
                        rows.get_column("key").to_list(),
                        rows.get_column("value").to_list(),
                        rows.get_column("headers").to_list(),
                        strict=True,
                    ),
                )
                if txn is not None:
                    conn.execute(
                        "INSERT INTO pending VALUES (?,?,?,?,?)",
                        (txn, topic, part, start, start + rows.height),
                    )
                known[part] = start + rows.height
                written[part] = known[part]
                conn.execute(
                    "UPDATE partitions SET next_offset=? WHERE topic=? AND partition=?",
                    (known[part], topic, part),
                )
        return written

    def commit_txn(self, txn: str) -> None:
        """Make a producer transaction's messages visible (idempotent)."""
        with self._write() as conn:
            conn.execute("DELETE FROM pending WHERE txn=?", (txn,))

    def abort_txns(self, producer: str, keep: str | None = None) -> int:
        """Delete pending messages of ``producer`` (all but transaction ``keep``)."""
        with self._write() as conn:
            ranges = conn.execute(
                "SELECT txn, topic, partition, start_offset, end_offset FROM pending "
                "WHERE substr(txn, 1, ?) = ? AND txn IS NOT ?",
                (len(producer) + 1, producer + ":", keep),
            ).fetchall()
            deleted = 0
            for txn, topic, part, start, end in ranges:
                deleted += conn.execute(
                    "DELETE FROM messages WHERE topic=? AND partition=? AND offset>=? AND offset<?",
                    (topic, part, start, end),
                ).rowcount
                conn.execute(
                    "DELETE FROM pending WHERE txn=? AND topic=? AND partition=?",
                    (txn, topic, part),
                )
            return deleted

    # -- consuming -------------------------------------------------------------------------

    def read(self, topic: str, partition: int, offset: int, limit: int) -> RawMessages:
        """Visible messages from ``offset`` on, stopping before the first pending one."""
        rows = self._read(
            "SELECT offset, timestamp, key, value, headers FROM messages "
            "WHERE topic=? AND partition=? AND offset>=? AND offset < coalesce("
            "(SELECT min(start_offset) FROM pending WHERE topic=? AND partition=?), "
            "9223372036854775807) ORDER BY offset LIMIT ?",
            (topic, partition, offset, topic, partition, limit),
        )
        out = RawMessages()
        if rows:
            offsets, stamps, keys, values, headers = (list(c) for c in zip(*rows, strict=True))
            out.topics = [topic] * len(rows)
            out.partitions = [partition] * len(rows)
            out.offsets, out.timestamps, out.keys, out.values, out.headers = (
                offsets,
                stamps,
                keys,
                values,
                headers,
            )
        return out

    def stable_ends(self, topic: str) -> dict[int, int]:
        """Per partition, the offset a reader can reach now: the first pending offset if a
        producer transaction is open there, else the next offset (Kafka's last stable offset,
        the high watermark a consumer's lag is measured against)."""
        return dict(
            self._read(
                "SELECT p.partition, coalesce((SELECT min(q.start_offset) FROM pending q "
                "WHERE q.topic=p.topic AND q.partition=p.partition), p.next_offset) "
                "FROM partitions p WHERE p.topic=?",
                (topic,),
            )
        )

    def partition_ends(self, topics: list[str]) -> dict[str, tuple[int, int]]:
        """Every partition of ``topics`` -> (first offset still held, last stable offset):
        how far a bounded read of the group must get."""
        ends: dict[str, tuple[int, int]] = {}
        for topic in topics:
            info = self.describe(topic)
            stable = self.stable_ends(topic)
            for part in range(info.partitions):
                end = int(stable.get(part, info.end_offsets[part]))
                ends[tp(topic, part)] = (min(info.start_offsets[part], end), end)
        return ends

    def group_committed(self, group: str, keys: list[str]) -> Offsets:
        """The committed next offsets of ``group`` for the partitions ``keys`` that have
        one."""
        out: Offsets = {}
        for topic in {split_tp(key)[0] for key in keys}:
            done = self.committed(group, topic)
            out.update({tp(topic, part): int(offset) for part, offset in done.items()})
        return {key: out[key] for key in keys if key in out}

    def read_in_turn(self, positions: Offsets, turn: int, limit: int) -> RawMessages:
        """Up to ``limit`` messages from the partitions of ``positions`` (next offsets,
        advanced in place), starting with partition number ``turn`` so that a busy
        partition does not starve the others."""
        out = RawMessages()
        keys = sorted(positions)
        for i in range(len(keys)):
            if len(out) >= limit:
                break
            key = keys[(turn + i) % len(keys)]
            topic, part = split_tp(key)
            got = self.read(topic, part, positions[key], limit - len(out))
            if len(got):
                positions[key] = got.offsets[-1] + 1
                out.extend(got)
        return out

    def resume_offsets(self, group: str, topic: str, stored: Offsets, from_end: bool) -> Offsets:
        """Where a member of ``group`` starts reading each partition of ``topic``: the later
        of the group's committed offset and the pipeline's checkpointed one (``stored``);
        with neither, the end (``from_end``) or the start; never before what retention kept."""
        info = self.describe(topic)
        committed = self.committed(group, topic)
        offsets = {}
        for part in range(info.partitions):
            key = tp(topic, part)
            if part in committed or key in stored:
                start = max(committed.get(part, 0), int(stored.get(key, 0)))
            else:
                start = info.end_offsets[part] if from_end else info.start_offsets[part]
            offsets[key] = max(start, info.start_offsets[part])
        return offsets

    def lag(self, positions: Offsets) -> Offsets:
        """Records between next offsets (``topic:partition`` -> offset) and each
        partition's last stable offset."""
        ends: dict[str, int] = {}
        for topic in {split_tp(key)[0] for key in positions}:
            ends.update({tp(topic, p): end for p, end in self.stable_ends(topic).items()})
        return {key: max(ends.get(key, pos) - pos, 0) for key, pos in positions.items()}

    def committed(self, group: str, topic: str) -> dict[int, int]:
        """A group's committed next offsets per partition."""
        return dict(
            self._read(
                "SELECT partition, next_offset FROM group_offsets WHERE grp=? AND topic=?",
                (group, topic),
            )
        )

    def commit_offsets(
        self, group: str, topic: str, offsets: dict[int, int], member: str | None = None
    ) -> None:
        """Store a group's next offsets (never moving one backwards), committed by
        ``member``."""
        with self._write() as conn:
            conn.executemany(
                COMMIT_OFFSET, [(group, topic, p, o, member) for p, o in offsets.items()]
            )

    def groups(self, topic: str) -> list[str]:
        """Consumer groups with committed offsets on ``topic``."""
        rows = self._read(
            "SELECT DISTINCT grp FROM group_offsets WHERE topic=? ORDER BY grp", (topic,)
        )
        return [r[0] for r in rows]

    # -- retention -------------------------------------------------------------------------

    def enforce_retention(self, topic: str) -> int:
        """Delete committed messages older than ``retention_ms`` or beyond
        ``retention_bytes`` per partition; returns the messages deleted."""
        info = self.describe(topic)
        deleted = 0
        with self._write() as conn:
            if info.retention_ms is not None:
                cutoff = int(time.time() * 1000) - info.retention_ms
                deleted += conn.execute(
                    "DELETE FROM messages WHERE topic=? AND timestamp<? AND offset < coalesce("
                    "(SELECT min(start_offset) FROM pending p WHERE p.topic=messages.topic AND "
                    "p.partition=messages.partition), 9223372036854775807)",
                    (topic, cutoff),
                ).rowcount
            if info.retention_bytes is not None:
                for part in range(info.partitions):
                    # The newest messages whose sizes add up to the budget stay.
                    keep_from = conn.execute(
                        "SELECT min(offset) FROM (SELECT offset, sum(length(value) + "
                        "coalesce(length(key), 0)) OVER (ORDER BY offset DESC) AS total "
                        "FROM messages WHERE topic=? AND partition=?) WHERE total <= ?",
                        (topic, part, info.retention_bytes),
                    ).fetchone()[0]
                    if keep_from is None:
                        continue
                    deleted += conn.execute(
                        "DELETE FROM messages WHERE topic=? AND partition=? AND offset<? "
                        "AND offset < coalesce((SELECT min(start_offset) FROM pending WHERE "
                        "topic=? AND partition=?), 9223372036854775807)",
                        (topic, part, keep_from, topic, part),
                    ).rowcount
        return deleted


_logs: dict[Path, EmbeddedLog] = {}
_logs_lock = threading.Lock()


def open_log(path: str | Path) -> EmbeddedLog:
    """The process's shared handle on the log at ``path``."""
    key = Path(path).resolve()
    with _logs_lock:
        log = _logs.get(key)
        if log is None:
            log = _logs[key] = EmbeddedLog(key)
        return log

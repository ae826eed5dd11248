"""The state database connection that the store and its ledgers share.

One connection per store, used under a lock, so a store is safe to use from several threads
of one process. Statements are written for SQLite with ``?`` placeholders; a backend
(:class:`SqliteDatabase` here, ``state.postgres.PostgresDatabase``) spells them its way.
Writes go through :meth:`Database.transaction` (one transaction, committed or rolled back
whole); reads take the lock with :meth:`Database.reading`.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tideflow.errors import StateError
from tideflow.state.schema import SQLITE_TYPES, schema


class Database:
    """A connection to the state database and the lock that serialises its use."""

    begin = "BEGIN IMMEDIATE"
    """The statement that opens a write transaction."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.lock = threading.Lock()

    def sql(self, text: str) -> str:
        """The backend's spelling of a statement written for SQLite."""
        return text

    def contains(self, column: str) -> str:
        """A condition: ``column`` holds the bound text as a substring."""
        return f"instr({column}, ?) > 0"

    def execute(self, conn: Any, sql: str, args: Any = ()) -> Any:
        """Run one statement on ``conn`` (held through :meth:`transaction` or
        :meth:`reading`); the cursor."""
        return conn.execute(self.sql(sql), args)

    def executemany(self, conn: Any, sql: str, rows: Iterable[Any]) -> None:
        """Run one statement once per row of ``rows``."""
        conn.executemany(self.sql(sql), rows)

    @contextmanager
    def reading(self) -> Iterator[Any]:
        """The connection, held for reads outside a transaction."""
        with self.lock:
            yield self.conn

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """The connection inside one transaction: committed when the block ends, rolled
        back when it raises."""
        with self.lock:
            self.conn.execute(self.begin)
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    def close(self) -> None:
        """Close the connection."""
        with self.lock:
            self.conn.close()


class SqliteDatabase(Database):
    """The state database in a SQLite file (WAL mode, synchronous commits), its tables
    created when missing."""

    def __init__(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                str(path), check_same_thread=False, isolation_level=None, timeout=30
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(schema(SQLITE_TYPES))
        except (OSError, sqlite3.Error) as exc:
            raise StateError(f"cannot open the state store {path}: {exc}") from exc
        super().__init__(conn)

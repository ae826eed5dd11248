"""The state store in PostgreSQL (``state: postgresql://...``), shared by workers on several
machines: the SQLite store's SQL over a PostgreSQL connection."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tideflow.errors import StateError, require
from tideflow.secrets import redact
from tideflow.state.database import Database
from tideflow.state.schema import POSTGRES_TYPES, schema
from tideflow.state.store import StateStore


class PostgresDatabase(Database):
    """A connection to a PostgreSQL state database, its tables created when missing (by one
    process at a time)."""

    begin = "BEGIN"

    def __init__(self, url: str) -> None:
        psycopg = require("psycopg", "postgres")
        try:
            conn = psycopg.connect(url, autocommit=True)
            conn.execute("SELECT pg_advisory_lock(7316)")  # one schema creator at once
            try:
                conn.execute(schema(POSTGRES_TYPES))
            finally:
                conn.execute("SELECT pg_advisory_unlock(7316)")
        except psycopg.Error as exc:
            raise StateError(redact(f"cannot open the state store {url}: {exc}")) from exc
        super().__init__(conn)

    def sql(self, text: str) -> str:
        """The statement with PostgreSQL's ``%s`` placeholders."""
        return text.replace("?", "%s")

    def contains(self, column: str) -> str:
        """A condition: ``column`` holds the bound text as a substring."""
        return f"strpos({column}, ?) > 0"

    def executemany(self, conn: Any, sql: str, rows: Iterable[Any]) -> None:
        """Run one statement once per row of ``rows``."""
        with conn.cursor() as cursor:
            cursor.executemany(self.sql(sql), rows)


class PostgresStateStore(StateStore):
    """The state store in PostgreSQL, shared by workers on several machines.

    One connection, used under a lock like the SQLite one; each checkpoint is one transaction.
    ``local_dir`` is the run's local state directory.
    """

    def __init__(self, url: str, local_dir: str | Path) -> None:
        self.url = url
        super().__init__(Path(local_dir) / "state.postgres", PostgresDatabase(url))

    def describe(self) -> str:
        """The store's URL (password masked)."""
        return f"{redact(self.url)} (it holds nothing of this pipeline)"

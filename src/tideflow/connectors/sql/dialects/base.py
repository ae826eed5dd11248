"""The three concerns a database dialect combines, and the :class:`Dialect` combining them.

- :class:`Grammar`: how the database spells SQL — identifier quoting, type names, the
  upsert clause, type changes and the swap of a ``replace`` load. Text only, no connection.
- :class:`Driver`: a DB-API driver — connecting, transactions, statements, streamed reads,
  catalogue queries, the schema lock, and which of its errors are outages or row errors.
- :class:`BulkLoader`: the write path — loading a batch into a staging relation, how the
  merge reads its columns back, and (PostgreSQL) finding rejected rows in the server.

Each database module (``postgres``, ``mysql``, ``sqlite``, ``duckdb``) implements the three
and builds its :class:`Dialect`; :func:`tideflow.connectors.sql.dialects.dialect_for` picks
one by URL.
"""

from __future__ import annotations

import re
import socket
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import polars as pl

from tideflow.connectors.sql.urls import DatabaseUrl
from tideflow.errors import ConfigError

ROW = "__tf_row"
"""The staging column numbering a batch's rows from 0."""
Rejected = list[tuple[int, str]]
"""Rejected rows: row number and the database's message."""
Insert = Callable[[str], str]
"""The sink's insert of staging rows, given the condition choosing them (alias ``s``)."""
_ROW_ERRORS = {
    "IntegrityError",
    "DataError",
    "ConstraintException",
    "ConversionException",
    "InvalidInputException",
    "OutOfRangeException",
    "MismatchTypeException",
}
_TERMINAL_CONNECT = re.compile(
    r"does not exist|authentication failed|password|no pg_hba\.conf|permission denied|"
    r"not permitted|invalid (dsn|connection option)|certificate",
    re.IGNORECASE,
)
_PERMANENT_CONNECT_ERRORS = (
    "does not exist",
    "authentication failed",
    "no pg_hba.conf entry",
    "Access denied",
)
"""Texts of connection errors that retrying cannot fix."""


class Grammar:
    """One database's SQL spelling: quoting, types and DDL/merge clauses (text only)."""

    name: ClassVar[str]
    max_identifier: ClassVar[int]
    types: ClassVar[dict[str, str]]
    """Kind -> the SQL type a new column of that kind gets."""
    reverse_types: ClassVar[dict[str, str]]
    """Prefix of a declared SQL type, as the catalogue reports it -> kind."""

    def quote(self, identifier: str) -> str:
        """Quote an identifier, escaping embedded quotes; refuse what no database accepts."""
        if not identifier or "\x00" in identifier:
            raise ConfigError(f"invalid SQL identifier {identifier!r}: empty or contains NUL")
        if len(identifier.encode()) > self.max_identifier:
            raise ConfigError(
                f"SQL identifier {identifier[:40]!r}... is {len(identifier.encode())} bytes; "
                f"{self.name} allows at most {self.max_identifier}"
            )
        return '"' + identifier.replace('"', '""') + '"'

    def table(self, name: str, schema: str | None) -> str:
        """A quoted, optionally schema-qualified table name."""
        return f"{self.quote(schema)}.{self.quote(name)}" if schema else self.quote(name)

    def sql_type(self, declared: str) -> str:
        """The SQL spelling of a kind or a declared ``decimal(p,s)`` / ``varchar(n)``."""
        if declared.startswith(("decimal", "numeric")) and "(" in declared:
            return "DECIMAL" + declared[declared.index("(") :]
        if declared.startswith("varchar"):
            return "VARCHAR" + declared[declared.index("(") :]
        return self.types[declared]

    def key_type(self, declared: str) -> str:
        """The SQL type of a key column (MySQL cannot index unbounded text)."""
        return self.sql_type(declared)

    def index_column(self, column: str, declared: str) -> str:
        """A column as an index lists it."""
        return self.quote(column)

    def kind_of_sql(self, sql_type: str) -> str:
        """The kind of an existing column's declared type, as the catalogue reports it."""
        text = sql_type.strip().lower()
        for prefix, kind in self.reverse_types.items():
            if text.startswith(prefix):
                return kind
        return "text"

    def upsert_clause(
        self, keys: list[str], columns: list[str], table: str, sql_types: dict[str, str]
    ) -> str:
        """The ``ON CONFLICT`` clause merging on ``keys`` into ``table`` (its unqualified
        name). A row whose every other column already holds the incoming value is left
        alone: rewriting it would cost a new row version, index and WAL writes and fire
        update triggers for nothing (a re-run of a mostly unchanged export)."""
        rest = [c for c in columns if c not in keys]
        target = ", ".join(self.quote(k) for k in keys)
        if not rest:
            return f" ON CONFLICT ({target}) DO NOTHING"
        sets = ", ".join(f"{self.quote(c)} = excluded.{self.quote(c)}" for c in rest)
        stored = self.quote(table)
        changed = " OR ".join(
            self.differs(
                f"{stored}.{self.quote(c)}", f"excluded.{self.quote(c)}", sql_types.get(c, "")
            )
            for c in rest
        )
        return f" ON CONFLICT ({target}) DO UPDATE SET {sets} WHERE {changed}"  # nosec B608 - identifiers quoted, values bound

    def differs(self, stored: str, incoming: str, sql_type: str) -> str:
        """A null-safe "the values differ" between two column references."""
        return f"{stored} IS DISTINCT FROM {incoming}"

    def alter_type(self, table: str, column: str, sql_type: str) -> str:
        """DDL changing a column's type."""
        return f"ALTER TABLE {table} ALTER COLUMN {self.quote(column)} TYPE {sql_type}"

    def swap_tables(self, target: str, new: str, schema: str | None, exists: bool) -> list[str]:
        """DDL putting table ``new`` in the place of ``target`` (run in one transaction)."""
        drop = [f"DROP TABLE {self.table(target, schema)}"] if exists else []
        return [*drop, f"ALTER TABLE {self.table(new, schema)} RENAME TO {self.quote(target)}"]


class Driver(ABC):
    """A DB-API driver of one database: connections, transactions, statements, streamed
    reads, catalogue queries, and what its errors mean. Catalogue queries spell names with
    the database's :class:`Grammar`."""

    default_port: ClassVar[int | None] = None
    """The server's port when the URL names none; None for a database in a file (no server
    that could go away and come back)."""
    savepoints: ClassVar[bool] = True
    """Rejected rows can be isolated inside one transaction (else each range commits)."""
    statements_together: ClassVar[bool] = False
    """Several statements without parameters may go in one call (one round trip)."""

    def __init__(self, grammar: Grammar) -> None:
        self.grammar = grammar

    def probe(self, url: DatabaseUrl) -> Callable[[], bool] | None:
        """What the retry loop polls during an outage to resume soon after the server
        returns (see :mod:`tideflow.core.retry`); None without a server."""
        if self.default_port is None:
            return None
        return lambda: self._answers(url)

    def _answers(self, url: DatabaseUrl) -> bool:
        """Whether the server takes a login now.

        A TCP connect, bounded in time, comes first, so an unreachable host cannot stretch a
        wait (drivers may wait for minutes); then a real login, closed at once: a server that
        listens but is still starting up refuses it.
        """
        socket_dir = url.options.get("host", "")
        if not socket_dir.startswith("/"):
            port = url.port or self.default_port
            try:
                socket.create_connection((url.host, port), timeout=2.0).close()
            except OSError:
                return False
        try:
            self.connect(url).close()
        except Exception:  # noqa: BLE001 - any failure to log in means "not back yet"
            return False
        return True

    @abstractmethod
    def connect(self, url: DatabaseUrl) -> Any:
        """Open a DB-API connection."""

    def placeholder(self, index: int) -> str:
        """The bound-parameter marker for parameter number ``index`` (from 1)."""
        return "?"

    def begin(self, conn: Any) -> None:  # noqa: B027 - most drivers begin implicitly
        """Start a transaction (drivers without implicit transactions)."""

    def commit(self, conn: Any) -> None:
        """Commit the current transaction."""
        conn.commit()

    def end_read(self, conn: Any) -> None:
        """End the transaction a query opened, so the next one sees new rows (drivers
        that open transactions implicitly)."""
        conn.commit()

    def rollback(self, conn: Any) -> None:
        """Roll back the current transaction."""
        conn.rollback()

    def execute(self, conn: Any, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement; return its rows (empty for statements without results)."""
        cur = conn.cursor()
        try:
            cur.execute(sql, tuple(params)) if params else cur.execute(sql)
            return list(cur.fetchall()) if cur.description else []
        finally:
            cur.close()

    @abstractmethod
    def stream(
        self, conn: Any, sql: str, params: Sequence[Any], batch_size: int
    ) -> Iterator[pl.DataFrame]:
        """Run a query and yield its result in frames of at most ``batch_size`` rows,
        never holding the whole result in memory."""

    def restore_types(self, frame: pl.DataFrame, declared: dict[str, str]) -> pl.DataFrame:
        """Frames read from a table, typed as its columns declare (drivers that lose types)."""
        return frame

    @abstractmethod
    def columns(self, conn: Any, table: str, schema: str | None) -> dict[str, str] | None:
        """Existing column name -> declared SQL type, in table order; None if no table."""

    @contextmanager
    def schema_lock(
        self, conn: Any, table: str, schema: str | None, timeout: float
    ) -> Iterator[None]:
        """Hold the lock that serializes schema changes of ``table`` across processes for
        the block; the caller reads the catalogue again inside it, since another worker or
        pipeline may have changed the table while it waited.

        Here nothing: a DuckDB file has one writing process, and SQLite's transactions begin
        ``IMMEDIATE``, so the write lock is held before the catalogue is read.
        """
        yield

    def is_connection_error(self, exc: BaseException) -> bool:
        """True for failures an outage explains (refused or lost connection, a server
        shutting down or starting up), which a retry after reconnecting can fix."""
        state = getattr(exc, "sqlstate", None)
        if isinstance(state, str) and state:
            # connection exception, operator intervention (shutdown), insufficient resources
            return state[:2] in ("08", "57", "53")
        # Connection-time errors carry no SQLSTATE (psycopg puts the server's FATAL message
        # in the text only); a missing database or refused credentials are no outage.
        text = str(exc)
        if any(marker in text for marker in _PERMANENT_CONNECT_ERRORS):
            return False
        names = {c.__name__ for c in type(exc).__mro__}
        if not names & {"OperationalError", "InterfaceError"}:
            return False
        # Errors raised while connecting carry no SQLSTATE: a wrong password or database
        # name must fail at once instead of being retried for the whole give-up period.
        return _TERMINAL_CONNECT.search(str(exc)) is None

    def is_row_error(self, exc: Exception) -> bool:
        """True when the database rejected data (a value, a constraint), not the connection."""
        state = getattr(exc, "sqlstate", None)
        if isinstance(state, str) and state[:2] in ("22", "23"):
            return True
        return type(exc).__name__ in _ROW_ERRORS


class BulkLoader(ABC):
    """The write path of one database: a batch into a staging relation, read back by the
    sink's ``INSERT ... SELECT`` through :meth:`select_expr`."""

    locates_rejected: ClassVar[bool] = False
    """:meth:`locate_rejected` finds rejected rows without a bisection."""

    def __init__(self, grammar: Grammar, driver: Driver) -> None:
        self.grammar = grammar
        self.driver = driver

    @abstractmethod
    def stage(self, conn: Any, frame: pl.DataFrame, kinds: dict[str, str]) -> str:
        """Load ``frame`` (with a ``__tf_row`` column) into a staging relation; its name."""

    def unstage(self, conn: Any, staging: str) -> None:
        """Drop a staging relation."""
        self.driver.execute(conn, f"DROP TABLE IF EXISTS {self.grammar.quote(staging)}")

    def select_expr(self, column: str, sql_type: str, kind: str) -> str:
        """How the merge reads a staging column: converted to the target column's type."""
        return f"CAST(s.{self.grammar.quote(column)} AS {sql_type})"

    def index_staging(self, conn: Any, staging: str) -> None:
        """Index the staging row numbers before rejected rows are isolated: each statement
        of the bisection then reads its own range, not the whole batch again (a 100,000-row
        batch with 100 rejected rows runs some 2,000 of them)."""
        q = self.grammar.quote
        self.driver.execute(conn, f"CREATE INDEX {q(staging + '_row')} ON {q(staging)} ({q(ROW)})")

    def locate_rejected(self, conn: Any, insert: Insert, staging: str, n: int) -> Rejected | None:
        """Insert the ``n`` rows of ``staging`` with ``insert`` and find the rows the
        database rejects, without a bisection: their row numbers with the database's
        messages. None where the database cannot do this, or when it failed and left
        nothing behind (the caller bisects)."""
        return None

    def committed(self, conn: Any) -> None:  # noqa: B027 - most loaders keep no state
        """The transaction committed (staging state tied to it may be forgotten)."""

    def rolled_back(self, conn: Any) -> None:  # noqa: B027 - most loaders keep no state
        """The transaction rolled back (staging made inside it may need redoing)."""


class Dialect:
    """One database as the SQL source and sink use it: its :class:`Grammar`,
    :class:`Driver` and :class:`BulkLoader`, with the transaction boundaries that
    concern both the driver and the loader."""

    def __init__(
        self,
        grammar: Grammar,
        driver: Driver,
        loader: BulkLoader,
        writer: Callable[[], Dialect] | None = None,
    ) -> None:
        self.grammar = grammar
        self.driver = driver
        self.loader = loader
        self._writer = writer

    @property
    def name(self) -> str:
        """The database's name in messages."""
        return self.grammar.name

    def for_writing(self) -> Dialect:
        """The dialect a sink writes with (a database may read and write by different
        drivers)."""
        return self._writer() if self._writer is not None else self

    def begin(self, conn: Any) -> None:
        """Start a transaction."""
        self.driver.begin(conn)

    def commit(self, conn: Any) -> None:
        """Commit the current transaction."""
        self.driver.commit(conn)
        self.loader.committed(conn)

    def rollback(self, conn: Any) -> None:
        """Roll back the current transaction."""
        self.driver.rollback(conn)
        self.loader.rolled_back(conn)

"""What differs between databases: drivers, quoting, types, bulk paths and upsert syntax.

Each dialect uses the fastest path its database offers and stays columnar where the driver
allows it:

- PostgreSQL: ADBC (libpq ``COPY`` in binary) both ways — reads stream Arrow record
  batches, writes ingest Arrow into a temporary staging table.
- DuckDB: its own Arrow interface — reads stream record batches, writes register the Arrow
  table as a view.
- MySQL/MariaDB: PyMySQL with an unbuffered cursor for reads and ``LOAD DATA LOCAL INFILE``
  of a Polars-written CSV into an all-text staging table for writes, so that the server, in
  strict mode, does every type conversion and reports bad values as errors.
- SQLite: the standard library driver; ``executemany`` into a temporary staging table.

From the staging table, one ``INSERT ... SELECT`` moves rows into the target (merging on the
key for upserts), so the same bisection over the staging row numbers finds rejected rows on
every database.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
import sqlite3
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import polars as pl
import pyarrow as pa

from tideflow.connectors.sql.urls import DatabaseUrl
from tideflow.errors import ConfigError, PipelineError, require

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
# MySQL/MariaDB error codes of a refused or lost connection or a server going away.
_MYSQL_CONNECTION_ERRORS = {1040, 1053, 1927, 2002, 2003, 2006, 2013, 2055, 4031}
# MySQL/MariaDB error codes that reject a value or a row, not the statement or connection.
_MYSQL_ROW_ERRORS = {1048, 1062, 1264, 1265, 1292, 1366, 1406, 1411, 1452, 1690, 3140, 4025}
"""Staging column numbering a batch's rows, for bisecting rejected rows."""


def json_columns(frame: pl.DataFrame) -> pl.DataFrame:
    """Nested columns (lists, structs) as JSON text: every database can load text."""
    nested = [c for c, t in frame.schema.items() if isinstance(t, pl.List | pl.Array | pl.Struct)]
    if not nested:
        return frame
    # Encoding a one-field struct and cutting off its wrapper keeps this in Polars.
    return frame.with_columns(
        pl.when(pl.col(c).is_not_null())
        .then(pl.struct(pl.col(c).alias("v")).struct.json_encode().str.slice(5).str.head(-1))
        .alias(c)
        for c in nested
    )


_PERMANENT_CONNECT_ERRORS = (
    "does not exist",
    "authentication failed",
    "no pg_hba.conf entry",
    "Access denied",
)
"""Texts of connection errors that retrying cannot fix."""


class Dialect(ABC):
    """One database's SQL and driver."""

    name: ClassVar[str]
    max_identifier: ClassVar[int]
    savepoints: ClassVar[bool] = True
    transactional_ddl: ClassVar[bool] = True
    cast_on_insert: ClassVar[bool] = True
    types: ClassVar[dict[str, str]]
    reverse_types: ClassVar[dict[str, str]]
    statements_together: ClassVar[bool] = False
    """Several statements without parameters may go in one call (one round trip)."""
    locates_rejected: ClassVar[bool] = False
    """:meth:`locate_rejected` finds rejected rows without a bisection."""
    default_port: ClassVar[int | None] = None
    """The server's port when the URL names none; None for a database in a file (no server
    that could go away and come back)."""

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

    def placeholder(self, index: int) -> str:
        """The bound-parameter marker for parameter number ``index`` (from 1)."""
        return "?"

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

    @abstractmethod
    def connect(self, url: DatabaseUrl) -> Any:
        """Open a DB-API connection."""

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

    @abstractmethod
    def stage(self, conn: Any, frame: pl.DataFrame, kinds: dict[str, str]) -> str:
        """Load ``frame`` (with a ``__tf_row`` column) into a staging relation; its name."""

    def unstage(self, conn: Any, staging: str) -> None:
        """Drop a staging relation."""
        self.execute(conn, f"DROP TABLE IF EXISTS {self.quote(staging)}")

    def locate_rejected(self, conn: Any, insert: Insert, staging: str, n: int) -> Rejected | None:
        """Insert the ``n`` rows of ``staging`` with ``insert`` and find the rows the
        database rejects, without a bisection: their row numbers with the database's
        messages. None where the database cannot do this, or when it failed and left
        nothing behind (the caller bisects)."""
        return None

    def index_staging(self, conn: Any, staging: str) -> None:
        """Index the staging row numbers before rejected rows are isolated: each statement
        of the bisection then reads its own range, not the whole batch again (a 100,000-row
        batch with 100 rejected rows runs some 2,000 of them)."""
        self.execute(
            conn,
            f"CREATE INDEX {self.quote(staging + '_row')} ON {self.quote(staging)} "
            f"({self.quote(ROW)})",
        )

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

    def restore_types(self, frame: pl.DataFrame, declared: dict[str, str]) -> pl.DataFrame:
        """Frames read from a table, typed as its columns declare (drivers that lose types)."""
        return frame

    def for_writing(self) -> Dialect:
        """The dialect a sink writes with (a database may read and write by different
        drivers)."""
        return self

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

    def select_expr(self, column: str, sql_type: str, kind: str) -> str:
        """How the merge reads a staging column: converted to the target column's type."""
        quoted = "s." + self.quote(column)
        return f"CAST({quoted} AS {sql_type})" if self.cast_on_insert else quoted


_NO_EQUALITY = frozenset(
    {"json", "xml", "point", "line", "lseg", "box", "path", "polygon", "circle"}
)
"""PostgreSQL types that have no ``=`` operator, so no ``IS DISTINCT FROM``."""


class PostgresDialect(Dialect):
    """PostgreSQL through ADBC."""

    name = "postgresql"
    max_identifier = 63
    default_port = 5432
    types: ClassVar[dict[str, str]] = {
        "boolean": "BOOLEAN",
        "smallint": "SMALLINT",
        "integer": "INTEGER",
        "bigint": "BIGINT",
        "real": "REAL",
        "double": "DOUBLE PRECISION",
        "decimal": "NUMERIC",
        "text": "TEXT",
        "date": "DATE",
        "time": "TIME",
        "timestamp": "TIMESTAMP",
        "timestamptz": "TIMESTAMPTZ",
        "binary": "BYTEA",
        "json": "JSONB",
    }
    reverse_types: ClassVar[dict[str, str]] = {
        "boolean": "boolean",
        "smallint": "smallint",
        "integer": "integer",
        "bigint": "bigint",
        "real": "real",
        "double": "double",
        "numeric": "decimal",
        "timestamp with time zone": "timestamptz",
        "timestamp": "timestamp",
        "time": "time",
        "date": "date",
        "bytea": "binary",
        "json": "json",
    }

    def placeholder(self, index: int) -> str:
        """libpq numbers its parameters."""
        return f"${index}"

    def differs(self, stored: str, incoming: str, sql_type: str) -> str:
        """Types without an equality operator (``json``, ``xml``, the geometric ones) are
        compared as text: json keeps its text verbatim, so equal text is an equal value."""
        if sql_type.strip().lower() in _NO_EQUALITY:
            return f"{stored}::text IS DISTINCT FROM {incoming}::text"
        return f"{stored} IS DISTINCT FROM {incoming}"

    def connect(self, url: DatabaseUrl) -> Any:
        """Connect with ADBC (autocommit off: every statement is in a transaction)."""
        adbc = require("adbc_driver_postgresql.dbapi", "postgres", "adbc-driver-postgresql")
        return adbc.connect(url.libpq)

    def stream(
        self, conn: Any, sql: str, params: Sequence[Any], batch_size: int
    ) -> Iterator[pl.DataFrame]:
        """Stream Arrow record batches (COPY binary under the hood), re-chunked."""
        cur = conn.cursor()
        try:
            cur.execute(sql, parameters=tuple(params) if params else None)
            yield from _rechunk(cur.fetch_record_batch(), batch_size)
        finally:
            cur.close()

    def columns(self, conn: Any, table: str, schema: str | None) -> dict[str, str] | None:
        """From ``pg_attribute``, with ``format_type`` spelling of each type.

        One statement that reads ``pg_attribute``: opening it makes the backend take in the
        catalogue changes other sessions committed, which a bare ``to_regclass`` (answered
        from a cache that remembers "no such table") would not after :meth:`schema_lock`
        waited for another worker's ``CREATE TABLE``."""
        mark = self.placeholder(1)
        rows = self.execute(
            conn,
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) "
            f"FROM (SELECT to_regclass({mark}) AS oid) r "  # nosec B608 - a bound value
            "LEFT JOIN pg_attribute a ON a.attrelid = r.oid AND a.attnum > 0 "
            "AND NOT a.attisdropped WHERE r.oid IS NOT NULL ORDER BY a.attnum",
            (self.table(table, schema),),
        )
        if not rows:
            return None
        return {name: kind for name, kind in rows if name is not None}

    @contextmanager
    def schema_lock(
        self, conn: Any, table: str, schema: str | None, timeout: float
    ) -> Iterator[None]:
        """``pg_advisory_xact_lock`` on a hash of the schema-qualified name, taken in the
        DDL's own transaction and released by its commit (so a transactional sink keeps it
        until its checkpoint commits, as PostgreSQL keeps the table's own DDL lock).
        ``lock_timeout`` bounds the wait; the setting returns to its value afterwards."""
        qualified = self._qualified(conn, table, schema)
        digest = hashlib.sha1(f"tideflow.ddl:{qualified}".encode(), usedforsecurity=False)
        key = int.from_bytes(digest.digest()[:8], "big", signed=True)
        mark = self.placeholder(1)
        old = self.execute(conn, "SELECT current_setting('lock_timeout')")[0][0]
        self.execute(
            conn, f"SELECT set_config('lock_timeout', {mark}, true)", (f"{int(timeout * 1000)}",)
        )
        try:
            self.execute(conn, f"SELECT pg_advisory_xact_lock({mark})", (key,))
        except Exception as exc:
            if getattr(exc, "sqlstate", None) == "55P03":  # lock_not_available
                raise PipelineError(
                    f"sql sink: waited {timeout:g} s (schema_lock_timeout) for the schema lock "
                    f"of table {qualified}: another worker or pipeline is changing that table "
                    f"or holds its lock in an open transaction (pg_locks, locktype advisory, "
                    f"objid {key & 0xFFFFFFFF})"
                ) from exc
            raise
        self.execute(conn, f"SELECT set_config('lock_timeout', {mark}, true)", (old,))
        yield

    def _qualified(self, conn: Any, table: str, schema: str | None) -> str:
        """``schema.table``, the schema a table without one is created in made explicit."""
        if schema is None:
            schema = str(self.execute(conn, "SELECT current_schema()")[0][0])
        return f"{schema}.{table}"

    def stage(self, conn: Any, frame: pl.DataFrame, kinds: dict[str, str]) -> str:
        """Reads only: the sink writes through :class:`PostgresWriter`."""
        raise NotImplementedError("PostgreSQL writes go through PostgresWriter")

    def for_writing(self) -> Dialect:
        """psycopg: ADBC cannot recover from an error inside a transaction (no savepoint
        rollback), which isolating rejected rows needs."""
        return PostgresWriter()


_LOCATE_REJECTED = """DO $tf$
DECLARE
  _tf_pages bigint := greatest(1, pg_relation_size('@staging@')
                                  / current_setting('block_size')::bigint);
  _tf_per float8 := greatest(1.0, @n@::float8 / _tf_pages);
  _tf_page bigint := 0; _tf_w bigint := ceil(64 / _tf_per); _tf_k bigint := 0;
  _tf_after tid := '(0,0)'; _tf_to tid; _tf_bad tid; _tf_row bigint; _tf_seen bigint;
  _tf_ok boolean;
BEGIN
  DELETE FROM tf_rejected;
  PERFORM nextval('tf_rows_read');
  BEGIN
    WHILE _tf_page < _tf_pages LOOP
      _tf_to := CASE WHEN _tf_page + _tf_w >= _tf_pages THEN '(4294967295,0)'::tid
                ELSE format('(%s,0)', _tf_page + _tf_w)::tid END;
      LOOP
        _tf_seen := currval('tf_rows_read');
        _tf_ok := true;
        BEGIN
          @window@;
        EXCEPTION WHEN data_exception OR integrity_constraint_violation THEN
          _tf_ok := false;
        END;
        EXIT WHEN _tf_ok;
        IF currval('tf_rows_read') = _tf_seen THEN RAISE SQLSTATE 'TF001'; END IF;
        SELECT s.ctid, s.@row@ INTO _tf_bad, _tf_row FROM @staging@ s
          WHERE s.ctid > _tf_after AND s.ctid < _tf_to
          ORDER BY s.ctid OFFSET currval('tf_rows_read') - _tf_seen - 1 LIMIT 1;
        IF NOT FOUND THEN RAISE SQLSTATE 'TF001'; END IF;
        BEGIN
          @before@;
        EXCEPTION WHEN data_exception OR integrity_constraint_violation THEN
          RAISE SQLSTATE 'TF001';
        END;
        BEGIN
          @alone@;
          _tf_ok := true;
        EXCEPTION WHEN data_exception OR integrity_constraint_violation THEN
          INSERT INTO tf_rejected VALUES (_tf_row, SQLERRM);
        END;
        IF _tf_ok THEN RAISE SQLSTATE 'TF001'; END IF;
        _tf_after := _tf_bad;
        _tf_k := _tf_k + 1;
      END LOOP;
      _tf_page := _tf_page + _tf_w;
      _tf_after := format('(%s,0)', _tf_page)::tid;
      _tf_w := CASE WHEN _tf_k = 0 THEN least(_tf_w * 2, ceil(8192 / _tf_per))
               ELSE ceil(greatest(32.0, least(8192.0, sqrt(32.0 * _tf_page * _tf_per / _tf_k)))
                         / _tf_per) END;
    END LOOP;
  EXCEPTION WHEN SQLSTATE 'TF001' THEN
    INSERT INTO tf_rejected VALUES (-1, 'the marker did not hold');
  END;
END $tf$"""
"""The PL/pgSQL block of :meth:`PostgresWriter.locate_rejected`; ``@staging@``, ``@n@``,
``@row@``, ``@window@``, ``@before@`` and ``@alone@`` are filled in (a template: its SQL is
never formatted with data)."""


class PostgresWriter(PostgresDialect):
    """PostgreSQL writes through psycopg: ``COPY`` of Polars-written CSV into text staging
    columns; the ``INSERT ... SELECT`` casts, so a bad value is a row error, not a load
    failure."""

    statements_together = True  # psycopg sends a query without parameters as a simple query
    locates_rejected = True

    def placeholder(self, index: int) -> str:
        """psycopg's format style."""
        return "%s"

    def connect(self, url: DatabaseUrl) -> Any:
        """Connect with psycopg (a transaction opens implicitly)."""
        psycopg = require("psycopg", "postgres")
        return psycopg.connect(url.libpq)

    def stream(
        self, conn: Any, sql: str, params: Sequence[Any], batch_size: int
    ) -> Iterator[pl.DataFrame]:
        """A named (server-side) cursor read with ``fetchmany``."""
        with conn.cursor(name="tf_read") as cur:
            cur.execute(sql, tuple(params) if params else None)
            yield from _row_batches(cur, [d[0] for d in cur.description], batch_size)

    def row_marker(self) -> str:
        """An always-true condition counting the rows a statement reads: ``nextval`` of a
        temporary sequence, which a rollback does not undo and whose cached values cost no
        write. The count a failed statement left names the row it failed at, the last one
        it read."""
        return "nextval('tf_rows_read') > 0"

    def locate_rejected(self, conn: Any, insert: Insert, staging: str, n: int) -> Rejected | None:
        """One PL/pgSQL block does the search in the server, without a round trip per
        statement; its static statements are planned once per batch.

        The staging rows are read in windows of whole pages (a TID range scan: no index to
        build), each window inside an exception block (a savepoint). When a window fails,
        the marker's count is the position of the row it failed at; the rows before it are
        inserted, and the row alone must fail, which is recorded with the message
        (``SQLERRM``); the window goes on after it. Rows a failed window inserted before
        the rejected one are inserted twice, and each window is one more statement: the
        window holds sqrt(32 x rows per rejection so far) rows, balancing the two (a
        statement costs about as much as inserting 16 rows), between 32 and 8,192; before
        the first rejection it doubles from 64. The last window is open-ended, so no row is
        missed whatever the page count said. The marker is only a hint: when the rows
        before the named one fail or it loads alone, the whole search is rolled back and
        None returned (the caller bisects).
        """
        if "$tf$" in insert("") or "'" in staging:
            return None  # text that would end the block or a literal early: bisect instead
        self.execute(conn, "CREATE TEMP SEQUENCE IF NOT EXISTS tf_rows_read CACHE 1000000")
        self.execute(
            conn, "CREATE TEMP TABLE IF NOT EXISTS tf_rejected (row_number BIGINT, message TEXT)"
        )
        window = "s.ctid > _tf_after AND s.ctid < _tf_to"
        fills = {
            "staging": self.quote(staging),
            "n": str(int(n)),
            "row": self.quote(ROW),
            "window": insert(f"{window} AND {self.row_marker()}"),
            "before": insert("s.ctid > _tf_after AND s.ctid < _tf_bad"),
            "alone": insert("s.ctid = _tf_bad"),
        }
        # One pass, so that no filled-in text is searched for placeholders again.
        block = re.sub(r"@(\w+)@", lambda m: fills[m.group(1)], _LOCATE_REJECTED)
        self.execute(conn, block)
        rows = self.execute(conn, "SELECT row_number, message FROM tf_rejected")
        if any(number < 0 for number, _ in rows):
            return None
        return sorted((int(number), str(message)) for number, message in rows)

    def __init__(self) -> None:
        self._filled: set[str] = set()
        """Staging tables loaded in the current transaction."""

    def stage(self, conn: Any, frame: pl.DataFrame, kinds: dict[str, str]) -> str:
        """``COPY`` CSV into a temporary all-text table.

        One table per column list, kept for the session and emptied by each commit (``ON
        COMMIT DELETE ROWS``): creating and dropping a temporary table per batch is
        catalogue work that cost 4-6 ms for a batch of a few rows, against about 1 ms
        reusing it (measured on loopback). Group commits write small batches often. A
        second batch of one transaction (a ``transactional`` sink) truncates it first."""
        digest = hashlib.sha1("\0".join(frame.columns).encode(), usedforsecurity=False)
        staging = f"tf_stage_{digest.hexdigest()[:12]}"
        table = self.quote(staging)
        cols = ", ".join(
            f"{self.quote(c)} {'BIGINT' if c == ROW else 'TEXT'}" for c in frame.columns
        )
        create = f"CREATE TEMP TABLE IF NOT EXISTS {table} ({cols}) ON COMMIT DELETE ROWS"
        self.execute(conn, f"{create}; TRUNCATE {table}" if staging in self._filled else create)
        self._filled.add(staging)
        with (
            conn.cursor() as cur,
            cur.copy(f"COPY {self.quote(staging)} FROM STDIN (FORMAT csv, NULL 'NULL')") as copy,
        ):
            # Streamed in slices: the text of a whole batch (several times its Arrow size,
            # and once more as bytes) is never held at once.
            for part in frame.iter_slices(_COPY_SLICE):
                copy.write(_as_csv(part, utc_wall_time=False))
        return staging

    def unstage(self, conn: Any, staging: str) -> None:
        """Nothing: the commit empties the staging table (or a rollback, its rows)."""

    def index_staging(self, conn: Any, staging: str) -> None:
        """The index of the row numbers, kept with the reused staging table."""
        self.execute(
            conn,
            f"CREATE INDEX IF NOT EXISTS {self.quote(staging + '_row')} ON "
            f"{self.quote(staging)} ({self.quote(ROW)})",
        )

    def commit(self, conn: Any) -> None:
        """Commit (which empties the staging tables)."""
        conn.commit()
        self._filled.clear()

    def rollback(self, conn: Any) -> None:
        """Roll back (the rows loaded into staging tables go with it)."""
        conn.rollback()
        self._filled.clear()

    def select_expr(self, column: str, sql_type: str, kind: str) -> str:
        """Text to the column's type; binary travels as hex."""
        quoted = "s." + self.quote(column)
        if kind == "binary":
            return f"decode({quoted}, 'hex')"
        return f"CAST({quoted} AS {sql_type})"

    def for_writing(self) -> Dialect:
        """Already the writer."""
        return self


class DuckDBDialect(Dialect):
    """DuckDB through its native Arrow interface."""

    name = "duckdb"
    max_identifier = 255
    savepoints = False
    types: ClassVar[dict[str, str]] = {
        **PostgresDialect.types,
        "double": "DOUBLE",
        "decimal": "DECIMAL(38, 9)",
        "text": "VARCHAR",
        "binary": "BLOB",
        "json": "JSON",
    }
    reverse_types: ClassVar[dict[str, str]] = {
        "boolean": "boolean",
        "smallint": "smallint",
        "tinyint": "smallint",
        "integer": "integer",
        "bigint": "bigint",
        "hugeint": "decimal",
        "float": "real",
        "real": "real",
        "double": "double",
        "decimal": "decimal",
        "timestamp with time zone": "timestamptz",
        "timestamp": "timestamp",
        "time": "time",
        "date": "date",
        "blob": "binary",
        "json": "json",
    }

    def connect(self, url: DatabaseUrl) -> Any:
        """Open the database file (created if missing); a server's policy may forbid its
        queries any other file (tideflow serve without --allow-sql-files)."""
        import duckdb

        from tideflow.sandbox import duckdb_config

        config = duckdb_config()
        # lock_configuration would refuse the SET statements the sink issues itself.
        config.pop("lock_configuration", None)
        return duckdb.connect(url.path, config=config)

    def begin(self, conn: Any) -> None:
        """DuckDB autocommits unless a transaction is opened."""
        conn.execute("BEGIN TRANSACTION")

    def end_read(self, conn: Any) -> None:
        """Reads autocommit."""

    def is_connection_error(self, exc: BaseException) -> bool:
        """Another process holding the database file's lock."""
        return type(exc).__name__ == "IOException" and "lock" in str(exc).lower()

    def execute(self, conn: Any, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """On the connection itself: a DuckDB cursor would not see registered views."""
        result = conn.execute(sql, list(params))
        return list(result.fetchall()) if result.description else []

    def stream(
        self, conn: Any, sql: str, params: Sequence[Any], batch_size: int
    ) -> Iterator[pl.DataFrame]:
        """Stream Arrow record batches."""
        cur = conn.cursor()
        try:
            relation = cur.sql(sql, params=list(params) if params else None)
            reader = relation.to_arrow_reader(batch_size)
            yield from _rechunk(reader, batch_size)
        finally:
            cur.close()

    def columns(self, conn: Any, table: str, schema: str | None) -> dict[str, str] | None:
        """From ``information_schema.columns``."""
        rows = self.execute(
            conn,
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = ? AND table_schema = coalesce(?, current_schema()) "
            "ORDER BY ordinal_position",
            (table, schema),
        )
        return {name: kind for name, kind in rows} or None

    def __init__(self) -> None:
        self._staged: pa.Table | None = None

    def stage(self, conn: Any, frame: pl.DataFrame, kinds: dict[str, str]) -> str:
        """Register the Arrow table as a view: no copy at all."""
        self._staged = _arrow(frame)
        conn.register("tf_stage", self._staged)
        return "tf_stage"

    def rollback(self, conn: Any) -> None:
        """Roll back; a registration made inside the transaction goes with it, so redo it."""
        conn.rollback()
        if self._staged is not None:
            conn.register("tf_stage", self._staged)

    def unstage(self, conn: Any, staging: str) -> None:
        """Unregister the view."""
        self._staged = None
        with contextlib.suppress(duckdb_error()):
            conn.unregister(staging)

    def index_staging(self, conn: Any, staging: str) -> None:
        """A view of an Arrow table in memory has no index (nor needs one)."""


class SQLiteDialect(Dialect):
    """SQLite through the standard library driver."""

    name = "sqlite"
    max_identifier = 1024
    cast_on_insert = False
    types: ClassVar[dict[str, str]] = {
        "boolean": "BOOLEAN",
        "smallint": "INTEGER",
        "integer": "INTEGER",
        "bigint": "INTEGER",
        "real": "REAL",
        "double": "REAL",
        "decimal": "NUMERIC",
        "text": "TEXT",
        "date": "DATE",
        "time": "TIME",
        "timestamp": "TIMESTAMP",
        "timestamptz": "TIMESTAMPTZ",
        "binary": "BLOB",
        "json": "JSON",
    }
    reverse_types: ClassVar[dict[str, str]] = {
        "boolean": "boolean",
        "bigint": "bigint",
        "smallint": "smallint",
        "tinyint": "smallint",
        "int": "bigint",
        "real": "double",
        "double": "double",
        "float": "double",
        "numeric": "decimal",
        "decimal": "decimal",
        "timestamptz": "timestamptz",
        "timestamp": "timestamp",
        "datetime": "timestamp",
        "time": "time",
        "date": "date",
        "blob": "binary",
        "json": "json",
    }

    def differs(self, stored: str, incoming: str, sql_type: str) -> str:
        """``IS NOT`` is SQLite's null-safe "differs" (``IS DISTINCT FROM`` needs 3.39)."""
        return f"{stored} IS NOT {incoming}"

    def connect(self, url: DatabaseUrl) -> Any:
        """Open the file; transactions are explicit (``isolation_level=None``)."""
        conn = sqlite3.connect(url.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 30000")
        return conn

    def begin(self, conn: Any) -> None:
        """SQLite autocommits unless a transaction is opened."""
        conn.execute("BEGIN IMMEDIATE")

    def end_read(self, conn: Any) -> None:
        """Reads autocommit."""

    def is_connection_error(self, exc: BaseException) -> bool:
        """A local file has no outages, only a writer holding the lock too long."""
        return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)

    def restore_types(self, frame: pl.DataFrame, declared: dict[str, str]) -> pl.DataFrame:
        """SQLite returns dates, times and booleans as text and integers: give them back the
        types their columns declare."""
        exprs = []
        for name, sql_type in declared.items():
            if name not in frame.columns:
                continue
            kind, col, dtype = self.kind_of_sql(sql_type), pl.col(name), frame.schema[name]
            if kind == "boolean" and dtype.is_integer():
                exprs.append(col.cast(pl.Boolean))
            elif dtype != pl.String:
                continue
            elif kind == "date":
                exprs.append(col.str.to_date(strict=False))
            elif kind in ("timestamp", "timestamptz"):
                parsed = col.str.to_datetime(time_unit="us", strict=False, time_zone="UTC")
                exprs.append(parsed if kind == "timestamptz" else parsed.dt.replace_time_zone(None))
        return frame.with_columns(exprs) if exprs else frame

    def commit(self, conn: Any) -> None:
        """Commit if a transaction is open."""
        if conn.in_transaction:
            conn.execute("COMMIT")

    def rollback(self, conn: Any) -> None:
        """Roll back if a transaction is open."""
        if conn.in_transaction:
            conn.execute("ROLLBACK")

    def alter_type(self, table: str, column: str, sql_type: str) -> str:
        """SQLite columns hold any value: widening needs no DDL."""
        return ""

    def stream(
        self, conn: Any, sql: str, params: Sequence[Any], batch_size: int
    ) -> Iterator[pl.DataFrame]:
        """``fetchmany`` in batches."""
        cur = conn.execute(sql, tuple(params))
        names = [d[0] for d in cur.description]
        yield from _row_batches(cur, names, batch_size)

    def columns(self, conn: Any, table: str, schema: str | None) -> dict[str, str] | None:
        """From ``pragma_table_info``."""
        rows = self.execute(
            conn, "SELECT name, type FROM pragma_table_info(?, ?) ORDER BY cid", (table, schema)
        )
        return {name: kind for name, kind in rows} or None

    def stage(self, conn: Any, frame: pl.DataFrame, kinds: dict[str, str]) -> str:
        """``executemany`` into a temporary table; temporal values as ISO text."""
        staging = "tf_stage"
        self.unstage(conn, staging)
        frame = _temporal_as_text(frame)
        cols = ", ".join(self.quote(c) for c in frame.columns)
        conn.execute(f"CREATE TEMP TABLE {self.quote(staging)} ({cols})")
        marks = ", ".join("?" for _ in frame.columns)
        conn.executemany(f"INSERT INTO {self.quote(staging)} VALUES ({marks})", frame.iter_rows())  # nosec B608 - identifiers quoted, values bound
        return staging


class MySQLDialect(Dialect):
    """MySQL and MariaDB through PyMySQL."""

    name = "mysql"
    default_port = 3306
    max_identifier = 64
    transactional_ddl = False
    cast_on_insert = False
    types: ClassVar[dict[str, str]] = {
        "boolean": "BOOLEAN",
        "smallint": "SMALLINT",
        "integer": "INT",
        "bigint": "BIGINT",
        "real": "FLOAT",
        "double": "DOUBLE",
        "decimal": "DECIMAL(38, 9)",
        "text": "LONGTEXT",
        "date": "DATE",
        "time": "TIME(6)",
        "timestamp": "DATETIME(6)",
        "timestamptz": "DATETIME(6)",
        "binary": "LONGBLOB",
        "json": "JSON",
    }
    reverse_types: ClassVar[dict[str, str]] = {
        "tinyint(1)": "boolean",
        "tinyint": "smallint",
        "smallint": "smallint",
        "mediumint": "integer",
        "int": "integer",
        "bigint": "bigint",
        "float": "real",
        "double": "double",
        "decimal": "decimal",
        "datetime": "timestamp",
        "timestamp": "timestamp",
        "time": "time",
        "date": "date",
        "longblob": "binary",
        "blob": "binary",
        "json": "json",
    }

    def quote(self, identifier: str) -> str:
        """Backticks, doubled inside."""
        super().quote(identifier)
        if identifier.endswith(" "):
            raise ConfigError(f"MySQL identifiers cannot end with a space: {identifier!r}")
        return "`" + identifier.replace("`", "``") + "`"

    def placeholder(self, index: int) -> str:
        """PyMySQL's format style."""
        return "%s"

    def key_type(self, declared: str) -> str:
        """Indexed text needs a length in MySQL."""
        return "VARCHAR(255)" if declared in ("text", "json") else self.sql_type(declared)

    def index_column(self, column: str, declared: str) -> str:
        """Unbounded text is indexed by a prefix."""
        return self.quote(column) + ("(255)" if declared in ("text", "json") else "")

    def connect(self, url: DatabaseUrl) -> Any:
        """Connect with ``LOAD DATA LOCAL`` allowed and strict conversions."""
        pymysql = require("pymysql", "mysql")
        conn = pymysql.connect(
            host=url.host,
            port=url.port or 3306,
            user=url.user or "root",
            password=url.password,
            database=url.database or None,
            local_infile=True,
            charset="utf8mb4",
            autocommit=False,
        )
        self.execute(conn, "SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION'")
        self.execute(conn, "SET SESSION time_zone = '+00:00'")
        return conn

    def stream(
        self, conn: Any, sql: str, params: Sequence[Any], batch_size: int
    ) -> Iterator[pl.DataFrame]:
        """An unbuffered server-side cursor read with ``fetchmany``."""
        import pymysql.cursors

        cur = conn.cursor(pymysql.cursors.SSCursor)
        try:
            cur.execute(sql, tuple(params) if params else None)
            names = [d[0] for d in cur.description]
            yield from _row_batches(cur, names, batch_size)
        finally:
            cur.close()

    def columns(self, conn: Any, table: str, schema: str | None) -> dict[str, str] | None:
        """From ``information_schema.columns`` (``column_type`` keeps ``tinyint(1)``)."""
        rows = self.execute(
            conn,
            "SELECT column_name, column_type FROM information_schema.columns "
            "WHERE table_name = %s AND table_schema = coalesce(%s, database()) "
            "ORDER BY ordinal_position",
            (table, schema),
        )
        return {name: kind for name, kind in rows} or None

    @contextmanager
    def schema_lock(
        self, conn: Any, table: str, schema: str | None, timeout: float
    ) -> Iterator[None]:
        """``GET_LOCK`` on a name derived from ``database.table`` (lock names are
        server-wide and at most 64 characters), released after the block: DDL commits
        implicitly here, so no transaction could hold it."""
        if schema is None:
            schema = str(self.execute(conn, "SELECT DATABASE()")[0][0])
        qualified = f"{schema}.{table}"
        digest = hashlib.sha1(qualified.encode(), usedforsecurity=False).hexdigest()[:40]
        name = f"tideflow.ddl.{digest}"
        got = self.execute(conn, "SELECT GET_LOCK(%s, %s)", (name, timeout))[0][0]
        if got != 1:
            holder = self.execute(conn, "SELECT IS_USED_LOCK(%s)", (name,))[0][0]
            raise PipelineError(
                f"sql sink: waited {timeout:g} s (schema_lock_timeout) for the schema lock of "
                f"table {qualified}: another worker or pipeline is changing that table "
                f"(lock {name!r}, held by connection id {holder}; see SHOW PROCESSLIST)"
            )
        try:
            yield
        finally:
            with contextlib.suppress(Exception):  # a lost connection released it already
                self.execute(conn, "SELECT RELEASE_LOCK(%s)", (name,))

    def stage(self, conn: Any, frame: pl.DataFrame, kinds: dict[str, str]) -> str:
        """``LOAD DATA LOCAL INFILE`` into all-text columns; the server converts on insert."""
        staging = "tf_stage"
        self.execute(conn, f"DROP TEMPORARY TABLE IF EXISTS {self.quote(staging)}")
        cols = ", ".join(
            f"{self.quote(c)} {'BIGINT' if c == ROW else 'LONGBLOB' if kinds.get(c) == 'binary' else 'LONGTEXT'}"  # noqa: E501
            for c in frame.columns
        )
        self.execute(conn, f"CREATE TEMPORARY TABLE {self.quote(staging)} ({cols})")
        fd, path = tempfile.mkstemp(suffix=".csv", prefix="tideflow-")
        os.close(fd)
        try:
            Path(path).write_bytes(_as_csv(frame.with_columns(pl.col(pl.Boolean).cast(pl.Int8))))
            self.execute(
                conn,
                f"LOAD DATA LOCAL INFILE %s INTO TABLE {self.quote(staging)} "
                "CHARACTER SET utf8mb4 FIELDS TERMINATED BY ',' OPTIONALLY ENCLOSED BY '\"' "
                "ESCAPED BY '' LINES TERMINATED BY '\\n'",
                (path,),
            )
        finally:
            os.unlink(path)
        return staging

    def unstage(self, conn: Any, staging: str) -> None:
        """Drop the temporary table."""
        self.execute(conn, f"DROP TEMPORARY TABLE IF EXISTS {self.quote(staging)}")

    def index_staging(self, conn: Any, staging: str) -> None:
        """None: MySQL commits the open transaction on CREATE INDEX, even for a temporary
        table, which would undo the savepoints that isolate rejected rows."""

    def upsert_clause(
        self, keys: list[str], columns: list[str], table: str, sql_types: dict[str, str]
    ) -> str:
        """``ON DUPLICATE KEY UPDATE`` from the staging row. MySQL and MariaDB already leave a
        row whose values are all unchanged unwritten (it counts as 0 affected rows)."""
        rest = [c for c in columns if c not in keys] or keys[:1]
        sets = ", ".join(f"{self.quote(c)} = s.{self.quote(c)}" for c in rest)
        return f" ON DUPLICATE KEY UPDATE {sets}"

    def is_connection_error(self, exc: BaseException) -> bool:
        """By MySQL client/server error code."""
        code = exc.args[0] if exc.args else None
        return code in _MYSQL_CONNECTION_ERRORS

    def is_row_error(self, exc: Exception) -> bool:
        """By MySQL error code."""
        code = exc.args[0] if exc.args else None
        return code in _MYSQL_ROW_ERRORS or super().is_row_error(exc)

    def select_expr(self, column: str, sql_type: str, kind: str) -> str:
        """The server converts text on insert; binary travels as hex."""
        quoted = "s." + self.quote(column)
        return f"UNHEX({quoted})" if kind == "binary" else quoted

    def alter_type(self, table: str, column: str, sql_type: str) -> str:
        """``MODIFY COLUMN`` (nullable: widening never adds a constraint)."""
        return f"ALTER TABLE {table} MODIFY COLUMN {self.quote(column)} {sql_type}"

    def swap_tables(self, target: str, new: str, schema: str | None, exists: bool) -> list[str]:
        """DDL is not transactional here, but one ``RENAME TABLE`` of several pairs is
        atomic: readers see the old table or the new one, never none."""
        if not exists:
            return [f"RENAME TABLE {self.table(new, schema)} TO {self.table(target, schema)}"]
        old = f"{new}_old"
        return [
            f"RENAME TABLE {self.table(target, schema)} TO {self.table(old, schema)}, "
            f"{self.table(new, schema)} TO {self.table(target, schema)}",
            f"DROP TABLE {self.table(old, schema)}",
        ]


def duckdb_error() -> type[Exception]:
    """DuckDB's base exception class (imported only when DuckDB is used)."""
    import duckdb

    return duckdb.Error


DIALECTS: dict[str, type[Dialect]] = {
    "postgresql": PostgresDialect,
    "duckdb": DuckDBDialect,
    "sqlite": SQLiteDialect,
    "mysql": MySQLDialect,
}


def dialect_for(url: DatabaseUrl) -> Dialect:
    """The dialect of a parsed URL."""
    return DIALECTS[url.dialect]()


# -- frame conversion --------------------------------------------------------------------------


def _arrow(frame: pl.DataFrame) -> pa.Table:
    """Arrow with plain (not view) strings, which every ADBC driver ingests."""
    table = json_columns(frame).to_arrow()
    schema = pa.schema(
        [
            f.with_type(pa.large_string()) if pa.types.is_string_view(f.type) else f
            for f in table.schema
        ]
    )
    return table.cast(schema)


_COPY_SLICE = 50_000
"""Rows turned into CSV text at a time for a PostgreSQL COPY."""


def _as_csv(frame: pl.DataFrame, utc_wall_time: bool = True) -> bytes:
    """CSV for a server-side bulk load into text columns: no header, strings quoted, null as
    an unquoted ``NULL`` (a quoted "NULL" stays a string), binary as hex."""
    text = _temporal_as_text(frame, utc_wall_time).with_columns(pl.col(pl.Binary).bin.encode("hex"))
    return text.write_csv(
        include_header=False, null_value="NULL", quote_style="non_numeric"
    ).encode()


def _temporal_as_text(frame: pl.DataFrame, utc_wall_time: bool = False) -> pl.DataFrame:
    """Dates and times as ISO text. ``utc_wall_time`` (MySQL, which has no zone-aware type)
    turns zone-aware times into UTC without an offset."""
    frame = json_columns(frame)
    exprs = []
    for name, dtype in frame.schema.items():
        col = pl.col(name)
        if isinstance(dtype, pl.Datetime):
            if dtype.time_zone and utc_wall_time:
                col = col.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
            zone = "" if utc_wall_time or not dtype.time_zone else "%:z"
            fmt = "%Y-%m-%d %H:%M:%S%.6f" + zone
            exprs.append(col.dt.strftime(fmt).alias(name))
        elif dtype in (pl.Date, pl.Time) or isinstance(dtype, pl.Decimal):
            exprs.append(col.cast(pl.String).alias(name))
    return frame.with_columns(exprs) if exprs else frame


def _rechunk(reader: Any, batch_size: int) -> Iterator[pl.DataFrame]:
    """Regroup Arrow record batches into frames of ``batch_size`` rows."""
    pending: list[pa.RecordBatch] = []
    rows = 0
    yielded = False
    schema = reader.schema
    for batch in reader:
        pending.append(batch)
        rows += batch.num_rows
        while rows >= batch_size:
            table = pa.Table.from_batches(pending, schema=schema)
            yield _frame(table.slice(0, batch_size))
            yielded = True
            rest = table.slice(batch_size)
            pending, rows = rest.to_batches(), rest.num_rows
    if rows or not yielded:
        # An empty result still yields one empty frame: it carries the column types.
        yield _frame(pa.Table.from_batches(pending, schema=schema))


def _frame(table: pa.Table) -> pl.DataFrame:
    frame = pl.from_arrow(table, rechunk=False)
    assert isinstance(frame, pl.DataFrame)
    return frame


def _row_batches(cur: Any, names: list[str], batch_size: int) -> Iterator[pl.DataFrame]:
    """Frames from a DB-API cursor's ``fetchmany`` (drivers without an Arrow path)."""
    first = True
    while True:
        rows = cur.fetchmany(batch_size)
        if not rows and not first:
            return
        first = False
        yield pl.DataFrame(rows, schema=names, orient="row", infer_schema_length=None)
        if len(rows) < batch_size:
            return

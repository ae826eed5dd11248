"""PostgreSQL: reads through ADBC (binary ``COPY`` streamed as Arrow record batches),
writes through psycopg — ``COPY`` of Polars-written CSV into a temporary all-text staging
table — because ADBC cannot recover from an error inside a transaction (no savepoint
rollback), which isolating rejected rows needs. Rejected rows are found in the server by
one PL/pgSQL block (``locate_rejected.sql``)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from typing import Any, ClassVar

import polars as pl

from tideflow.connectors.sql.dialects.base import (
    ROW,
    BulkLoader,
    Dialect,
    Driver,
    Grammar,
    Insert,
    Rejected,
)
from tideflow.connectors.sql.dialects.frames import as_csv, rechunk, row_batches
from tideflow.connectors.sql.urls import DatabaseUrl
from tideflow.errors import PipelineError, require

_NO_EQUALITY = frozenset(
    {"json", "xml", "point", "line", "lseg", "box", "path", "polygon", "circle"}
)
"""PostgreSQL types that have no ``=`` operator, so no ``IS DISTINCT FROM``."""

_COPY_SLICE = 50_000
"""Rows turned into CSV text at a time for a PostgreSQL COPY."""

_LOCATE_REJECTED = (
    resources.files("tideflow.connectors.sql.dialects")
    .joinpath("locate_rejected.sql")
    .read_text(encoding="utf-8")
).rstrip("\n")
"""The PL/pgSQL block of :meth:`PostgresCopyLoader.locate_rejected`; ``@staging@``, ``@n@``,
``@row@``, ``@window@``, ``@before@`` and ``@alone@`` are filled in (a template: its SQL is
never formatted with data)."""


class PostgresGrammar(Grammar):
    """PostgreSQL's SQL spelling."""

    name = "postgresql"
    max_identifier = 63
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

    def differs(self, stored: str, incoming: str, sql_type: str) -> str:
        """Types without an equality operator (``json``, ``xml``, the geometric ones) are
        compared as text: json keeps its text verbatim, so equal text is an equal value."""
        if sql_type.strip().lower() in _NO_EQUALITY:
            return f"{stored}::text IS DISTINCT FROM {incoming}::text"
        return f"{stored} IS DISTINCT FROM {incoming}"


class AdbcDriver(Driver):
    """PostgreSQL through ADBC, for reads; also the catalogue queries and the schema lock
    both drivers share."""

    default_port = 5432

    def placeholder(self, index: int) -> str:
        """libpq numbers its parameters."""
        return f"${index}"

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
            yield from rechunk(cur.fetch_record_batch(), batch_size)
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
            (self.grammar.table(table, schema),),
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


class PsycopgDriver(AdbcDriver):
    """PostgreSQL through psycopg, for writes: it can roll back to a savepoint."""

    statements_together = True  # psycopg sends a query without parameters as a simple query

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
            yield from row_batches(cur, [d[0] for d in cur.description], batch_size)


class _NoBulkLoad(BulkLoader):
    """The reading dialect's loader: PostgreSQL writes go through :func:`writing`."""

    def stage(self, conn: Any, frame: pl.DataFrame, kinds: dict[str, str]) -> str:
        """Reads only: the sink writes through the psycopg dialect."""
        raise NotImplementedError("PostgreSQL writes go through the psycopg writer")


class PostgresCopyLoader(BulkLoader):
    """``COPY`` of Polars-written CSV into text staging columns; the ``INSERT ... SELECT``
    casts, so a bad value is a row error, not a load failure."""

    locates_rejected = True

    def __init__(self, grammar: Grammar, driver: Driver) -> None:
        super().__init__(grammar, driver)
        self._filled: set[str] = set()
        """Staging tables loaded in the current transaction."""

    def stage(self, conn: Any, frame: pl.DataFrame, kinds: dict[str, str]) -> str:
        """``COPY`` CSV into a temporary all-text table.

        One table per column list, kept for the session and emptied by each commit (``ON
        COMMIT DELETE ROWS``): creating and dropping a temporary table per batch is
        catalogue work that cost 4-6 ms for a batch of a few rows, against about 1 ms
        reusing it (measured on loopback). Group commits write small batches often. A
        second batch of one transaction (a ``transactional`` sink) truncates it first."""
        q = self.grammar.quote
        digest = hashlib.sha1("\0".join(frame.columns).encode(), usedforsecurity=False)
        staging = f"tf_stage_{digest.hexdigest()[:12]}"
        table = q(staging)
        cols = ", ".join(f"{q(c)} {'BIGINT' if c == ROW else 'TEXT'}" for c in frame.columns)
        create = f"CREATE TEMP TABLE IF NOT EXISTS {table} ({cols}) ON COMMIT DELETE ROWS"
        self.driver.execute(
            conn, f"{create}; TRUNCATE {table}" if staging in self._filled else create
        )
        self._filled.add(staging)
        with (
            conn.cursor() as cur,
            cur.copy(f"COPY {q(staging)} FROM STDIN (FORMAT csv, NULL 'NULL')") as copy,
        ):
            # Streamed in slices: the text of a whole batch (several times its Arrow size,
            # and once more as bytes) is never held at once.
            for part in frame.iter_slices(_COPY_SLICE):
                copy.write(as_csv(part, utc_wall_time=False))
        return staging

    def unstage(self, conn: Any, staging: str) -> None:
        """Nothing: the commit empties the staging table (or a rollback, its rows)."""

    def index_staging(self, conn: Any, staging: str) -> None:
        """The index of the row numbers, kept with the reused staging table."""
        q = self.grammar.quote
        self.driver.execute(
            conn, f"CREATE INDEX IF NOT EXISTS {q(staging + '_row')} ON {q(staging)} ({q(ROW)})"
        )

    def select_expr(self, column: str, sql_type: str, kind: str) -> str:
        """Text to the column's type; binary travels as hex."""
        quoted = "s." + self.grammar.quote(column)
        if kind == "binary":
            return f"decode({quoted}, 'hex')"
        return f"CAST({quoted} AS {sql_type})"

    def committed(self, conn: Any) -> None:
        """The commit emptied the staging tables."""
        self._filled.clear()

    def rolled_back(self, conn: Any) -> None:
        """The rows loaded into staging tables went with the rollback."""
        self._filled.clear()

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
        execute = self.driver.execute
        execute(conn, "CREATE TEMP SEQUENCE IF NOT EXISTS tf_rows_read CACHE 1000000")
        execute(
            conn, "CREATE TEMP TABLE IF NOT EXISTS tf_rejected (row_number BIGINT, message TEXT)"
        )
        window = "s.ctid > _tf_after AND s.ctid < _tf_to"
        fills = {
            "staging": self.grammar.quote(staging),
            "n": str(int(n)),
            "row": self.grammar.quote(ROW),
            "window": insert(f"{window} AND {self.row_marker()}"),
            "before": insert("s.ctid > _tf_after AND s.ctid < _tf_bad"),
            "alone": insert("s.ctid = _tf_bad"),
        }
        # One pass, so that no filled-in text is searched for placeholders again.
        block = re.sub(r"@(\w+)@", lambda m: fills[m.group(1)], _LOCATE_REJECTED)
        execute(conn, block)
        rows = execute(conn, "SELECT row_number, message FROM tf_rejected")
        if any(number < 0 for number, _ in rows):
            return None
        return sorted((int(number), str(message)) for number, message in rows)


def reading() -> Dialect:
    """PostgreSQL read through ADBC; :meth:`Dialect.for_writing` gives :func:`writing`."""
    grammar = PostgresGrammar()
    driver = AdbcDriver(grammar)
    return Dialect(grammar, driver, _NoBulkLoad(grammar, driver), writer=writing)


def writing() -> Dialect:
    """PostgreSQL written through psycopg and ``COPY``."""
    grammar = PostgresGrammar()
    driver = PsycopgDriver(grammar)
    return Dialect(grammar, driver, PostgresCopyLoader(grammar, driver))

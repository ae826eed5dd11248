"""SQLite through the standard library driver: reads with ``fetchmany`` (types restored
from the declared columns), writes by ``executemany`` into a temporary staging table."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import polars as pl

from tideflow.connectors.sql.dialects.base import BulkLoader, Dialect, Driver, Grammar
from tideflow.connectors.sql.dialects.frames import row_batches, temporal_as_text
from tideflow.connectors.sql.urls import DatabaseUrl


class SQLiteGrammar(Grammar):
    """SQLite's SQL spelling."""

    name = "sqlite"
    max_identifier = 1024
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

    def alter_type(self, table: str, column: str, sql_type: str) -> str:
        """SQLite columns hold any value: widening needs no DDL."""
        return ""


class SQLiteDriver(Driver):
    """The standard library's ``sqlite3``, with explicit transactions."""

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

    def commit(self, conn: Any) -> None:
        """Commit if a transaction is open."""
        if conn.in_transaction:
            conn.execute("COMMIT")

    def rollback(self, conn: Any) -> None:
        """Roll back if a transaction is open."""
        if conn.in_transaction:
            conn.execute("ROLLBACK")

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
            kind, col, dtype = self.grammar.kind_of_sql(sql_type), pl.col(name), frame.schema[name]
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

    def stream(
        self, conn: Any, sql: str, params: Sequence[Any], batch_size: int
    ) -> Iterator[pl.DataFrame]:
        """``fetchmany`` in batches."""
        cur = conn.execute(sql, tuple(params))
        names = [d[0] for d in cur.description]
        yield from row_batches(cur, names, batch_size)

    def columns(self, conn: Any, table: str, schema: str | None) -> dict[str, str] | None:
        """From ``pragma_table_info``."""
        rows = self.execute(
            conn, "SELECT name, type FROM pragma_table_info(?, ?) ORDER BY cid", (table, schema)
        )
        return {name: kind for name, kind in rows} or None


class ExecuteManyLoader(BulkLoader):
    """``executemany`` into a temporary table; the merge reads values as stored (SQLite
    columns take any value, so no cast)."""

    def stage(self, conn: Any, frame: pl.DataFrame, kinds: dict[str, str]) -> str:
        """``executemany`` into a temporary table; temporal values as ISO text."""
        q = self.grammar.quote
        staging = "tf_stage"
        self.unstage(conn, staging)
        frame = temporal_as_text(frame)
        cols = ", ".join(q(c) for c in frame.columns)
        conn.execute(f"CREATE TEMP TABLE {q(staging)} ({cols})")
        marks = ", ".join("?" for _ in frame.columns)
        conn.executemany(f"INSERT INTO {q(staging)} VALUES ({marks})", frame.iter_rows())  # nosec B608 - identifiers quoted, values bound
        return staging

    def select_expr(self, column: str, sql_type: str, kind: str) -> str:
        """The staging column as it is."""
        return "s." + self.grammar.quote(column)


def dialect() -> Dialect:
    """SQLite, read and written through ``sqlite3``."""
    grammar = SQLiteGrammar()
    driver = SQLiteDriver(grammar)
    return Dialect(grammar, driver, ExecuteManyLoader(grammar, driver))

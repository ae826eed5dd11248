"""DuckDB through its native Arrow interface: reads stream record batches, writes register
the Arrow table as a view (no copy at all). DuckDB has no savepoints: rejected rows are
isolated by a bisection that commits each accepted range."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import polars as pl
import pyarrow as pa

from tideflow.connectors.sql.dialects.base import BulkLoader, Dialect, Driver, Grammar
from tideflow.connectors.sql.dialects.frames import arrow_table, rechunk
from tideflow.connectors.sql.dialects.postgres import PostgresGrammar
from tideflow.connectors.sql.urls import DatabaseUrl


class DuckDBGrammar(Grammar):
    """DuckDB's SQL spelling (PostgreSQL's, with its own type names)."""

    name = "duckdb"
    max_identifier = 255
    types: ClassVar[dict[str, str]] = {
        **PostgresGrammar.types,
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


class DuckDBDriver(Driver):
    """The ``duckdb`` module's connection."""

    savepoints = False

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
            yield from rechunk(reader, batch_size)
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


class ArrowViewLoader(BulkLoader):
    """The batch registered as a view of its Arrow table."""

    def __init__(self, grammar: Grammar, driver: Driver) -> None:
        super().__init__(grammar, driver)
        self._staged: pa.Table | None = None

    def stage(self, conn: Any, frame: pl.DataFrame, kinds: dict[str, str]) -> str:
        """Register the Arrow table as a view: no copy at all."""
        self._staged = arrow_table(frame)
        conn.register("tf_stage", self._staged)
        return "tf_stage"

    def rolled_back(self, conn: Any) -> None:
        """A registration made inside the transaction went with it, so redo it."""
        if self._staged is not None:
            conn.register("tf_stage", self._staged)

    def unstage(self, conn: Any, staging: str) -> None:
        """Unregister the view."""
        import duckdb

        self._staged = None
        with contextlib.suppress(duckdb.Error):
            conn.unregister(staging)

    def index_staging(self, conn: Any, staging: str) -> None:
        """A view of an Arrow table in memory has no index (nor needs one)."""


def dialect() -> Dialect:
    """DuckDB, read and written through its Arrow interface."""
    grammar = DuckDBGrammar()
    driver = DuckDBDriver(grammar)
    return Dialect(grammar, driver, ArrowViewLoader(grammar, driver))

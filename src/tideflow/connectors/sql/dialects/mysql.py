"""MySQL and MariaDB through PyMySQL: reads with an unbuffered server-side cursor, writes by
``LOAD DATA LOCAL INFILE`` of a Polars-written CSV into an all-text staging table, so that
the server, in strict mode, does every type conversion and reports bad values as errors."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import polars as pl

from tideflow.connectors.sql.dialects.base import ROW, BulkLoader, Dialect, Driver, Grammar
from tideflow.connectors.sql.dialects.frames import as_csv, row_batches
from tideflow.connectors.sql.urls import DatabaseUrl
from tideflow.errors import ConfigError, PipelineError, require

# MySQL/MariaDB error codes of a refused or lost connection or a server going away.
_MYSQL_CONNECTION_ERRORS = {1040, 1053, 1927, 2002, 2003, 2006, 2013, 2055, 4031}
# MySQL/MariaDB error codes that reject a value or a row, not the statement or connection.
_MYSQL_ROW_ERRORS = {1048, 1062, 1264, 1265, 1292, 1366, 1406, 1411, 1452, 1690, 3140, 4025}


class MySQLGrammar(Grammar):
    """MySQL's and MariaDB's SQL spelling."""

    name = "mysql"
    max_identifier = 64
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

    def key_type(self, declared: str) -> str:
        """Indexed text needs a length in MySQL."""
        return "VARCHAR(255)" if declared in ("text", "json") else self.sql_type(declared)

    def index_column(self, column: str, declared: str) -> str:
        """Unbounded text is indexed by a prefix."""
        return self.quote(column) + ("(255)" if declared in ("text", "json") else "")

    def upsert_clause(
        self, keys: list[str], columns: list[str], table: str, sql_types: dict[str, str]
    ) -> str:
        """``ON DUPLICATE KEY UPDATE`` from the staging row. MySQL and MariaDB already leave a
        row whose values are all unchanged unwritten (it counts as 0 affected rows)."""
        rest = [c for c in columns if c not in keys] or keys[:1]
        sets = ", ".join(f"{self.quote(c)} = s.{self.quote(c)}" for c in rest)
        return f" ON DUPLICATE KEY UPDATE {sets}"

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


class PyMySQLDriver(Driver):
    """PyMySQL, in strict mode and UTC."""

    default_port = 3306

    def placeholder(self, index: int) -> str:
        """PyMySQL's format style."""
        return "%s"

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
            yield from row_batches(cur, names, batch_size)
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

    def is_connection_error(self, exc: BaseException) -> bool:
        """By MySQL client/server error code."""
        code = exc.args[0] if exc.args else None
        return code in _MYSQL_CONNECTION_ERRORS

    def is_row_error(self, exc: Exception) -> bool:
        """By MySQL error code."""
        code = exc.args[0] if exc.args else None
        return code in _MYSQL_ROW_ERRORS or super().is_row_error(exc)


class LoadDataLoader(BulkLoader):
    """``LOAD DATA LOCAL INFILE`` into all-text columns; the server converts on insert."""

    def stage(self, conn: Any, frame: pl.DataFrame, kinds: dict[str, str]) -> str:
        """``LOAD DATA LOCAL INFILE`` into all-text columns; the server converts on insert."""
        q, execute = self.grammar.quote, self.driver.execute
        staging = "tf_stage"
        execute(conn, f"DROP TEMPORARY TABLE IF EXISTS {q(staging)}")
        cols = ", ".join(
            f"{q(c)} {'BIGINT' if c == ROW else 'LONGBLOB' if kinds.get(c) == 'binary' else 'LONGTEXT'}"  # noqa: E501
            for c in frame.columns
        )
        execute(conn, f"CREATE TEMPORARY TABLE {q(staging)} ({cols})")
        fd, path = tempfile.mkstemp(suffix=".csv", prefix="tideflow-")
        os.close(fd)
        try:
            Path(path).write_bytes(as_csv(frame.with_columns(pl.col(pl.Boolean).cast(pl.Int8))))
            execute(
                conn,
                f"LOAD DATA LOCAL INFILE %s INTO TABLE {q(staging)} "
                "CHARACTER SET utf8mb4 FIELDS TERMINATED BY ',' OPTIONALLY ENCLOSED BY '\"' "
                "ESCAPED BY '' LINES TERMINATED BY '\\n'",
                (path,),
            )
        finally:
            os.unlink(path)
        return staging

    def unstage(self, conn: Any, staging: str) -> None:
        """Drop the temporary table."""
        self.driver.execute(conn, f"DROP TEMPORARY TABLE IF EXISTS {self.grammar.quote(staging)}")

    def index_staging(self, conn: Any, staging: str) -> None:
        """None: MySQL commits the open transaction on CREATE INDEX, even for a temporary
        table, which would undo the savepoints that isolate rejected rows."""

    def select_expr(self, column: str, sql_type: str, kind: str) -> str:
        """The server converts text on insert; binary travels as hex."""
        quoted = "s." + self.grammar.quote(column)
        return f"UNHEX({quoted})" if kind == "binary" else quoted


def dialect() -> Dialect:
    """MySQL or MariaDB, read and written through PyMySQL."""
    grammar = MySQLGrammar()
    driver = PyMySQLDriver(grammar)
    return Dialect(grammar, driver, LoadDataLoader(grammar, driver))

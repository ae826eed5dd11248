"""A database of each supported kind, and an independent way to read and write it.

Tests check what tideflow wrote with each database's own plain driver (psycopg, PyMySQL,
sqlite3, duckdb) rather than with tideflow's reader, so a bug in one is not hidden by the
same bug in the other.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest


@dataclass
class Database:
    """A database under test: its URL and plain-driver helpers."""

    kind: str
    url: str
    connect: Callable[[], Any]

    def quote(self, name: str) -> str:
        """An identifier quoted for this database (the test's own quoting)."""
        if self.kind == "mysql":
            return "`" + name.replace("`", "``") + "`"
        return '"' + name.replace('"', '""') + '"'

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> pl.DataFrame:
        """Run a query with the plain driver; the rows as a frame."""
        conn = self.connect()
        try:
            cur = conn.cursor()
            cur.execute(sql, params) if params else cur.execute(sql)
            names = [d[0] for d in cur.description]
            rows = cur.fetchall()
        finally:
            conn.close()
        return pl.DataFrame(rows, schema=names, orient="row", infer_schema_length=None)

    def run(self, *statements: str) -> None:
        """Run statements with the plain driver and commit."""
        conn = self.connect()
        try:
            cur = conn.cursor()
            for statement in statements:
                cur.execute(statement)
            conn.commit()
        finally:
            conn.close()

    def table(self, name: str, order_by: str = "id") -> pl.DataFrame:
        """A whole table, ordered."""
        return self.query(f"SELECT * FROM {self.quote(name)} ORDER BY {self.quote(order_by)}")

    def exists(self, name: str) -> bool:
        """True when a table of that name exists."""
        try:
            self.query(f"SELECT 1 FROM {self.quote(name)} WHERE 1 = 0")
        except Exception:  # noqa: BLE001 - each driver raises its own "no such table"
            return False
        return True


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Database:
    """A SQLite file."""
    path = tmp_path / "test.db"
    return Database("sqlite", f"sqlite:///{path}", lambda: sqlite3.connect(path))


@pytest.fixture
def duckdb_db(tmp_path: Path) -> Database:
    """A DuckDB file."""
    path = tmp_path / "test.duckdb"
    return Database("duckdb", f"duckdb:///{path}", lambda: duckdb.connect(str(path)))


@pytest.fixture
def postgres_db(postgres_database: str) -> Database:
    """A fresh PostgreSQL database, read with psycopg."""
    import psycopg

    return Database("postgresql", postgres_database, lambda: psycopg.connect(postgres_database))


@pytest.fixture
def mysql_db(mysql_database: str) -> Database:
    """A fresh MariaDB database, read with PyMySQL."""
    import pymysql

    name = mysql_database.rsplit("/", 1)[1]
    return Database(
        "mysql",
        mysql_database,
        lambda: pymysql.connect(host="127.0.0.1", port=3306, user="root", database=name),
    )


@pytest.fixture(params=["sqlite", "duckdb", "postgresql", "mysql"])
def db(request: pytest.FixtureRequest) -> Iterator[Database]:
    """Each supported database in turn."""
    yield request.getfixturevalue(
        {
            "sqlite": "sqlite_db",
            "duckdb": "duckdb_db",
            "postgresql": "postgres_db",
            "mysql": "mysql_db",
        }[request.param]
    )

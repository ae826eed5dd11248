"""The "sql-etl" example, run as a user would: on local files by default, and from MariaDB
into PostgreSQL, where a second run after changing some orders updates exactly those rows."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
from polars.testing import assert_frame_equal
from tests.system.helpers import EXAMPLES, cli

from tideflow.state.store import StateStore

PII = ["customer_name", "email", "phone", "card_number"]


def query(connect: Callable[[], Any], sql: str) -> pl.DataFrame:
    """Rows of ``sql`` through a plain DB-API connection."""
    conn = connect()
    try:
        cur = conn.cursor()
        cur.execute(sql)
        names = [d[0] for d in cur.description]
        return pl.DataFrame(cur.fetchall(), schema=names, orient="row", infer_schema_length=None)
    finally:
        conn.close()


def expected_target(source: pl.DataFrame) -> pl.DataFrame:
    """The example's transformation, written independently in Polars."""
    return (
        source.with_columns(
            pl.col("email").str.replace(r"^[^@]+@", "").alias("email_domain"),
            (pl.col("amount").cast(pl.Float64) * 100).round().cast(pl.Int64).alias("amount_cents"),
        )
        .drop(PII)
        .filter(pl.col("amount").cast(pl.Float64) > 0)
        .select(
            "order_id",
            "customer_id",
            "country",
            "amount",
            "currency",
            "email_domain",
            "amount_cents",
        )
        .with_columns(pl.col("amount").cast(pl.Float64).round(2))
        .sort("order_id")
    )


def comparable(target: pl.DataFrame) -> pl.DataFrame:
    """The target's columns the check compares, with plain types."""
    return (
        target.select(
            "order_id",
            "customer_id",
            "country",
            "amount",
            "currency",
            "email_domain",
            "amount_cents",
        )
        .with_columns(pl.col("amount").cast(pl.Float64).round(2))
        .sort("order_id")
    )


def source_reads(folder: Path) -> list[int]:
    """Records the ETL's source read in each run, oldest first."""
    store = StateStore(folder / ".tideflow" / "state.db")
    try:
        runs = store.history.runs("sql-etl")
    finally:
        store.close()
    return [r["counts"]["sql"]["in"] for r in reversed(runs)]


def copy_example(tmp_path: Path) -> Path:
    folder = tmp_path / "sql-etl"
    shutil.copytree(EXAMPLES / "sql-etl", folder)
    return folder


def run_ok(folder: Path, *args: str, env: dict[str, str] | None = None) -> None:
    out = cli(*args, cwd=folder, env=env)
    assert out.returncode == 0, out.stderr


def test_sql_etl_example_on_local_files(tmp_path: Path) -> None:
    import sqlite3

    folder = copy_example(tmp_path)
    run_ok(folder, "run", "seed.yaml")
    run_ok(folder, "run", "pipeline.yaml")
    shop = lambda: sqlite3.connect(folder / "shop.db")  # noqa: E731
    analytics = lambda: duckdb.connect(str(folder / "analytics.duckdb"))  # noqa: E731
    target = query(analytics, "SELECT * FROM orders")
    assert not set(PII) & set(target.columns)
    assert_frame_equal(
        comparable(target),
        expected_target(query(shop, "SELECT * FROM orders")),
        check_dtypes=False,
    )
    plan = cli("schema", "plan", "pipeline.yaml", cwd=folder)
    assert plan.returncode == 0 and "no change" in plan.stdout, plan.stdout + plan.stderr

    run_ok(folder, "run", "seed.yaml", "--set", "source.count=30000")
    run_ok(folder, "run", "pipeline.yaml")
    assert_frame_equal(
        comparable(query(analytics, "SELECT * FROM orders")),
        expected_target(query(shop, "SELECT * FROM orders")),
        check_dtypes=False,
    )
    assert source_reads(folder) == [20000, 10000]


def test_sql_etl_example_from_mariadb_into_postgresql(
    tmp_path: Path, mysql_database: str, postgres_database: str
) -> None:
    import psycopg
    import pymysql

    folder = copy_example(tmp_path)
    env = {"SOURCE_URL": mysql_database, "TARGET_URL": postgres_database}
    name = mysql_database.rsplit("/", 1)[1]
    shop = lambda: pymysql.connect(host="127.0.0.1", user="root", database=name)  # noqa: E731
    analytics = lambda: psycopg.connect(postgres_database)  # noqa: E731
    run_ok(folder, "run", "seed.yaml", env=env)
    run_ok(folder, "run", "pipeline.yaml", env=env)
    assert_frame_equal(
        comparable(query(analytics, "SELECT * FROM orders")),
        expected_target(query(shop, "SELECT * FROM orders")),
        check_dtypes=False,
    )
    # The application changes 37 orders; the next run reads and updates exactly those.
    conn = shop()
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE orders SET amount = amount + 1, updated_at = '2030-01-01 00:00:00' "
            "WHERE order_id % 541 = 0"
        )
        changed = cur.rowcount
    conn.commit()
    conn.close()
    before = query(analytics, "SELECT order_id, amount FROM orders ORDER BY order_id")
    run_ok(folder, "run", "pipeline.yaml", env=env)
    after = query(analytics, "SELECT order_id, amount FROM orders ORDER BY order_id")
    moved = before.join(after, on="order_id").filter(pl.col("amount") != pl.col("amount_right"))
    assert moved["order_id"].to_list() == [i for i in range(0, 20000, 541)]
    assert source_reads(folder) == [20000, changed]
    assert_frame_equal(
        comparable(query(analytics, "SELECT * FROM orders")),
        expected_target(query(shop, "SELECT * FROM orders")),
        check_dtypes=False,
    )
    types = query(
        analytics,
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_name = 'orders' AND column_name IN ('amount', 'currency')",
    )
    assert dict(types.iter_rows()) == {"amount": "numeric", "currency": "character varying"}

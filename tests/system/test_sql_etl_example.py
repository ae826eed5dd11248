"""The "sql-etl" example: SQLite -> DuckDB, incremental, without PII, run as a user would."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import duckdb
import polars as pl
from polars.testing import assert_frame_equal
from tests.system.helpers import EXAMPLES, cli

from tideflow.state.store import StateStore

PII = ["customer_name", "email", "phone", "card_number"]


def shop_orders(folder: Path) -> pl.DataFrame:
    """The source table, read with sqlite3 and computed into the expected target rows."""
    with sqlite3.connect(folder / "shop.db") as conn:
        cur = conn.execute("SELECT * FROM orders")
        names = [d[0] for d in cur.description]
        frame = pl.DataFrame(cur.fetchall(), schema=names, orient="row")
    return (
        frame.drop(PII)
        .with_columns(
            pl.col("ts").str.to_datetime(time_zone="UTC"),
            (pl.col("amount") * 100).round().cast(pl.Int64).alias("amount_cents"),
        )
        .sort("order_id")
    )


def analytics_orders(folder: Path) -> pl.DataFrame:
    """The target table, read with duckdb."""
    with duckdb.connect(str(folder / "analytics.duckdb")) as conn:
        frame = conn.sql("SELECT * FROM orders ORDER BY order_id").pl()
    return frame.with_columns(
        pl.col("amount").cast(pl.Float64), pl.col("ts").dt.convert_time_zone("UTC")
    )


def source_reads(folder: Path) -> list[int]:
    """Records the ETL's source read in each run, oldest first."""
    store = StateStore(folder / ".tideflow" / "state.db")
    try:
        runs = store.runs("sql-etl")
    finally:
        store.close()
    return [r["counts"]["sql"]["in"] for r in reversed(runs)]


def test_sql_etl_example_loads_new_orders_only_and_never_pii(tmp_path: Path) -> None:
    folder = tmp_path / "sql-etl"
    shutil.copytree(EXAMPLES / "sql-etl", folder)
    for args in (["run", "seed.yaml"], ["run", "pipeline.yaml"]):
        out = cli(*args, cwd=folder)
        assert out.returncode == 0, out.stderr
    assert_frame_equal(analytics_orders(folder), shop_orders(folder), check_dtypes=False)
    assert not set(PII) & set(analytics_orders(folder).columns)

    plan = cli("schema", "plan", "pipeline.yaml", cwd=folder)
    assert plan.returncode == 0 and "no change" in plan.stdout, plan.stdout + plan.stderr

    more = cli("run", "seed.yaml", "--set", "source.count=30000", cwd=folder)
    assert more.returncode == 0, more.stderr
    again = cli("run", "pipeline.yaml", cwd=folder)
    assert again.returncode == 0, again.stderr
    expected = shop_orders(folder)
    assert expected.height == 30000
    assert_frame_equal(analytics_orders(folder), expected, check_dtypes=False)
    assert source_reads(folder) == [20000, 10000]

"""The ``sql`` source: full, resumed, parallel and incremental reads on every database."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from pathlib import Path

import polars as pl
from polars.testing import assert_frame_equal
from tests.sql.conftest import Database
from tests.sql.helpers import (
    normalise,
    run_yaml,
    sql_sink_pipeline,
    typed_frame,
    write_parquet_input,
)
from tests.system.helpers import read_parquet_tree

from tideflow.connectors.memory import clear, collected
from tideflow.connectors.sql.source import SqlSource, SqlSourceConfig
from tideflow.core.contracts import Context
from tideflow.run.plan import engine_for
from tideflow.spec.loader import load_pipeline_text


def load(db: Database, tmp_path: Path, frame: pl.DataFrame, table: str = "items") -> None:
    """Put ``frame`` in ``table`` (the sink is checked on its own in test_sql_sink)."""
    folder = tmp_path / "load"
    folder.mkdir(exist_ok=True)
    write_parquet_input(folder, frame, parts=1, prefix=f"x{time.monotonic_ns()}")
    run_yaml(folder, sql_sink_pipeline("load", {"table": table}), {"DB_URL": db.url})


def read_pipeline(name: str, source: str) -> str:
    """A sql -> Parquet pipeline."""
    return (
        f"name: {name}\n"
        f"source: {{type: sql, url: '${{DB_URL}}', {source}}}\n"
        "sink: {type: file, path: out, format: parquet}\n"
    )


def test_full_read_returns_the_table(db: Database, tmp_path: Path) -> None:
    frame = typed_frame(1000)
    load(db, tmp_path, frame)
    run_yaml(tmp_path, read_pipeline("full", "table: items, batch_size: 128"), {"DB_URL": db.url})
    got = read_parquet_tree(tmp_path / "out").sort("id")
    assert_frame_equal(normalise(got, frame), frame)


def test_query_and_column_selection(db: Database, tmp_path: Path) -> None:
    frame = typed_frame(200)
    load(db, tmp_path, frame)
    q = db.quote
    query = f"SELECT {q('id')}, {q('small')} FROM {q('items')} WHERE {q('small')} > 0"
    text = read_pipeline("q", f"query: {json.dumps(query)}")
    run_yaml(tmp_path, text, {"DB_URL": db.url})
    expected = frame.filter(pl.col("small") > 0).select("id", "small")
    got = read_parquet_tree(tmp_path / "out").sort("id")
    assert_frame_equal(normalise(got, expected), expected)


def test_a_full_read_resumes_after_the_rows_already_delivered(db: Database, tmp_path: Path) -> None:
    frame = typed_frame(100)
    load(db, tmp_path, frame)
    source = SqlSource(SqlSourceConfig(url=db.url, table="items", order_by=["id"], batch_size=30))
    ctx = Context("p", "sql", tmp_path, tmp_path, threading.Event())
    source.open(ctx, {"rows": 45, "done": False})
    frames = []
    while (batch := source.read_batch()) is not None:
        frames.append(batch.data)
        last = batch.position
    source.close()
    got = pl.concat([f for f in frames if f.height])
    assert got["id"].to_list() == list(range(45, 100))
    assert last == {"rows": 100, "done": True}


def test_parallel_range_reads_return_each_row_once(db: Database, tmp_path: Path) -> None:
    frame = typed_frame(1000)
    load(db, tmp_path, frame)
    text = read_pipeline(
        "par", "table: items, partition_column: id, partitions: 4, batch_size: 100"
    )
    run_yaml(tmp_path, text, {"DB_URL": db.url})
    got = read_parquet_tree(tmp_path / "out").sort("id")
    assert_frame_equal(normalise(got, frame), frame)


def test_incremental_reads_only_new_and_changed_rows(db: Database, tmp_path: Path) -> None:
    # `version` is a non-unique cursor: many rows share a value, across page boundaries.
    rows = pl.DataFrame(
        {"id": list(range(100)), "version": [i // 7 for i in range(100)], "v": ["a"] * 100}
    )
    load(db, tmp_path, rows, table="events")
    text = read_pipeline("inc", "table: events, cursor: version, batch_size: 10")
    run_yaml(tmp_path, text, {"DB_URL": db.url})
    first = read_parquet_tree(tmp_path / "out")
    assert sorted(first["id"].to_list()) == list(range(100))
    # New rows, and changed rows moved to a higher version, as an application would.
    q = db.quote
    top = 100 // 7
    db.run(
        f"UPDATE {q('events')} SET {q('version')} = {top + 1}, {q('v')} = 'b' "
        f"WHERE {q('id')} IN (3, 50)",
        *(
            f"INSERT INTO {q('events')} ({q('id')}, {q('version')}, {q('v')}) "
            f"VALUES ({i}, {top + 1 + i % 3}, 'c')"
            for i in range(100, 130)
        ),
    )
    run_yaml(tmp_path, text, {"DB_URL": db.url})
    both = read_parquet_tree(tmp_path / "out")
    second = both.join(first, on=["id", "version", "v"], how="anti")
    table = db.table("events")
    expected = table.filter(pl.col("version") > top).sort("id")
    assert_frame_equal(second.sort("id").select(expected.columns), expected, check_dtypes=False)
    assert both.height == first.height + expected.height, "a row was read twice"


def test_polling_picks_up_rows_inserted_while_running(db: Database, tmp_path: Path) -> None:
    load(db, tmp_path, pl.DataFrame({"id": [1, 2, 3], "v": ["a", "b", "c"]}), table="feed")
    text = (
        "name: poll\n"
        "source: {type: sql, url: '${DB_URL}', table: feed, cursor: id, poll_interval: 0.1}\n"
        "sink: {type: memory, collector: sql-poll}\n"
        "checkpoint: {every_seconds: 0.1}\n"
    )
    clear("sql-poll")
    engine = engine_for(load_pipeline_text(text, environ={"DB_URL": db.url}), tmp_path)
    runner = threading.Thread(target=engine.run)
    runner.start()
    try:
        q = db.quote
        db.run(
            *(
                f"INSERT INTO {q('feed')} ({q('id')}, {q('v')}) VALUES ({i}, 'n')"
                for i in range(4, 9)
            )
        )
        deadline = time.monotonic() + 60
        while collected("sql-poll").height < 8 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        engine.stop()
        runner.join(timeout=30)
    assert sorted(collected("sql-poll")["id"].to_list()) == list(range(1, 9))


def test_a_timestamp_cursor_with_ties_reads_each_row_once(db: Database, tmp_path: Path) -> None:
    base = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    stamps = [base + dt.timedelta(seconds=i // 5) for i in range(60)]
    rows = pl.DataFrame({"id": list(range(60)), "updated_at": stamps})
    load(db, tmp_path, rows, table="stamped")
    text = read_pipeline("stamps", "table: stamped, cursor: updated_at, batch_size: 7")
    run_yaml(tmp_path, text, {"DB_URL": db.url})
    run_yaml(tmp_path, text, {"DB_URL": db.url})  # nothing new: reads nothing
    got = read_parquet_tree(tmp_path / "out")
    assert sorted(got["id"].to_list()) == list(range(60))

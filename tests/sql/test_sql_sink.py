"""The ``sql`` sink on every supported database, checked with each database's plain driver."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from tests.sql.conftest import Database
from tests.sql.helpers import (
    dead_letter_rows,
    normalise,
    run_yaml,
    sql_sink_pipeline,
    typed_frame,
    write_parquet_input,
)
from tests.system.helpers import cli

from tideflow.connectors.sql.sink import SqlSink
from tideflow.connectors.sql.sink_settings import replace_table_name
from tideflow.core.observer import RunObserver
from tideflow.errors import PipelineError


def test_append_loads_every_type_exactly(db: Database, tmp_path: Path) -> None:
    frame = typed_frame(500)
    write_parquet_input(tmp_path, frame)
    result = run_yaml(tmp_path, sql_sink_pipeline("load", {"table": "items"}), {"DB_URL": db.url})
    assert result.counts["sql"]["out"] == frame.height
    assert_frame_equal(normalise(db.table("items"), frame), frame)


def test_upsert_merges_on_the_key_last_write_wins(db: Database, tmp_path: Path) -> None:
    first = typed_frame(200, seed=1)
    # The second load overlaps the first and repeats some keys inside itself.
    second = pl.concat([typed_frame(150, seed=2, start=100), typed_frame(30, seed=3, start=120)])
    pipeline = sql_sink_pipeline("merge", {"table": "items", "mode": "upsert", "key": ["id"]})
    write_parquet_input(tmp_path, first, prefix="a")
    run_yaml(tmp_path, pipeline, {"DB_URL": db.url})
    write_parquet_input(tmp_path, second, prefix="b")
    run_yaml(tmp_path, pipeline, {"DB_URL": db.url})
    expected = pl.concat([first, second]).unique("id", keep="last", maintain_order=True).sort("id")
    assert_frame_equal(normalise(db.table("items"), expected), expected)


def _upsert_twice(db: Database, tmp_path: Path) -> tuple[pl.DataFrame, Any]:
    """Load six rows with upserts; return the expected table after a re-run of all six where
    three changed (one to a null, one from a null, one a plain new value), and the re-run."""
    first = pl.DataFrame(
        {
            "id": [1, 2, 3, 4, 5, 6],
            "amount": [1.5, None, 3.5, 4.5, None, 6.5],
            "name": ["a", "b", None, "d", None, "f"],
        }
    )
    # 2: amount null -> 2.5; 4: name "d" -> null; 6: name "f" -> "g". 1, 3 (a null name)
    # and 5 (both null) are unchanged.
    second = pl.DataFrame(
        {
            "id": [1, 2, 3, 4, 5, 6],
            "amount": [1.5, 2.5, 3.5, 4.5, None, 6.5],
            "name": ["a", "b", None, None, None, "g"],
        }
    )
    pipeline = sql_sink_pipeline("skip", {"table": "items", "mode": "upsert", "key": ["id"]})
    write_parquet_input(tmp_path, first, prefix="a", parts=1)
    run_yaml(tmp_path, pipeline, {"DB_URL": db.url})
    return second, lambda: (
        write_parquet_input(tmp_path, second, prefix="b", parts=1),
        run_yaml(tmp_path, pipeline, {"DB_URL": db.url}),
    )


def test_upsert_of_an_unchanged_row_leaves_it_unwritten_on_postgresql(
    postgres_db: Database, tmp_path: Path
) -> None:
    """The re-run rewrites only the rows whose values changed (IS DISTINCT FROM, null-safe):
    PostgreSQL gives a rewritten row a new xmin, an untouched one keeps its own."""
    db = postgres_db
    expected, rerun = _upsert_twice(db, tmp_path)
    xmin = "SELECT id, xmin::text AS v FROM items ORDER BY id"
    before = dict(db.query(xmin).iter_rows())
    result = rerun()[1]
    after = dict(db.query(xmin).iter_rows())
    assert result.counts["sql"]["out"] == 6  # every record delivered, changed or not
    assert [i for i in before if before[i] != after[i]] == [2, 4, 6]
    assert_frame_equal(normalise(db.table("items"), expected), expected)


def test_upsert_of_an_unchanged_row_leaves_it_unwritten_on_sqlite(
    sqlite_db: Database, tmp_path: Path
) -> None:
    """The same on SQLite (``IS NOT``), seen by an update trigger logging each rewrite."""
    db = sqlite_db
    expected, rerun = _upsert_twice(db, tmp_path)
    db.run(
        "CREATE TABLE rewrites (id INTEGER)",
        "CREATE TRIGGER log AFTER UPDATE ON items BEGIN INSERT INTO rewrites VALUES (new.id); END",
    )
    result = rerun()[1]
    assert result.counts["sql"]["out"] == 6
    assert db.table("rewrites").get_column("id").to_list() == [2, 4, 6]
    assert_frame_equal(normalise(db.table("items"), expected), expected)


def test_upsert_rerun_with_some_rows_changed_is_exact(db: Database, tmp_path: Path) -> None:
    """On every database the re-run leaves the table equal to the second load, nulls
    included on both sides of a change."""
    expected, rerun = _upsert_twice(db, tmp_path)
    rerun()
    assert_frame_equal(normalise(db.table("items"), expected), expected)


def test_rejected_rows_go_to_dead_letters_and_their_neighbours_load(
    db: Database, tmp_path: Path
) -> None:
    frame = typed_frame(300)
    bad_ids = {7, 8, 150, 299}
    frame = frame.with_columns(
        pl.when(pl.col("id").is_in(bad_ids)).then(None).otherwise(pl.col("small")).alias("small")
    )
    write_parquet_input(tmp_path, frame)
    sink = {"table": "items", "columns": {"small": {"type": "integer", "nullable": False}}}
    result = run_yaml(tmp_path, sql_sink_pipeline("rejects", sink), {"DB_URL": db.url})
    counts = result.counts["sql"]
    assert counts["in"] == counts["out"] + counts["dead_lettered"]
    assert counts["dead_lettered"] == len(bad_ids)
    letters = dead_letter_rows(tmp_path, "rejects")
    assert {json.loads(record)["id"] for record, _ in letters} == bad_ids
    assert all(db.kind in reason for _, reason in letters)
    good = frame.filter(~pl.col("id").is_in(bad_ids))
    assert_frame_equal(normalise(db.table("items"), good), good)


@pytest.fixture
def bisections(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One entry per bisection the sql sink starts (PostgreSQL's fallback)."""
    calls: list[int] = []
    bisect = SqlSink._bisect

    def counted(self: SqlSink, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return bisect(self, *args, **kwargs)

    monkeypatch.setattr(SqlSink, "_bisect", counted)
    return calls


@pytest.mark.parametrize("pages", ["measured", "understated", "overstated"])
def test_rejected_rows_are_located_across_many_windows_of_pages(
    postgres_db: Database,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    bisections: list[int],
    pages: str,
) -> None:
    """A 6,000-row batch spans many staging pages and windows: rejected rows at both ends,
    side by side and on a window's edge are all found, every other row loads once, and a
    wrong page count changes only the windows, never the result."""
    from tideflow.connectors.sql.dialects import postgres

    measured = "pg_relation_size('@staging@')"
    if pages != "measured":
        size = "0" if pages == "understated" else f"10 * {measured}"
        monkeypatch.setattr(
            postgres, "_LOCATE_REJECTED", postgres._LOCATE_REJECTED.replace(measured, size)
        )
    n = 6000
    bad_ids = {0, 1, 2, 63, 64, 65, 500, 2047, 2048, 4001, 5998, 5999}
    bad_ids |= set(range(3000, 3040))  # a run of rejected rows
    frame = typed_frame(n).with_columns(
        pl.when(pl.col("id").is_in(bad_ids)).then(None).otherwise(pl.col("small")).alias("small")
    )
    write_parquet_input(tmp_path, frame, parts=1)
    sink = {"table": "items", "columns": {"small": {"type": "integer", "nullable": False}}}
    pipeline = sql_sink_pipeline("pages", sink, batch_size=n)
    result = run_yaml(tmp_path, pipeline, {"DB_URL": postgres_db.url})
    assert result.counts["sql"]["dead_lettered"] == len(bad_ids)
    letters = dead_letter_rows(tmp_path, "pages")
    assert sorted(json.loads(record)["id"] for record, _ in letters) == sorted(bad_ids)
    good = frame.filter(~pl.col("id").is_in(bad_ids))
    assert_frame_equal(normalise(postgres_db.table("items"), good), good)
    assert not bisections, "the search fell back to bisection"


@pytest.mark.parametrize("awkward", ["we{ird} 'col'", "price $tf$"])
def test_awkward_column_names_load_and_reject_like_any_other(
    db: Database, tmp_path: Path, awkward: str
) -> None:
    """Identifiers reach the statements quoted, never read as template or block syntax:
    braces, quotes and the dollar quote of PostgreSQL's search block (which then bisects)."""
    frame = pl.DataFrame(
        {"id": list(range(120)), awkward: [None if i in {3, 77} else i * 2 for i in range(120)]},
        schema={"id": pl.Int64, awkward: pl.Int64},
    )
    write_parquet_input(tmp_path, frame)
    sink = {
        "table": "items",
        "mode": "upsert",
        "key": ["id"],
        "columns": {awkward: {"type": "bigint", "nullable": False}},
    }
    result = run_yaml(tmp_path, sql_sink_pipeline("awkward", sink), {"DB_URL": db.url})
    assert result.counts["sql"]["dead_lettered"] == 2
    letters = dead_letter_rows(tmp_path, "awkward")
    assert sorted(json.loads(record)["id"] for record, _ in letters) == [3, 77]
    good = frame.filter(pl.col(awkward).is_not_null())
    assert_frame_equal(normalise(db.table("items"), good), good)


@pytest.mark.parametrize("hint", ["true", "one ahead", "one behind", "outside", "bisection"])
def test_a_wrong_rejected_row_hint_falls_back_to_bisection(
    postgres_db: Database,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    bisections: list[int],
    hint: str,
) -> None:
    """PostgreSQL finds a rejected row by counting the rows its failed statement read; that
    is a hint, checked before it is believed, and a wrong one must still dead-letter exactly
    the rejected rows and load all the others."""
    from tideflow.connectors.sql.dialects.postgres import PostgresCopyLoader

    count = "nextval('tf_rows_read') > 0"
    markers = {
        # Counting row 0 twice names the row after it, which loads (row 0 is rejected).
        "one ahead": f"(s.id <> '0' OR {count}) AND {count}",
        # Not counting row 5 names row 6 where row 7 is rejected: the rows before load, and
        # so does row 6 alone.
        "one behind": f"(s.id = '5' OR {count})",
        # A count past the window names no row at all.
        "outside": "setval('tf_rows_read', nextval('tf_rows_read') + 100000) > 0",
    }
    if hint in markers:
        marker = markers[hint]
        monkeypatch.setattr(PostgresCopyLoader, "row_marker", lambda self: marker)
    if hint == "bisection":
        monkeypatch.setattr(PostgresCopyLoader, "locates_rejected", False)
    frame = typed_frame(300)
    bad_ids = {0, 7, 8, 150, 298, 299}
    frame = frame.with_columns(
        pl.when(pl.col("id").is_in(bad_ids)).then(None).otherwise(pl.col("small")).alias("small")
    )
    write_parquet_input(tmp_path, frame)
    sink = {"table": "items", "columns": {"small": {"type": "integer", "nullable": False}}}
    pipeline = sql_sink_pipeline("hints", sink)
    result = run_yaml(tmp_path, pipeline, {"DB_URL": postgres_db.url})
    assert result.counts["sql"]["dead_lettered"] == len(bad_ids)
    letters = dead_letter_rows(tmp_path, "hints")
    assert sorted(json.loads(record)["id"] for record, _ in letters) == sorted(bad_ids)
    assert all("null value" in reason for _, reason in letters), letters
    good = frame.filter(~pl.col("id").is_in(bad_ids))
    assert_frame_equal(normalise(postgres_db.table("items"), good), good)
    # A right hint needs no bisection; a wrong one is noticed and bisected.
    assert bool(bisections) == (hint != "true")


def test_evolve_adds_columns_and_widens_types(db: Database, tmp_path: Path) -> None:
    pipeline = sql_sink_pipeline("evolve", {"table": "t"})
    first = pl.DataFrame({"id": [1, 2], "n": [1, 2]}, schema={"id": pl.Int64, "n": pl.Int32})
    second = pl.DataFrame(
        {"id": [3], "n": [2**40], "extra": ["new"]},
        schema={"id": pl.Int64, "n": pl.Int64, "extra": pl.String},
    )
    write_parquet_input(tmp_path, first, parts=1, prefix="a")
    run_yaml(tmp_path, pipeline, {"DB_URL": db.url})
    write_parquet_input(tmp_path, second, parts=1, prefix="b")
    run_yaml(tmp_path, pipeline, {"DB_URL": db.url})
    expected = pl.concat([first.cast({"n": pl.Int64}), second], how="diagonal")
    assert_frame_equal(normalise(db.table("t"), expected), expected)


def test_strict_refuses_a_difference_and_names_it(db: Database, tmp_path: Path) -> None:
    pipeline = sql_sink_pipeline("strict", {"table": "t", "schema_policy": "strict"})
    write_parquet_input(tmp_path, pl.DataFrame({"id": [1]}), parts=1, prefix="a")
    run_yaml(tmp_path, pipeline, {"DB_URL": db.url})
    write_parquet_input(tmp_path, pl.DataFrame({"id": [2], "extra": ["x"]}), parts=1, prefix="b")
    with pytest.raises(PipelineError, match=r"'extra'.*strict"):
        run_yaml(tmp_path, pipeline, {"DB_URL": db.url})
    assert db.table("t")["id"].to_list() == [1]


def test_evolve_refuses_a_narrowing_change_that_recreate_accepts(
    db: Database, tmp_path: Path
) -> None:
    write_parquet_input(tmp_path, pl.DataFrame({"id": [1], "v": [1.5]}), parts=1, prefix="a")
    run_yaml(tmp_path, sql_sink_pipeline("p", {"table": "t"}), {"DB_URL": db.url})
    write_parquet_input(tmp_path, pl.DataFrame({"id": [2], "v": [True]}), parts=1, prefix="b")
    if db.kind != "sqlite":  # SQLite columns hold any value: there is nothing to refuse
        with pytest.raises(PipelineError, match=r"'v'.*evolve only adds columns"):
            run_yaml(tmp_path, sql_sink_pipeline("p", {"table": "t"}), {"DB_URL": db.url})
    recreate = sql_sink_pipeline("p", {"table": "t", "schema_policy": "recreate"})
    run_yaml(tmp_path, recreate, {"DB_URL": db.url})
    table = db.table("t")
    assert table["id"].to_list() == [2]
    assert bool(table["v"][0]) is True


def test_replace_swaps_only_at_the_end_of_the_run(db: Database, tmp_path: Path) -> None:
    old = typed_frame(50, seed=1)
    new = typed_frame(400, seed=2, start=1000)
    pipeline = sql_sink_pipeline("swap", {"table": "items", "mode": "replace"})
    write_parquet_input(tmp_path, old, prefix="a")
    run_yaml(tmp_path, pipeline, {"DB_URL": db.url})
    (tmp_path / "in").rename(tmp_path / "old-in")
    write_parquet_input(tmp_path, new, parts=8, prefix="b")
    seen_mid_run: list[int] = []

    def on_checkpoint(_: int) -> None:
        seen_mid_run.append(db.table("items").height)

    text = pipeline + "checkpoint: {every_records: 50}\n"
    # A new pipeline name starts from scratch: every file of the new folder is read.
    run_yaml(
        tmp_path,
        text.replace("name: swap", "name: swap2"),
        {"DB_URL": db.url},
        RunObserver(on_checkpoint=on_checkpoint),
    )
    assert len(seen_mid_run) > 2
    assert set(seen_mid_run[:-1]) == {old.height}, "readers saw a partial load"
    assert_frame_equal(normalise(db.table("items"), new), new)
    leftovers = [t for t in (replace_table_name("items"),) if db.exists(t)]
    assert not leftovers


def test_schema_plan_prints_ddl_without_running_it(db: Database, tmp_path: Path) -> None:
    write_parquet_input(tmp_path, typed_frame(20), parts=1)
    sink = {
        "table": "planned",
        "mode": "upsert",
        "key": ["id"],
        "indexes": [{"columns": ["name", "day"]}],
    }
    (tmp_path / "p.yaml").write_text(sql_sink_pipeline("plan", sink), encoding="utf-8")
    out = cli("schema", "plan", "p.yaml", cwd=tmp_path, env={"DB_URL": db.url})
    assert out.returncode == 0, out.stderr
    assert "CREATE TABLE" in out.stdout and "PRIMARY KEY" in out.stdout
    assert "CREATE INDEX" in out.stdout
    assert not db.exists("planned"), "schema plan must not change the database"


def test_transactional_is_refused_where_ddl_or_savepoints_break_it(tmp_path: Path) -> None:
    write_parquet_input(tmp_path, pl.DataFrame({"id": [1]}), parts=1)
    (tmp_path / "p.yaml").write_text(
        sql_sink_pipeline("tx", {"table": "t", "transactional": True}), encoding="utf-8"
    )
    out = cli("validate", "p.yaml", cwd=tmp_path, env={"DB_URL": "mysql://root@127.0.0.1/x"})
    assert out.returncode == 2
    assert "transactional" in out.stderr + out.stdout and "Traceback" not in out.stderr


def test_nested_data_is_stored_as_json_and_reads_back_equal(db: Database, tmp_path: Path) -> None:
    docs = [
        {"id": 1, "doc": {"a": 1, "b": {"c": "x'y\"z"}}, "tags": ["p", "q"]},
        {"id": 2, "doc": {"a": None, "b": {"c": "ü"}}, "tags": []},
        {"id": 3, "doc": None, "tags": None},
    ]
    write_parquet_input(tmp_path, pl.DataFrame(docs), parts=1)
    run_yaml(tmp_path, sql_sink_pipeline("docs", {"table": "docs"}), {"DB_URL": db.url})
    table = db.table("docs")

    def parsed(value: object) -> object:
        return json.loads(value) if isinstance(value, str | bytes) else value

    for column in ("doc", "tags"):
        assert [parsed(v) for v in table[column].to_list()] == [d[column] for d in docs]
    if db.kind == "postgresql":
        types = db.query(
            "SELECT data_type FROM information_schema.columns WHERE table_name = 'docs' "
            "AND column_name IN ('doc', 'tags')"
        )
        assert set(types["data_type"].to_list()) == {"jsonb"}

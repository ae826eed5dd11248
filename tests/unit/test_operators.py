"""Built-in steps, each checked against an independent computation."""

from __future__ import annotations

import threading
from datetime import date, datetime
from pathlib import Path

import polars as pl
import pytest

from tideflow.core.contracts import MAIN_PORT, Context
from tideflow.errors import PipelineError
from tideflow.operators.basic import (
    Cast,
    CastConfig,
    Drop,
    DropConfig,
    Filter,
    FilterConfig,
    Rename,
    RenameConfig,
    Route,
    RouteConfig,
    Select,
    SelectConfig,
    WithColumns,
    WithColumnsConfig,
)
from tideflow.operators.python import Python, PythonConfig
from tideflow.operators.sql import Sql, SqlConfig

ORDERS = pl.DataFrame(
    {
        "id": [1, 2, 3, 4, 5],
        "amount": [10.0, -3.0, 0.0, 250.5, None],
        "country": ["US", "DE", "FR", "US", "NL"],
    }
)


def ctx(tmp_path: Path) -> Context:
    return Context("p", "s", tmp_path, tmp_path, threading.Event())


def test_filter_matches_a_plain_python_predicate() -> None:
    out = Filter(FilterConfig(expr="amount > 0 and country != 'US'")).process(ORDERS)
    expected = [
        r["id"]
        for r in ORDERS.to_dicts()
        if r["amount"] is not None and r["amount"] > 0 and r["country"] != "US"
    ]
    assert out.outputs[MAIN_PORT]["id"].to_list() == expected
    assert out.filtered == ORDERS.height - len(expected)


def test_with_columns_computes_sql_expressions() -> None:
    step = WithColumns(
        WithColumnsConfig(columns={"cents": "amount * 100", "is_us": "country = 'US'"})
    )
    out = step.process(ORDERS).outputs[MAIN_PORT]
    for row in out.to_dicts():
        assert row["cents"] == (None if row["amount"] is None else row["amount"] * 100)
        assert row["is_us"] == (row["country"] == "US")


def test_select_rename_drop() -> None:
    assert Select(SelectConfig(columns=["country", "id"])).process(ORDERS).outputs[
        MAIN_PORT
    ].columns == ["country", "id"]
    renamed = Rename(RenameConfig(columns={"amount": "value"})).process(ORDERS)
    assert renamed.outputs[MAIN_PORT].columns == ["id", "value", "country"]
    dropped = Drop(DropConfig(columns=["amount"])).process(ORDERS)
    assert dropped.outputs[MAIN_PORT].columns == ["id", "country"]
    with pytest.raises(PipelineError, match="did you mean 'amount'"):
        Select(SelectConfig(columns=["amonut"])).process(ORDERS)


def test_cast_converts_and_dead_letters_failures_with_reasons() -> None:
    raw = pl.DataFrame(
        {
            "n": ["1", " 2 ", "three", None],
            "d": ["2026-01-02", "2026-02-30", "2026-03-04", "2026-05-06"],
            "b": ["yes", "false", "1", "maybe"],
        }
    )
    step = Cast(CastConfig(columns={"n": "int", "d": "date", "b": "bool"}))
    result = step.process(raw)
    good = result.outputs[MAIN_PORT]
    assert good.to_dicts() == [{"n": 1, "d": date(2026, 1, 2), "b": True}]
    assert result.dead is not None
    reasons = dict(zip(result.dead["record"], result.dead["reason"], strict=True))
    assert len(reasons) == 3
    assert any("cannot cast d value 2026-02-30" in r for r in reasons.values())
    assert any("cannot cast n value three" in r for r in reasons.values())
    assert any("cannot cast b value maybe" in r for r in reasons.values())
    assert good.height + result.dead.height == raw.height


def test_cast_non_strict_turns_failures_into_nulls() -> None:
    raw = pl.DataFrame({"ts": ["2026-01-02 03:04:05", "nope"]})
    result = Cast(CastConfig(columns={"ts": "datetime"}, strict=False)).process(raw)
    assert result.outputs[MAIN_PORT]["ts"].to_list() == [datetime(2026, 1, 2, 3, 4, 5), None]
    assert result.dead is None


def test_route_first_match_wins_and_default_catches_the_rest() -> None:
    step = Route(
        RouteConfig(routes={"big": "amount > 100", "positive": "amount > 0"}, default="other")
    )
    assert Route.ports(step.config) == ("big", "positive", "other")
    out = step.process(ORDERS).outputs
    assert out["big"]["id"].to_list() == [4]
    assert out["positive"]["id"].to_list() == [1]
    assert out["other"]["id"].to_list() == [2, 3, 5]


def test_route_without_default_counts_unmatched_as_filtered() -> None:
    result = Route(RouteConfig(routes={"us": "country = 'US'"})).process(ORDERS)
    assert result.outputs["us"].height == 2
    assert result.filtered == 3


@pytest.mark.parametrize("engine", ["duckdb", "polars"])
def test_sql_step_groups_like_polars(engine: str, tmp_path: Path) -> None:
    step = Sql(
        SqlConfig(
            query="SELECT country, count(*) AS n, sum(amount) AS total FROM batch "
            "GROUP BY country ORDER BY country",
            engine=engine,
        )
    )
    step.open(ctx(tmp_path), None)
    result = step.process(ORDERS)
    expected = (
        ORDERS.group_by("country")
        .agg(pl.len().alias("n"), pl.col("amount").sum().alias("total"))
        .sort("country")
    )
    got = result.outputs[MAIN_PORT]
    assert got["country"].to_list() == expected["country"].to_list()
    assert got["n"].cast(pl.Int64).to_list() == expected["n"].cast(pl.Int64).to_list()
    # Grouping absorbs every input row (aggregated, not filtered) and creates the group rows.
    assert (result.filtered, result.consumed) == (0, ORDERS.height)
    assert result.generated == expected.height
    step.close()


@pytest.mark.parametrize(
    ("query", "merges"),
    [
        ("SELECT country, count(*) AS n FROM batch GROUP BY country", True),
        ("SELECT round(avg(amount), 2) AS mean FROM batch", True),
        ("SELECT DISTINCT country FROM batch", True),
        ("SELECT id, sum(amount) OVER (PARTITION BY country) AS s FROM batch", False),
        ("SELECT * FROM batch WHERE amount > (SELECT avg(amount) FROM batch)", False),
        ("SELECT upper(country) AS c FROM batch WHERE amount > 10", False),
    ],
)
def test_sql_step_counts_merged_rows_as_aggregated(query: str, merges: bool) -> None:
    result = Sql(SqlConfig(query=query, engine="polars")).process(ORDERS)
    out = result.outputs[MAIN_PORT].height
    if merges:
        assert (result.consumed, result.filtered, result.generated) == (ORDERS.height, 0, out)
    else:
        assert result.consumed == 0 and result.filtered == ORDERS.height - out


def test_sql_errors_name_the_step() -> None:
    step = Sql(SqlConfig(query="SELECT nope FROM batch", engine="polars"))
    with pytest.raises(PipelineError, match="sql: the query failed"):
        step.process(ORDERS)


def _write_module(tmp_path: Path) -> None:
    (tmp_path / "user_fns.py").write_text(
        "def enrich(r, factor=1):\n"
        "    if r['amount'] is None:\n"
        "        raise ValueError('no amount')\n"
        "    if r['amount'] <= 0:\n"
        "        return None\n"
        "    return {**r, 'scaled': r['amount'] * factor}\n"
        "def bad_return(r):\n"
        "    return [r]\n"
        "def per_batch(df):\n"
        "    return df.filter(df['id'] > 2)\n"
        "def broken_batch(df):\n"
        "    raise KeyError('x')\n"
    )


def test_python_per_record_filters_dead_letters_and_maps(tmp_path: Path) -> None:
    _write_module(tmp_path)
    step = Python(PythonConfig(function="user_fns.py:enrich", kwargs={"factor": 2}))
    step.open(ctx(tmp_path), None)
    result = step.process(ORDERS)
    out = result.outputs[MAIN_PORT]
    assert out["id"].to_list() == [1, 4]
    assert out["scaled"].to_list() == [20.0, 501.0]
    assert result.filtered == 2
    assert result.dead is not None
    assert result.dead["reason"].to_list() == ["ValueError: no amount"]
    assert '"id":5' in result.dead["record"][0]


def test_python_per_record_rejects_wrong_return_type(tmp_path: Path) -> None:
    _write_module(tmp_path)
    step = Python(PythonConfig(function="user_fns:bad_return"))
    step.open(ctx(tmp_path), None)
    result = step.process(ORDERS)
    assert result.dead is not None and result.dead.height == ORDERS.height
    assert "expected dict or None" in result.dead["reason"][0]


def test_python_per_batch_and_its_failure(tmp_path: Path) -> None:
    _write_module(tmp_path)
    ok = Python(PythonConfig(function="user_fns.py:per_batch", mode="batch"))
    ok.open(ctx(tmp_path), None)
    result = ok.process(ORDERS)
    assert result.outputs[MAIN_PORT]["id"].to_list() == [3, 4, 5]
    assert result.filtered == 2
    broken = Python(PythonConfig(function="user_fns.py:broken_batch", mode="batch"))
    broken.open(ctx(tmp_path), None)
    failed = broken.process(ORDERS)
    assert failed.dead is not None and failed.dead.height == ORDERS.height
    assert failed.dead["reason"][0] == "KeyError: 'x'"


def test_cast_parses_iso_times_with_offsets_into_utc_and_naive() -> None:
    from tideflow.operators.basic import Cast, CastConfig

    frame = pl.DataFrame({"ts": ["2026-01-01T00:00:00+02:00", "2026-01-01T03:30:00+00:00"]})
    utc = Cast(CastConfig(columns={"ts": "datetime_utc"})).process(frame).outputs["out"]
    assert utc["ts"].dt.hour().to_list() == [22, 3]
    assert utc["ts"].dtype == pl.Datetime("us", "UTC")
    naive = Cast(CastConfig(columns={"ts": "datetime"})).process(frame).outputs["out"]
    assert naive["ts"].dt.hour().to_list() == [22, 3]

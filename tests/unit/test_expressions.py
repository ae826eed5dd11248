"""The expression evaluator: typed functions, tideflow's added functions, their edge cases."""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path

import polars as pl
import pytest

import tideflow as tf
from tideflow.core.expressions import compile_expr, condition_mask
from tideflow.errors import ConfigError, PipelineError
from tideflow.spec.loader import load_pipeline


def test_the_issue_example_runs_on_a_file_typed_by_schema_overrides(tmp_path: Path) -> None:
    hours = [(d, h) for d in (1, 2, 3) for h in (0, 5, 23)]
    data = tmp_path / "orders.csv"
    data.write_text(
        "ordered_at,amount\n" + "".join(f"2026-01-0{d}T{h:02d}:00:00,{h}\n" for d, h in hours)
    )
    result = (
        tf.Pipeline("trunc")
        .source(tf.file(str(data), schema_overrides={"ordered_at": "datetime"}))
        .filter("date_trunc('day', ordered_at) = DATE '2026-01-02'", name="day2")
        .sink(tf.collect("trunc"))
        .run(tmp_path)
    )
    assert result.status == "succeeded"
    kept = result.to_polars("day2")
    expected = [datetime(2026, 1, 2, h) for d, h in hours if d == 2]
    assert kept.get_column("ordered_at").to_list() == expected
    assert result.counts["day2"]["filtered"] == len(hours) - len(expected)


def test_a_sink_condition_can_use_an_added_function(tmp_path: Path) -> None:
    emails = ["ann@corp.example", "bob@mail.example", None, "cy@corp.example"]
    result = (
        tf.Pipeline("when")
        .source(tf.records([{"email": e} for e in emails]))
        .sink(tf.collect("when-corp"), name="corp", when="regexp_matches(email, '@corp\\.')")
        .run(tmp_path)
    )
    got = result.to_polars("corp").get_column("email").to_list()
    assert got == [e for e in emails if e and "@corp." in e]


def test_added_functions_nest_with_native_ones_both_ways() -> None:
    frame = pl.DataFrame({"s": ["Ab", None, "x''y"]})
    inner = compile_expr("upper(md5(lower(s)))", "f").evaluate(frame).to_list()
    assert inner == [
        hashlib.md5(b"ab").hexdigest().upper(),
        None,
        hashlib.md5(b"x''y").hexdigest().upper(),
    ]
    outer = compile_expr("sha1(sha256(s))", "f").evaluate(frame).to_list()
    twice = [
        None
        if v is None
        else hashlib.sha1(hashlib.sha256(v.encode()).hexdigest().encode()).hexdigest()
        for v in frame.get_column("s").to_list()
    ]
    assert outer == twice


def test_a_function_name_inside_a_string_literal_is_text() -> None:
    frame = pl.DataFrame({"s": ["a"]})
    value = compile_expr("'sha256(s) it''s' || s", "f").evaluate(frame).to_list()
    assert value == ["sha256(s) it's" + "a"]


def test_a_constant_fills_every_row_and_an_empty_batch_stays_empty() -> None:
    frame = pl.DataFrame({"n": [1, 2, 3]})
    assert (
        compile_expr("md5('x')", "f").evaluate(frame).to_list()
        == [hashlib.md5(b"x").hexdigest()] * 3
    )
    empty = pl.DataFrame(schema={"t": pl.Datetime("us")})
    assert compile_expr("date_trunc('day', t)", "f").evaluate(empty).len() == 0


def test_a_null_condition_counts_as_false() -> None:
    frame = pl.DataFrame({"s": ["ab", None, "cd"]})
    mask = condition_mask(frame, compile_expr("regexp_matches(s, 'b|d')", "f"))
    assert mask.to_list() == [True, False, True]


def test_a_type_error_at_run_time_names_the_field_and_the_expression() -> None:
    frame = pl.DataFrame({"n": [1]})
    with pytest.raises(PipelineError, match=r"filter\.expr: cannot evaluate .date_trunc.*i64"):
        compile_expr("date_trunc('day', n) = DATE '2026-01-01'", "filter.expr").evaluate(frame)


def test_an_alert_condition_is_checked_against_the_step_types(tmp_path: Path) -> None:
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        f"name: a\nsource:\n  type: file\n  path: {tmp_path / 'in.csv'}\n"
        "  schema_overrides: {amount: float64}\n"
        "steps:\n  - type: filter\n    name: paid\n    expr: amount > 0\n"
        "sink:\n  type: stdout\n"
        "alerts:\n  - name: big\n    metric: matching_records\n    step: paid\n"
        "    above: 1\n    where: upper(amount) = 'X'\n"
    )
    with pytest.raises(ConfigError) as error:
        load_pipeline(pipeline)
    assert "p.yaml:17: alerts[0].where" in str(error.value)
    pipeline.write_text(pipeline.read_text().replace("upper(amount) = 'X'", "amount > 100"))
    assert load_pipeline(pipeline).alerts[0].where == "amount > 100"

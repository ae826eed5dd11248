"""The expression reference is generated from the engine and every example is right.

Each documented example runs through a real ``with_columns`` step; its result is compared
with a value computed here in plain Python (hashlib, re, datetime), not by the engine.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

import tideflow as tf
from tideflow.cli.expressions_doc import FUNCTIONS, example_frame, render
from tideflow.core.expressions import compile_expr
from tideflow.errors import ConfigError
from tideflow.spec.loader import load_pipeline

ROOT = Path(__file__).resolve().parents[2]
Row = dict[str, Any]


def _round_half_away(x: float, digits: int) -> float:
    scaled = abs(x) * 10**digits
    return math.copysign(math.floor(scaled + 0.5) / 10**digits, x)


def _trunc_day(t: datetime) -> datetime:
    return t.replace(hour=0, minute=0, second=0, microsecond=0)


EXPECTED: dict[str, Callable[[Row], Any]] = {
    "date_trunc": lambda r: _trunc_day(r["ordered_at"]) == datetime(2026, 1, 1),
    "strftime": lambda r: f"{r['ordered_at'].year}-{r['ordered_at'].month:02d}",
    "date_part": lambda r: r["ordered_at"].hour,
    "year": lambda r: r["ordered_at"].year,
    "quarter": lambda r: (r["ordered_at"].month - 1) // 3 + 1,
    "month": lambda r: r["ordered_at"].month,
    "day": lambda r: r["ordered_at"].day,
    "dayofweek": lambda r: r["ordered_at"].isoweekday() % 7,
    "hour": lambda r: r["ordered_at"].hour,
    "minute": lambda r: r["ordered_at"].minute,
    "lower": lambda r: r["name"].lower(),
    "upper": lambda r: r["name"].upper(),
    "initcap": lambda r: r["name"].strip().title(),
    "length": lambda r: len(r["name"]),
    "trim": lambda r: r["name"].strip(),
    "ltrim": lambda r: r["name"].lstrip(),
    "rtrim": lambda r: r["name"].rstrip(),
    "substr": lambda r: r["email"][0:3],
    "left": lambda r: r["email"][:5],
    "right": lambda r: r["email"][-3:],
    "replace": lambda r: r["email"].replace("@", " at "),
    "concat": lambda r: f"{r['name'].strip()} <{r['email']}>",
    "concat_ws": lambda r: f"{r['email']}/{r['ordered_at'].year}",
    "starts_with": lambda r: r["email"].startswith("ada"),
    "ends_with": lambda r: r["email"].endswith(".mil"),
    "strpos": lambda r: r["email"].find("@") + 1,
    "split_part": lambda r: r["email"].split("@")[1],
    "lpad": lambda r: r["email"][:3].rjust(6, "*"),
    "reverse": lambda r: r["email"][:3][::-1],
    "regexp_like": lambda r: re.search(r"\.org$", r["email"]) is not None,
    "regexp_matches": lambda r: re.search(r"^[a-z]+@navy", r["email"]) is not None,
    "regexp_replace": lambda r: re.sub(r"@.*$", "@…", r["email"]),
    "regexp_extract": lambda r: re.search(r"@([a-z]+)\.", r["email"]).group(1),  # type: ignore[union-attr]
    "regexp_count": lambda r: len(re.findall(r"[aeiou]", r["email"])),
    "coalesce": lambda r: "none" if r["note"] is None else r["note"],
    "nullif": lambda r: None if r["amount"] == -7.5 else r["amount"],
    "abs": lambda r: abs(r["amount"]),
    "round": lambda r: _round_half_away(r["amount"], 1),
    "ceil": lambda r: float(math.ceil(r["amount"])),
    "floor": lambda r: float(math.floor(r["amount"])),
    "sign": lambda r: math.copysign(1.0, r["amount"]) if r["amount"] else 0.0,
    "sqrt": lambda r: math.sqrt(abs(r["amount"])),
    "power": lambda r: r["amount"] ** 2,
    "mod": lambda r: math.fmod(r["amount"], 5),
    "greatest": lambda r: max(r["amount"], 0.0),
    "least": lambda r: min(r["amount"], 0.0),
    "md5": lambda r: hashlib.md5(r["email"].encode()).hexdigest(),
    "sha1": lambda r: hashlib.sha1(r["email"].encode()).hexdigest(),
    "sha256": lambda r: hashlib.sha256(r["email"].lower().encode()).hexdigest(),
    "sha512": lambda r: hashlib.sha512(r["email"].encode()).hexdigest(),
}


def test_the_checked_in_page_is_the_generated_one() -> None:
    page = (ROOT / "docs" / "expressions.md").read_text(encoding="utf-8")
    assert page == render(), "run: python -m tideflow.cli.expressions_doc > docs/expressions.md"


def test_every_documented_function_has_an_independent_expectation() -> None:
    assert sorted(EXPECTED) == sorted(f.name for f in FUNCTIONS)


def test_every_example_gives_the_independently_computed_value(tmp_path: Path) -> None:
    frame = example_frame()
    columns = {f"r_{i}": f.example for i, f in enumerate(FUNCTIONS)}
    result = (
        tf.Pipeline("expressions-doc")
        .source(tf.records(frame))
        .with_columns(name="examples", **columns)
        .sink(tf.collect("expressions-doc"))
        .run(tmp_path)
    )
    assert result.status == "succeeded"
    out = result.to_polars("examples").to_dicts()
    assert len(out) == frame.height
    mismatches = []
    for i, function in enumerate(FUNCTIONS):
        for row, got in zip(frame.to_dicts(), (r[f"r_{i}"] for r in out), strict=True):
            want = EXPECTED[function.name](row)
            same = (
                math.isclose(got, want, rel_tol=1e-12)
                if isinstance(want, float) and isinstance(got, float)
                else got == want
            )
            if not same:
                mismatches.append(f"{function.example}: got {got!r}, expected {want!r}")
    assert not mismatches, mismatches


def test_date_trunc_uses_the_types_of_schema_overrides(tmp_path: Path) -> None:
    data = tmp_path / "orders.csv"
    data.write_text("ordered_at,amount\n2026-01-01T05:00:00,1\n2026-01-02T01:00:00,2\n")
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        f"name: trunc\nsource:\n  type: file\n  path: {data}\n"
        "  schema_overrides: {ordered_at: datetime}\n"
        "steps:\n  - type: filter\n    expr: date_trunc('day', ordered_at) = DATE '2026-01-01'\n"
        "sink:\n  type: stdout\n"
    )
    load_pipeline(pipeline)  # no error: the type comes from schema_overrides
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        pipeline.read_text().replace(
            "{ordered_at: datetime}", "{ordered_at: datetime, amount: int}"
        )
        + "  when: lower(amount) = 'x'\n"
    )
    with pytest.raises(ConfigError) as error:
        load_pipeline(bad)
    message = str(error.value)
    assert "bad.yaml:11" in message and "sink.when" in message and "lower" in message


def test_a_cast_upstream_makes_a_type_known_at_validation(tmp_path: Path) -> None:
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        f"name: c\nsource:\n  type: file\n  path: {tmp_path / 'in.csv'}\n"
        "steps:\n  - type: cast\n    columns: {n: int}\n"
        "  - type: with_columns\n    columns:\n      t: date_trunc('day', n)\n"
        "sink:\n  type: stdout\n"
    )
    with pytest.raises(ConfigError) as error:
        load_pipeline(pipeline)
    assert "steps[1].columns.t" in str(error.value)
    assert "date" in str(error.value)


def test_extension_arguments_are_checked_when_compiled() -> None:
    with pytest.raises(ConfigError, match="takes 1 argument"):
        compile_expr("sha256(a, b)", "f")
    with pytest.raises(ConfigError, match="string literal"):
        compile_expr("regexp_matches(a, b)", "f")

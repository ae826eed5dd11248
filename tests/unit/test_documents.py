"""The ``flatten`` step, checked against a plain-Python flattening of the same records."""

from __future__ import annotations

from typing import Any

import polars as pl
import pytest

from tideflow.errors import PipelineError
from tideflow.operators.documents import Flatten, FlattenConfig

RECORDS = [
    {
        "id": 1,
        "user": {"name": "ada", "address": {"city": "London", "zip": "N1"}},
        "tags": ["a", "b"],
    },
    {"id": 2, "user": {"name": "alan", "address": {"city": None, "zip": "M1"}}, "tags": []},
    {"id": 3, "user": None, "tags": None},
]


def flatten_record(record: dict[str, Any], sep: str = "_", prefix: str = "") -> dict[str, Any]:
    """An independent, recursive flattening of one record."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{sep}{key}" if prefix else key
        if isinstance(value, dict):
            out |= flatten_record(value, sep, name)
        else:
            out[name] = value
    return out


def test_flatten_matches_a_plain_python_flattening() -> None:
    frame = pl.DataFrame(RECORDS)
    result = Flatten(FlattenConfig()).process(frame)
    got = result.outputs["out"]
    # Polars gives a null struct null fields, which is what a flat table can say.
    full = [
        r
        | (
            {"user": {"name": None, "address": {"city": None, "zip": None}}}
            if r["user"] is None
            else {}
        )
        for r in RECORDS
    ]
    expected = [flatten_record(r) for r in full]
    assert got.to_dicts() == expected
    assert result.filtered == result.generated == 0


def test_explode_makes_a_row_per_element_and_counts_them() -> None:
    frame = pl.DataFrame(RECORDS)
    result = Flatten(FlattenConfig(explode=["tags"], columns=["user"])).process(frame)
    got = result.outputs["out"]
    expected_tags = [t for r in RECORDS for t in (r["tags"] or [None])]
    assert got["tags"].to_list() == expected_tags
    assert result.generated == len(expected_tags) - len(RECORDS)
    assert "user_address_city" in got.columns


def test_max_depth_and_json_text() -> None:
    frame = pl.DataFrame({"doc": ['{"a": {"b": 1}, "c": 2}', '{"a": {"b": 3}, "c": 4}']})
    got = Flatten(FlattenConfig(parse_json=["doc"], max_depth=1)).process(frame).outputs["out"]
    assert got.columns == ["doc_a", "doc_c"]
    assert got["doc_a"].struct.field("b").to_list() == [1, 3]


def test_clashing_names_are_refused() -> None:
    frame = pl.DataFrame({"a": [{"b": 1}], "a_b": [2]})
    with pytest.raises(PipelineError, match="clash"):
        Flatten(FlattenConfig()).process(frame)

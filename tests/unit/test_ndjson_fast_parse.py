"""The NDJSON reader's fast parse (pyarrow with the columns learnt so far) gives exactly what
Polars gives for the same lines, or steps aside; bad lines are still dead-lettered one by
one, in place, and reads resume exactly."""

from __future__ import annotations

import io
import json
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from tests.unit.test_files import make_ctx, read_all

from tideflow.connectors.files.formats.ndjson import (
    _SAMPLE_BYTES,
    _arrow_schema,
    _fast_json,
)

# (lines the columns are learnt from, lines parsed with them)
CASES = {
    "same columns": ('{"a":1,"b":"x"}', '{"a":2,"b":"y"}\n{"a":3,"b":null}'),
    "new field": ('{"a":1}', '{"a":2}\n{"a":3,"b":4}'),
    "int then float": ('{"a":1}', '{"a":2}\n{"a":2.5}'),
    "int then 1.0": ('{"a":1}', '{"a":1.0}'),
    "float then int": ('{"a":1.5}', '{"a":2}\n{"a":2.25}'),
    "int then text": ('{"a":1}', '{"a":"x"}'),
    "text then int": ('{"a":"x"}', '{"a":1}'),
    "bool then int": ('{"a":true}', '{"a":1}'),
    "duplicate key": ('{"a":1}', '{"a":1,"a":2}'),
    "two objects on a line": ('{"a":1}', '{"a":1}{"a":2}\n{"a":3}'),
    "two objects and a blank line": ('{"a":1}', '{"a":1}{"a":2}\n\n{"a":3}'),
    "NaN": ('{"a":1.5}', '{"a":NaN}'),
    "Infinity": ('{"a":1.5}', '{"a":-Infinity}'),
    "NaN in a list": ('{"a":[1.5]}', '{"a":[NaN]}'),
    "absent column": ('{"a":1,"b":2}', '{"a":5}\n{"a":6}'),
    "present but null throughout": ('{"a":1,"b":2}', '{"a":5,"b":null}\n{"a":6}'),
    "null column stays null": ('{"a":1,"n":null}', '{"a":2,"n":null}'),
    "null column gets values": ('{"a":1,"n":null}', '{"a":2,"n":3}'),
    "keys in another order": ('{"a":1,"b":2}', '{"b":3,"a":4}\n{"a":5,"b":6}'),
    "one field first seen later": ('{"a":1,"b":2}', '{"a":3}\n{"b":4,"a":5}'),
    "two fields first seen later": ('{"a":1,"b":2,"c":3}', '{"a":3}\n{"c":4,"a":5}\n{"b":1}'),
    "blank and space lines": ('{"a":1}', '{"a":2}\n\n   \n{"a":3}'),
    "CRLF": ('{"a":"x"}', '{"a":"y"}\r\n{"a":"z"}\r'),
    "lists": ('{"l":[1,2]}', '{"l":[3]}\n{"l":[]}\n{"l":null}'),
    "list of ints gets a float": ('{"l":[1]}', '{"l":[1,2.5]}'),
    "struct": ('{"s":{"x":1}}', '{"s":{"x":2}}'),
    "escaped key": ('{"a":1,"b":2}', '{"\\u0061":7}'),
    "escapes in text": ('{"a":"x"}', '{"a":"\\ud83d\\ude00 \\n \\" \\\\"}'),
    "lone surrogate": ('{"a":"x"}', '{"a":"\\ud800"}'),
    "big integer": ('{"a":1}', '{"a":9223372036854775808}'),
    "not an object": ('{"a":1}', '{"a":1}\n[1]'),
    "a number": ('{"a":1}', "3"),
    "trailing garbage": ('{"a":1}', '{"a":1} x'),
    "spaces around": ('{"a":1}', '  {"a":1}  \n\t{"a":2}'),
}

FAST = {
    "same columns",
    "float then int",
    "absent column",
    "keys in another order",
    "blank and space lines",
    "CRLF",
    "lists",
    "escapes in text",
    "spaces around",
}
"""Cases the fast parse must take (the others may step aside to Polars)."""


def polars_reads(data: bytes) -> pl.DataFrame | None:
    try:
        return pl.read_ndjson(io.BytesIO(data), infer_schema_length=None)
    except (pl.exceptions.PolarsError, ValueError):
        return None


@pytest.mark.parametrize("case", list(CASES))
def test_the_fast_parse_gives_what_polars_gives_or_steps_aside(case: str) -> None:
    sample, lines = CASES[case]
    learnt = pl.read_ndjson(io.BytesIO(sample.encode()), infer_schema_length=None)
    schema = _arrow_schema(learnt.schema)
    data = (lines + "\n").encode()
    expected = polars_reads(data)
    fast = None if schema is None else _fast_json(data, data.count(b"\n"), schema)
    assert (fast is not None) or case not in FAST, f"{case}: the fast parse stepped aside"
    if fast is not None:
        assert expected is not None, f"{case}: pyarrow read what Polars refuses"
        assert_frame_equal(fast, expected)


def test_invalid_utf8_is_not_read_by_the_fast_parse() -> None:
    schema = _arrow_schema(pl.Schema({"a": pl.String}))
    assert schema is not None
    assert _fast_json(b'{"a":"ok"}\n{"a":"\xff"}\n', 2, schema) is None


def test_clean_lines_take_the_fast_parse() -> None:
    """The point of it: records that fit the columns are read without Polars."""
    schema = _arrow_schema(pl.Schema({"a": pl.Int64, "b": pl.String, "c": pl.List(pl.Float64)}))
    assert schema is not None
    data = b'{"a":1,"b":"x","c":[1.5]}\n{"b":"y","a":2,"c":[]}\n'
    fast = _fast_json(data, 2, schema)
    assert fast is not None
    assert_frame_equal(fast, pl.read_ndjson(io.BytesIO(data), infer_schema_length=None))


def big_lines(count: int) -> list[str]:
    return [
        json.dumps({"id": i, "ts": f"2026-01-01T00:00:{i % 60:02d}Z", "v": i * 0.25, "tag": "t"})
        for i in range(count)
    ]


def test_one_bad_line_in_a_big_chunk_is_the_only_dead_letter(tmp_path: Path) -> None:
    """A chunk larger than the sample (so the columns are learnt from it first) with one bad
    line in the middle, then more clean chunks: exactly that line is a dead letter, every
    other record arrives in order, and the counts add up."""
    count = 60_000
    lines = big_lines(count)
    bad = 31_337
    lines[bad] = '{"id": 31337, "ts": '
    path = tmp_path / "big.ndjson"
    path.write_text("\n".join(lines) + "\n")
    assert path.stat().st_size > 2 * _SAMPLE_BYTES * 4  # every chunk is sampled-size or more
    result = read_all(make_ctx(tmp_path), path="big.ndjson", batch_size=20_000)
    assert result.data["id"].to_list() == [i for i in range(count) if i != bad]
    assert (
        result.reasons == [result.reasons[0]]
        and f"big.ndjson: line {bad + 1}:" in (result.reasons[0])
    )
    assert result.records == [lines[bad]]
    assert result.data.height + len(result.records) == count
    assert result.data.schema == pl.Schema(
        {"id": pl.Int64, "ts": pl.String, "v": pl.Float64, "tag": pl.String}
    )
    expected = pl.read_ndjson(
        io.BytesIO(("\n".join(x for i, x in enumerate(lines) if i != bad)).encode())
    )
    assert_frame_equal(result.data, expected)


def test_a_read_resumed_mid_file_reads_exactly_the_rest(tmp_path: Path) -> None:
    count = 50_000
    lines = big_lines(count)
    lines[7_000] = "not json"
    lines[44_444] = ""
    (tmp_path / "big.ndjson").write_text("\n".join(lines) + "\n")
    settings = {"path": "big.ndjson", "batch_size": 15_000}
    ctx = make_ctx(tmp_path)
    full = read_all(ctx, **settings)
    good = [i for i in range(count) if i not in (7_000, 44_444)]
    assert full.data["id"].to_list() == good
    assert len(full.reasons) == 1 and "big.ndjson: line 7001:" in full.reasons[0]
    delivered = 0
    for position, frame in list(zip(full.positions, full.frames, strict=True))[:-1]:
        delivered += frame.height
        rest = read_all(ctx, position=position, **settings)
        assert rest.data["id"].to_list() == good[delivered:], position
    mid = full.positions[1]
    assert mid["file"] == str(tmp_path / "big.ndjson") and mid["row"] == 30_000

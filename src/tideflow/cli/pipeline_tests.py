"""Pipeline unit tests declared in YAML, run by ``tideflow test``.

::

    pipeline: pipeline.yaml          # relative to this file
    tests:
      - name: hot readings are converted
        set: {steps.convert.columns.temp_f: "temp_c * 2"}   # optional overrides
        input:                         # records per source name; a plain list feeds the
          - {sensor: a, temp_c: 30}    # only source
        expect:
          - at: convert                # a step (or step.port) or a sink
            records:
              - {sensor: a, temp_f: 86.0}
            ordered: false             # default: compare as multisets
          - at: parquet
            count: 1                   # or only count the records

Only the columns named in the expected records are compared, so tests stay short.
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tideflow.errors import ConfigError
from tideflow.run.runner import run_with_records
from tideflow.spec.loader import apply_overrides, interpolate, parse_yaml, validate


class Expectation(BaseModel):
    """What one node must have produced."""

    model_config = ConfigDict(extra="forbid")
    at: str = Field(description="A step, `step.port`, source or sink name.")
    records: list[dict[str, Any]] | None = None
    count: int | None = None
    ordered: bool = False

    @model_validator(mode="after")
    def _something(self) -> Expectation:
        if self.records is None and self.count is None:
            raise ValueError("give `records` or `count`")
        return self


class PipelineTest(BaseModel):
    """One test case."""

    model_config = ConfigDict(extra="forbid")
    name: str
    set: dict[str, Any] = Field(default_factory=dict)
    input: list[dict[str, Any]] | dict[str, list[dict[str, Any]]]
    expect: list[Expectation] = Field(min_length=1)


class TestFile(BaseModel):
    """A file of pipeline tests."""

    model_config = ConfigDict(extra="forbid")
    pipeline: str
    tests: list[PipelineTest] = Field(min_length=1)


@dataclass
class Outcome:
    """The result of one test case."""

    name: str
    passed: bool
    details: str = ""


def _canonical(rows: list[dict[str, Any]], columns: list[str]) -> list[bytes]:
    return [
        orjson.dumps({c: row.get(c) for c in columns}, default=str, option=orjson.OPT_SORT_KEYS)
        for row in rows
    ]


def compare(actual: pl.DataFrame, expectation: Expectation) -> str | None:
    """None when ``actual`` meets the expectation, else a readable difference."""
    if expectation.count is not None and actual.height != expectation.count:
        return f"expected {expectation.count} record(s) at {expectation.at}, got {actual.height}"
    if expectation.records is None:
        return None
    expected = expectation.records
    columns = sorted({k for row in expected for k in row})
    missing = [c for c in columns if c not in actual.columns]
    if missing and actual.height:
        return f"{expectation.at} has no column(s) {missing}; it has {actual.columns}"
    # Round-trip expected values through a frame with the actual dtypes, so `86` equals `86.0`
    # and ISO strings equal datetimes.
    if actual.height and columns:
        schema = {c: actual.schema[c] for c in columns}
        with suppress(pl.exceptions.PolarsError, TypeError, ValueError):
            expected = pl.from_dicts(expected, schema=schema, strict=False).to_dicts()
    got = _canonical(actual.to_dicts() if columns else [], columns)
    want = _canonical(expected, columns)
    if not expectation.ordered:
        got, want = sorted(got), sorted(want)
    if got == want:
        return None
    lines = [f"records at {expectation.at} differ (columns {columns}):"]
    lines += ["  expected: " + w.decode() for w in want[:20]]
    lines += ["  actual:   " + g.decode() for g in got[:20]]
    return "\n".join(lines)


def _read(path: Path, what: str) -> str:
    """A file's text; one that cannot be read is a configuration error (exit 2), not a
    traceback."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"{path}: cannot read the {what}: {reason}") from None


def run_test_file(path: Path) -> list[Outcome]:
    """Run every test in a test file."""
    loaded = parse_yaml(_read(path, "test file"), str(path))
    try:
        tests = TestFile.model_validate(loaded.data)
    except ValidationError as exc:
        issues = [loaded.issue(tuple(e["loc"]), e["msg"]) for e in exc.errors()]
        raise ConfigError(issues) from None
    pipeline_path = (path.parent / tests.pipeline).resolve()
    outcomes = []
    for case in tests.tests:
        pipeline = parse_yaml(_read(pipeline_path, "pipeline file"), str(pipeline_path))
        issues = interpolate(pipeline)
        if issues:
            raise ConfigError(issues)
        apply_overrides(pipeline, {k: str(v) for k, v in case.set.items()})
        spec = validate(pipeline)
        if isinstance(case.input, list):
            if len(spec.all_sources) != 1:
                raise ConfigError(
                    f"{path}: test {case.name!r}: the pipeline has several "
                    "sources; give `input` as a mapping of source name to records"
                )
            records = {spec.all_sources[0].name or "": case.input}
        else:
            records = case.input
        result = run_with_records(spec, pipeline_path.parent, records)
        problems = []
        for expectation in case.expect:
            actual = result.outputs.get(expectation.at)
            if actual is None:
                actual = pl.DataFrame()
            problem = compare(actual, expectation)
            if problem:
                problems.append(problem)
        outcomes.append(Outcome(case.name, not problems, "\n".join(problems)))
    return outcomes

"""The `python` step's `value` mode: a function of each record's JSON value."""

from __future__ import annotations

from typing import Any

import orjson

import tideflow as tf
from tideflow.testing import run_pipeline


def triple(value: Any) -> Any:
    """Any JSON value in, any out; None drops; a dict cannot be tripled (dead letter)."""
    if value == 0:
        return None
    return value * 3


def test_every_json_value_goes_through_as_itself(tmp_path: Any) -> None:
    values: list[Any] = [1, "ab", [1], 2.5, {"k": 1}, 0, None]
    texts = [orjson.dumps(v).decode() for v in values] + ["{not json", None]
    pipeline = (
        tf.Pipeline("values")
        .source(tf.records([{"value": "1"}]))
        .step("python", function="tests.unit.test_python_value_mode:triple", mode="value")
        .sink(tf.stdout())
    )
    run = run_pipeline(pipeline, [{"value": t} for t in texts], tmp_path)
    got = [orjson.loads(v) for v in run.outputs["python"].get_column("value").to_list()]
    assert got == [3, "ababab", [1, 1, 1], 7.5]
    counts = run.result.counts["python"]
    assert (counts["in"], counts["out"], counts["filtered"], counts["dead_lettered"]) == (
        9,
        4,
        1,
        4,  # {"k": 1} * 3, None * 3, text that is not JSON, a message without a value
    )

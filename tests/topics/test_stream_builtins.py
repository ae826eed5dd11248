"""Built-in processors of the Stream API: the window, interpolate, outliers and normalize
steps, registered like a function, on the embedded log and on Kafka.

Windows are checked against an independent Polars computation of the generated input; the
other three against the same step run from a pipeline definition over the same records
(they are that step; the steps' own tests check their arithmetic independently)."""

from __future__ import annotations

import random
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from tideflow import Pipeline, Stream, collect, records
from tideflow.operators.timeseries.window import WindowConfig
from tideflow.stream import interpolate, normalize, outliers, window
from tideflow.testing import collected

START = datetime(2024, 1, 1, tzinfo=UTC)


@pytest.fixture(params=["embedded", "kafka"])
def broker(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str | None:
    monkeypatch.delenv("KAFKA_BROKER", raising=False)
    return None if request.param == "embedded" else request.getfixturevalue("kafka_broker")


def fresh(prefix: str) -> str:
    return f"{prefix}-{time.time_ns()}-{uuid.uuid4().hex[:6]}"


def readings(count: int, seed: int = 7) -> list[dict[str, Any]]:
    """Temperatures of two sensors at irregular seconds over about ten minutes."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        at = START + timedelta(seconds=round(i * 600 / count + rng.random(), 3))
        out.append(
            {
                "sensor": "a" if i % 3 else "b",
                "ts": at.isoformat().replace("+00:00", "Z"),
                "temperature": round(rng.uniform(10, 30), 2),
            }
        )
    return out


def as_frame(rows: list[dict[str, Any]], *times: str) -> pl.DataFrame:
    frame = pl.from_dicts(rows)
    return frame.with_columns(
        pl.col(c).str.to_datetime(time_zone="UTC", time_unit="us") for c in times
    )


def test_a_bare_number_in_window_size_means_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WINDOW_SIZE", "60")
    assert WindowConfig(time_column="t").size == "60s"
    monkeypatch.setenv("WINDOW_SIZE", "2.5")
    assert WindowConfig(time_column="t").size == "2.5s"
    monkeypatch.setenv("WINDOW_SIZE", "5m")
    assert WindowConfig(time_column="t").size == "5m"


def test_tumbling_and_sliding_windows_match_polars(
    tmp_path: Path, broker: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WINDOW_SIZE", "60")  # seconds, as stream tools read it
    monkeypatch.setenv("AGGREGATION_TYPE", "max")
    data_in, tumbling_out, sliding_out = fresh("readings"), fresh("tumbling"), fresh("sliding")
    s = Stream("windows", broker=broker, state_dir=tmp_path)
    s.register_processor(
        "tumbling",
        window("ts", keys=["sensor"], columns=["temperature"]),
        input_topic=data_in,
        output_topic=tumbling_out,
    )
    s.register_processor(
        "sliding",
        window(
            "ts",
            kind="sliding",
            slide="20s",
            keys=["sensor"],
            aggregations={"avg": "mean(temperature)", "n": "count()"},
        ),
        input_topic=data_in,
        output_topic=sliding_out,
    )
    rows = readings(400)
    s.stream_data(rows, stream_name=data_in)
    s.start(stop_at_end=True)

    source = as_frame(rows, "ts")
    expected_tumbling = (
        source.with_columns(pl.col("ts").dt.truncate("60s").alias("window_start"))
        .group_by("sensor", "window_start")
        .agg(pl.col("temperature").max().alias("max_temperature"))
        .with_columns((pl.col("window_start") + pl.duration(seconds=60)).alias("window_end"))
    )
    got = as_frame(s.read_data(tumbling_out), "window_start", "window_end")
    order = ["sensor", "window_start"]
    assert_frame_equal(
        got.select(expected_tumbling.columns).sort(order), expected_tumbling.sort(order)
    )

    # Sliding: each reading belongs to the 3 windows of 60 s starting every 20 s around it.
    assigned = (
        source.with_columns(
            pl.concat_list(
                [pl.col("ts").dt.truncate("20s") - pl.duration(seconds=20 * k) for k in range(3)]
            ).alias("window_start")
        )
        .explode("window_start")
        .group_by("sensor", "window_start")
        .agg(pl.col("temperature").mean().alias("avg"), pl.len().cast(pl.Int64).alias("n"))
        .with_columns((pl.col("window_start") + pl.duration(seconds=60)).alias("window_end"))
    )
    got = as_frame(s.read_data(sliding_out), "window_start", "window_end")
    assert_frame_equal(
        got.select(assigned.columns).sort(order),
        assigned.sort(order),
        check_dtypes=False,
        abs_tol=1e-9,
    )


def test_epoch_seconds_and_message_time(tmp_path: Path) -> None:
    data_in, by_epoch, by_arrival = fresh("epoch"), fresh("by-epoch"), fresh("by-arrival")
    s = Stream("epoch", state_dir=tmp_path)
    s.register_processor(
        "epoch",
        window("t", epoch="s", size="10s", aggregations={"n": "count()"}),
        input_topic=data_in,
        output_topic=by_epoch,
    )
    s.register_processor(
        "arrival",
        window(size="1h", aggregations={"n": "count()"}),  # no time column: publish time
        input_topic=data_in,
        output_topic=by_arrival,
    )
    base = int(START.timestamp())
    rows = [{"t": base + i, "v": i} for i in range(35)]  # 10 + 10 + 10 + 5 per 10 s
    s.stream_data(rows, stream_name=data_in)
    s.start(stop_at_end=True)
    counts = sorted((r["window_start"], r["n"]) for r in s.read_data(by_epoch))
    assert [n for _, n in counts] == [10, 10, 10, 5]
    assert counts[0][0].startswith("2024-01-01T00:00:00")
    assert sum(r["n"] for r in s.read_data(by_arrival)) == 35


def test_epoch_numbers_without_epoch_are_dead_lettered_not_misread(tmp_path: Path) -> None:
    data_in = fresh("numbers")
    s = Stream("numbers", state_dir=tmp_path)
    s.register_processor(
        "w", window("t", size="10s"), input_topic=data_in, output_topic=fresh("out")
    )
    s.stream_data([{"t": 1_704_067_200, "v": 1}], stream_name=data_in)
    s.start(stop_at_end=True)
    counts = s.results["w"].counts
    assert counts["w_time"]["dead_lettered"] == 1  # "cannot cast t value ... to datetime"
    assert counts["w"]["in"] == 0


def same_step_from_a_pipeline(
    rows: list[dict[str, Any]], steps: list[dict[str, Any]], tmp: Path
) -> pl.DataFrame:
    """The steps run from a pipeline definition (as a YAML file would declare them)."""
    name = f"yaml-{uuid.uuid4().hex[:8]}"
    pipeline = Pipeline(name).source(records(rows))
    for step in steps:
        pipeline.step(
            **{"type_name": step["type"], **{k: v for k, v in step.items() if k != "type"}}
        )
    pipeline.sink(collect(name)).run(tmp)
    return collected(name)


@pytest.mark.parametrize(
    "processor",
    [
        pytest.param(
            interpolate("ts", columns=["temperature"], keys=["sensor"], interval="30s"),
            id="interpolate",
        ),
        pytest.param(
            outliers(column="temperature", keys=["sensor"], window=20, threshold=1.5),
            id="outliers",
        ),
        pytest.param(
            normalize(columns=["temperature"], method="zscore", keys=["sensor"]), id="normalize"
        ),
    ],
)
def test_builtin_processors_are_the_pipeline_steps(
    tmp_path: Path, broker: str | None, processor: Any
) -> None:
    data_in, data_out = fresh("in"), fresh("out")
    s = Stream("builtins", broker=broker, state_dir=tmp_path)
    s.register_processor("step", processor, input_topic=data_in, output_topic=data_out)
    rows = readings(150, seed=3)
    s.stream_data(rows, stream_name=data_in)
    s.start(stop_at_end=True)

    steps = processor.steps("step")
    expected = same_step_from_a_pipeline(rows, steps, tmp_path / "yaml")
    times = [c for c in ("ts",) if c in expected.columns and expected.schema[c] != pl.String]
    got = as_frame(s.read_data(data_out), *times)
    order = [c for c in ("sensor", "ts") if c in expected.columns]
    assert got.height == expected.height > 0
    assert_frame_equal(
        got.select(expected.columns).sort(order),
        expected.sort(order),
        check_dtypes=False,
        abs_tol=1e-9,
    )


def test_normalisation_with_fixed_parameters_matches_the_formula(tmp_path: Path) -> None:
    data_in, data_out = fresh("in"), fresh("out")
    s = Stream("minmax", state_dir=tmp_path)
    s.register_processor(
        "scale",
        normalize(
            columns=["temperature"],
            method="minmax",
            fit="fixed",
            params={"temperature": {"min": 10, "max": 30}},
        ),
        input_topic=data_in,
        output_topic=data_out,
    )
    rows = readings(50, seed=5)
    s.stream_data(rows, stream_name=data_in)
    s.start(stop_at_end=True)
    got = [r["temperature"] for r in s.read_data(data_out)]
    assert got == pytest.approx([(r["temperature"] - 10) / 20 for r in rows])


def test_outliers_cannot_route_to_a_second_output() -> None:
    from tideflow.errors import ConfigError

    with pytest.raises(ConfigError, match="use `flag` or `drop`"):
        outliers(column="v", mode="route")

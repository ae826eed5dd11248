"""The "sensors" example through the CLI, against an independent Polars computation:
interpolation by upsampling, windows by ``group_by_dynamic``."""

from __future__ import annotations

import math
import shutil
import statistics
from pathlib import Path

import polars as pl
from polars.testing import assert_frame_equal
from tests.system.helpers import EXAMPLES, cli, read_parquet_tree

from tideflow import Pipeline, collect, generate
from tideflow.testing import collected

COUNT = 30_000


def readings(workdir: Path) -> pl.DataFrame:
    """The example's input, from its source alone."""
    spec = Pipeline.from_yaml(EXAMPLES / "sensors" / "pipeline.yaml").build()
    settings = spec.all_sources[0].model_dump(exclude={"name", "type", "input"}, exclude_none=True)
    settings["count"] = COUNT
    Pipeline("sensors-input").source(generate(**settings)).sink(collect("sensors-in")).run(workdir)
    return collected("sensors-in")


def expected_windows(raw: pl.DataFrame) -> pl.DataFrame:
    """Interpolate each sensor onto the 10 s grid (readings are 10 s apart, so every gap is
    far below the 5-minute limit), then aggregate per sensor and minute."""
    series = []
    for (_sensor,), rows in raw.filter(pl.col("temperature_c").is_not_null()).group_by(
        ["sensor_id"]
    ):
        grid = (
            rows.sort("ts")
            .select("sensor_id", "ts", "temperature_c")
            .upsample("ts", every="10s")
            .with_columns(pl.col("sensor_id").forward_fill(), pl.col("temperature_c").interpolate())
        )
        series.append(grid)
    return (
        pl.concat(series)
        .sort("ts")
        .group_by_dynamic("ts", every="1m", group_by="sensor_id", closed="left", label="left")
        .agg(
            pl.col("temperature_c").mean().alias("mean_c"),
            pl.col("temperature_c").min().alias("min_c"),
            pl.col("temperature_c").max().alias("max_c"),
            pl.col("temperature_c").quantile(0.99, interpolation="nearest").alias("p99_c"),
            pl.len().cast(pl.Int64).alias("readings"),
        )
        .rename({"ts": "window_start"})
        .sort("sensor_id", "window_start")
    )


def test_sensors_example_matches_an_independent_computation(tmp_path: Path) -> None:
    folder = tmp_path / "sensors"
    shutil.copytree(EXAMPLES / "sensors", folder, ignore=shutil.ignore_patterns("out", ".*"))
    run = cli("run", "pipeline.yaml", cwd=folder, env={"COUNT": str(COUNT)})
    assert run.returncode == 0, run.stderr
    windows = read_parquet_tree(folder / "out" / "windows")
    outliers = read_parquet_tree(folder / "out" / "outliers")
    assert outliers.height > 0, "the injected spikes should produce outliers"
    assert windows.height > 10 * outliers.height
    columns = ["sensor_id", "window_start", "mean_c", "min_c", "max_c", "p99_c", "readings"]
    got = (
        pl.concat([windows.select(columns), outliers.select(columns)])
        .with_columns(pl.col("readings").cast(pl.Int64))
        .sort("sensor_id", "window_start")
    )
    assert_frame_equal(got, expected_windows(readings(tmp_path)), check_dtypes=False, rel_tol=1e-9)
    flagged = set(zip(outliers["sensor_id"], outliers["window_start"], strict=True))
    assert flagged == mad_outliers(expected_windows(readings(tmp_path)))


def mad_outliers(windows: pl.DataFrame, history: int = 30, threshold: float = 3.5) -> set[object]:
    """Minutes whose maximum scores above ``threshold`` against the previous ``history``
    minutes of the sensor: 0.6745 (x - median) / MAD, written with the statistics module."""
    found = set()
    for (sensor,), rows in windows.sort("window_start").group_by(["sensor_id"]):
        values = rows["max_c"].to_list()
        for i, (start, x) in enumerate(zip(rows["window_start"], values, strict=True)):
            previous = values[max(0, i - history) : i]
            if len(previous) < 3:
                continue
            center = statistics.median(previous)
            spread = statistics.median(abs(v - center) for v in previous)
            distance = abs(x - center)
            score = (
                math.inf
                if spread == 0 and distance > 0
                else (0.0 if spread == 0 else 0.6745 * distance / spread)
            )
            if score > threshold:
                found.add((sensor, start))
    return found

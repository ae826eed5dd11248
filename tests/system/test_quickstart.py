"""The flagship example, run through the CLI as the README's first command runs it."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
from polars.testing import assert_frame_equal
from tests.system.helpers import EXAMPLES, cli, read_parquet_tree

from tideflow import Pipeline, collect, generate
from tideflow.testing import collected


def generated_readings(count: int, workdir: Path) -> pl.DataFrame:
    """The example's input, produced by its source alone (no step applied)."""
    spec = Pipeline.from_yaml(EXAMPLES / "quickstart" / "pipeline.yaml").build()
    settings = spec.all_sources[0].model_dump(exclude={"name", "type", "input"}, exclude_none=True)
    settings["count"] = count
    Pipeline("quickstart-input").source(generate(**settings)).sink(collect("qs-input")).run(workdir)
    return collected("qs-input")


def test_quickstart_output_matches_an_independent_computation(tmp_path: Path) -> None:
    example = tmp_path / "quickstart"
    shutil.copytree(EXAMPLES / "quickstart", example, ignore=shutil.ignore_patterns("out", ".*"))
    result = cli("run", str(example / "pipeline.yaml"), env={"COUNT": "30000"})
    assert result.returncode == 0, result.stderr
    assert "every record accounted for" in result.stdout
    assert "quickstart: succeeded" in result.stdout

    expected = (
        generated_readings(30_000, tmp_path)
        .filter(pl.col("temperature_c").is_between(-40, 60))
        .with_columns(
            (pl.col("temperature_c") * 9 / 5 + 32).round(2).alias("temperature_f"),
            pl.col("ts").dt.date().alias("day"),
        )
    )
    written = read_parquet_tree(example / "out" / "readings")
    keys = ["sensor_id", "ts"]
    assert_frame_equal(
        written.select(expected.columns).sort(keys), expected.sort(keys), check_dtypes=False
    )
    # Partitioned by day: every folder holds exactly that day's readings.
    for folder in (example / "out" / "readings").glob("day=*"):
        days = read_parquet_tree(folder).get_column("ts").dt.date().unique().to_list()
        assert [str(d) for d in days] == [folder.name.removeprefix("day=")]


def test_quickstart_pipeline_tests_pass() -> None:
    result = cli("test", str(EXAMPLES / "quickstart" / "pipeline_test.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS" in result.stdout


def test_every_example_is_covered_by_a_system_test() -> None:
    tests = "\n".join(p.read_text() for p in Path(__file__).parent.glob("test_*.py"))
    for example in sorted(p for p in EXAMPLES.iterdir() if p.is_dir()):
        assert f'"{example.name}"' in tests, f"examples/{example.name} has no system test"

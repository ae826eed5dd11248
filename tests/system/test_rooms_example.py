"""The "rooms" example: one topic, two consumer groups, on the embedded log and on Kafka
(tansu); a consumer killed mid-run still archives every count once and totals them right."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from tests.faults.harness import kill_randomly
from tests.system.helpers import EXAMPLES, cli, paced_rooms, read_parquet_tree

from tideflow import Pipeline, collect, generate
from tideflow.connectors.memory import clear
from tideflow.testing import collected

COUNT = 2000


@pytest.fixture(params=["embedded", "kafka"])
def environment(request: pytest.FixtureRequest) -> dict[str, str]:
    """Variables for the example's run: the embedded log, or Kafka."""
    env = {"COUNT": str(COUNT), "KAFKA_BROKER": ""}
    if request.param == "kafka":
        env["KAFKA_BROKER"] = "kafka://" + request.getfixturevalue("kafka_broker")
    return env


def published(workdir: Path) -> pl.DataFrame:
    """The counts the generator publishes, from its source alone."""
    spec = Pipeline.from_yaml(EXAMPLES / "rooms" / "publish.yaml").build()
    settings = spec.all_sources[0].model_dump(exclude={"name", "type", "input"}, exclude_none=True)
    settings["count"] = COUNT
    clear("rooms-in")
    Pipeline("rooms-input").source(generate(**settings)).sink(collect("rooms-in")).run(workdir)
    return collected("rooms-in")


def test_rooms_example_two_groups_and_a_killed_consumer(
    tmp_path: Path, environment: dict[str, str]
) -> None:
    folder = tmp_path / "rooms"
    reckoning = paced_rooms(
        folder, bool(environment["KAFKA_BROKER"]), 0.3, batch_size=100, every_records=300
    )
    assert (run := cli("run", "publish.yaml", cwd=folder, env=environment)).returncode == 0, (
        run.stderr
    )
    assert (run := cli("run", "coldstorage.yaml", cwd=folder, env=environment)).returncode == 0
    landed = kill_randomly(reckoning, folder, seed=8, kills=2, env=environment, window=(2.5, 4.0))
    assert landed >= 1, "no kill landed mid-run"
    assert (run := cli("run", "reckoning.yaml", cwd=folder, env=environment)).returncode == 0, (
        run.stderr
    )

    sent = published(tmp_path)
    archived = read_parquet_tree(folder / "out" / "rooms")
    assert archived.height == COUNT
    assert archived.select("_partition", "_offset").n_unique() == COUNT
    assert sorted(archived["event_id"].to_list()) == sorted(sent["event_id"].to_list())

    with sqlite3.connect(folder / "rooms.db") as conn:
        rows = conn.execute("SELECT room, people, readings FROM room_totals").fetchall()
    totals = pl.DataFrame(rows, schema=["room", "people", "readings"], orient="row")
    expected = sent.group_by("room").agg(
        pl.col("count").sum().alias("people"), pl.len().alias("readings")
    )
    assert_frame_equal(totals.sort("room"), expected.sort("room"), check_dtypes=False)

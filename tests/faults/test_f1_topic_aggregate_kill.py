"""F1: `kill -9` of the consumer at seeded moments during topic -> keyed aggregate and
1-minute windows -> PostgreSQL upsert, on the embedded log and on Kafka (tansu).

Every key must be present, running totals exact, and every window sum equal to the oracle's.
"""

from __future__ import annotations

import time
from pathlib import Path

import polars as pl
import psycopg
import pytest
from polars.testing import assert_frame_equal
from tests.faults.harness import kill_randomly
from tests.faults.oracle import seeds
from tests.system.helpers import cli

from tideflow.connectors import generate as g

COUNT = 3000

PRODUCE = """
name: f1-produce
source: {type: generate, shape: rooms, count: COUNT, keys: 9, batch_size: 250, seed: SEED}
sink: {type: topic, topic: TOPIC, broker: "BROKER", key: room, partitions: 3}
"""

CONSUME = """
name: f1-consume
source: {type: topic, topic: TOPIC, group: f1, broker: "BROKER", batch_size: 100,
         stop_at_end: true, idle_seconds: 3}
steps:
  - {type: cast, name: typed, columns: {ts: datetime_utc}}
  - {type: python, name: pace, function: "pace.py:pace", mode: batch}
  - {type: aggregate, name: totals, input: pace, keys: [room],
     aggregations: {people: sum(count), readings: count()}}
  - {type: window, name: minutes, input: pace, time_column: ts, keys: [room], size: 1m,
     max_out_of_orderness: 30m,
     aggregations: {people: sum(count)}}
sinks:
  - {type: sql, name: totals_table, input: totals, url: "${DB_URL}", table: totals,
     mode: upsert, key: [room]}
  - {type: sql, name: minutes_table, input: minutes, url: "${DB_URL}", table: minutes,
     mode: upsert, key: [room, window_start]}
checkpoint: {every_records: 300}
"""

PACE = """
import time

def pace(batch):
    time.sleep(0.1)
    return batch
"""


@pytest.fixture(params=["embedded", "kafka"])
def broker(request: pytest.FixtureRequest) -> str:
    if request.param == "embedded":
        return "embedded"
    return "kafka://" + request.getfixturevalue("kafka_broker")


def table(url: str, sql: str, names: list[str]) -> pl.DataFrame:
    with psycopg.connect(url) as conn:
        return pl.DataFrame(conn.execute(sql).fetchall(), schema=names, orient="row")


@pytest.mark.slow
@pytest.mark.parametrize("seed", seeds(1, 20, base=5000))
def test_f1_kill_9_during_keyed_aggregation_into_postgresql(
    tmp_path: Path, broker: str, postgres_database: str, seed: int
) -> None:
    topic = f"f1-{seed}-{time.time_ns()}"

    def fill(text: str) -> str:
        return (
            text.replace("COUNT", str(COUNT))
            .replace("SEED", str(seed))
            .replace("TOPIC", topic)
            .replace("BROKER", broker)
        )

    (tmp_path / "produce.yaml").write_text(fill(PRODUCE), encoding="utf-8")
    (tmp_path / "consume.yaml").write_text(fill(CONSUME), encoding="utf-8")
    (tmp_path / "pace.py").write_text(PACE, encoding="utf-8")
    env = {"DB_URL": postgres_database, "KAFKA_BROKER": ""}
    assert (run := cli("run", "produce.yaml", cwd=tmp_path, env=env)).returncode == 0, run.stderr
    landed = kill_randomly(
        tmp_path / "consume.yaml", tmp_path, seed, kills=2, env=env, window=(2.0, 4.0)
    )
    assert landed >= 1, "no kill landed mid-run"
    assert (run := cli("run", "consume.yaml", cwd=tmp_path, env=env)).returncode == 0, run.stderr

    cfg = g.GenerateConfig(shape="rooms", count=COUNT, keys=9, batch_size=250, seed=seed)
    sent = g._block(cfg, 0).head(COUNT) if COUNT <= 4096 else None
    assert sent is not None and sent.height == COUNT
    expected_totals = sent.group_by("room").agg(
        pl.col("count").sum().alias("people"), pl.len().alias("readings")
    )
    totals = table(
        postgres_database,
        "SELECT room, people, readings FROM totals",
        ["room", "people", "readings"],
    )
    assert_frame_equal(totals.sort("room"), expected_totals.sort("room"), check_dtypes=False)
    expected_minutes = (
        sent.sort("ts")
        .group_by_dynamic("ts", every="1m", group_by="room")
        .agg(pl.col("count").sum().alias("people"))
        .rename({"ts": "window_start"})
    )
    minutes = table(
        postgres_database,
        "SELECT room, window_start, people FROM minutes",
        ["room", "window_start", "people"],
    )
    assert_frame_equal(
        minutes.with_columns(pl.col("window_start").dt.convert_time_zone("UTC")).sort(
            "room", "window_start"
        ),
        expected_minutes.select("room", "window_start", "people").sort("room", "window_start"),
        check_dtypes=False,
    )

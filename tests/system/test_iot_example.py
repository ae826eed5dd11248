"""The "iot" example, run as a user would: the simulator publishes readings to Mosquitto, the
pipeline writes InfluxDB (a private influxd), a Redis hash per sensor and a Parquet archive.

The run in the middle is crashed at its second checkpoint (after the sinks flushed, before
the checkpoint is durable): the messages it had not acknowledged come again from the
persistent MQTT session on the next run, so the archive holds every reading exactly once.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from types import ModuleType

import polars as pl
import pytest
import redis
from tests.influxdb.conftest import Influx, influx  # noqa: F401 - the session fixture
from tests.messaging.conftest import need_server
from tests.system.helpers import EXAMPLES, cli, read_parquet_tree

from tideflow.state.store import StateStore

COUNT = 800
SENSORS = 8


def simulator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "iot_simulator", EXAMPLES / "iot" / "simulator.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_iot_example_end_to_end_through_a_crash(influx: Influx, tmp_path: Path) -> None:  # noqa: F811
    need_server("Mosquitto", 1883, ["mosquitto", "-d", "-c", "/etc/mosquitto/mosquitto.conf"])
    need_server("Redis", 6379, ["redis-server", "--daemonize", "yes"])
    example = tmp_path / "iot"
    shutil.copytree(EXAMPLES / "iot", example, ignore=shutil.ignore_patterns("out", ".*"))
    unique = f"iot{uuid.uuid4().hex[:8]}"
    influx.query(f'CREATE DATABASE "{unique}"')
    env = {
        "TOPIC_PREFIX": unique,
        "CLIENT_ID": unique,
        "INFLUX_URL": influx.url,
        "INFLUX_DB": unique,
        "REDIS_PREFIX": f"{unique}:",
        "IDLE_SECONDS": "1.5",
        "BATCH_SIZE": "100",
        "CHECKPOINT_RECORDS": "200",
    }
    pipeline = str(example / "pipeline.yaml")
    # The first run subscribes (the session persists) and finds nothing yet.
    first = cli("run", pipeline, cwd=example, env=env)
    assert first.returncode == 0, first.stderr
    published = subprocess.run(
        [sys.executable, "simulator.py", "--prefix", unique, "--count", str(COUNT)],
        cwd=example,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert published.returncode == 0, published.stderr
    crashed = cli(
        "run", pipeline, cwd=example, env={**env, "TIDEFLOW_CRASH_AT": "checkpoint.after_flush:2"}
    )
    assert crashed.returncode != 0
    # The first checkpoint committed part of the readings; the rest were never acknowledged.
    committed = read_parquet_tree(example / "out" / "raw").height
    assert 0 < committed < COUNT
    final = cli("run", pipeline, cwd=example, env=env)
    assert final.returncode == 0, final.stderr

    readings = pl.DataFrame(simulator().readings(COUNT, SENSORS, 7))
    valid = readings.filter(pl.col("temperature_c").is_between(-40, 85))
    assert valid.height < COUNT  # the simulator's glitches are there to be filtered

    archive = read_parquet_tree(example / "out" / "raw")
    assert archive.height == COUNT
    assert archive.select("sensor_id", "ts").n_unique() == COUNT
    assert set(archive["topic"]) == {f"{unique}/s{i:02d}/reading" for i in range(SENSORS)}

    result = influx.query('SELECT count("temperature_c") FROM "environment"', unique)
    assert result["results"][0]["series"][0]["values"][0][1] == valid.height

    latest = valid.sort("ts").group_by("sensor_id").last()
    with redis.Redis() as r:
        for row in latest.iter_rows(named=True):
            stored = r.hgetall(f"{unique}:{row['sensor_id']}")
            assert stored[b"ts"] == str(row["ts"]).encode()
            assert float(stored[b"temperature_c"]) == row["temperature_c"]
        r.delete(*r.scan_iter(f"{unique}:*"))

    store = StateStore(example / ".tideflow" / "state.db")
    try:
        letters = store.dead_letters("iot")
    finally:
        store.close()
    assert [letter.record for letter in letters] == ["garbage 0"]

"""The "iot" example, run as a user would: the simulator publishes readings to Mosquitto, the
pipeline writes InfluxDB (a private influxd), a Redis hash per sensor and a Parquet archive.

The broker is a private Mosquitto started with the example's own ``mosquitto.conf``, as its
README says: 2,001 messages are published while the pipeline is down, more than Mosquitto's
default ``max_queued_messages`` (1,000) would keep, and every one must arrive.

The run in the middle is crashed at its second checkpoint (after the sinks flushed, before
the checkpoint is durable): the messages it had not acknowledged come again from the
persistent MQTT session on the next run, so the archive holds every reading exactly once.

A second test gives the broker a small queue on purpose: the readings it drops leave gaps in
the sensors' sequence numbers, which the pipeline's ``sequence`` step dead-letters with their
size, so the loss is reported, not silent.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import socket
import subprocess
import sys
import time
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

COUNT = 2000  # + 1 malformed: 2,001 messages while the pipeline is down
SENSORS = 8


def simulator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "iot_simulator", EXAMPLES / "iot" / "simulator.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_mosquitto(config: Path, folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    """``mosquitto -c CONFIG -p PORT`` in ``folder`` (its persistence file goes there)."""
    if shutil.which("mosquitto") is None:
        pytest.fail("mosquitto is not installed") if _ci() else pytest.skip("no mosquitto")
    port = free_port()
    proc = subprocess.Popen(
        ["mosquitto", "-c", str(config), "-p", str(port)],
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return proc, port
        assert proc.poll() is None, "mosquitto exited at start"
        assert time.monotonic() < deadline, "mosquitto did not start"
        time.sleep(0.05)


def _ci() -> bool:
    import os

    return os.environ.get("CI") == "true"


@pytest.fixture
def example(tmp_path: Path) -> Path:
    """A copy of examples/iot, as a user's checkout."""
    need_server("Redis", 6379, ["redis-server", "--daemonize", "yes"])
    folder = tmp_path / "iot"
    shutil.copytree(EXAMPLES / "iot", folder, ignore=shutil.ignore_patterns("out", ".*"))
    return folder


def publish(example: Path, port: int, prefix: str, *args: str) -> None:
    published = subprocess.run(
        [sys.executable, "simulator.py", "--port", str(port), "--prefix", prefix, *args],
        cwd=example,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert published.returncode == 0, published.stderr


def environment(influx: Influx, unique: str, port: int) -> dict[str, str]:  # noqa: F811
    influx.query(f'CREATE DATABASE "{unique}"')
    return {
        "MQTT_PORT": str(port),
        "TOPIC_PREFIX": unique,
        "CLIENT_ID": unique,
        "INFLUX_URL": influx.url,
        "INFLUX_DB": unique,
        "REDIS_PREFIX": f"{unique}:",
        "IDLE_SECONDS": "1.5",
        "BATCH_SIZE": "100",
        "CHECKPOINT_RECORDS": "200",
    }


@pytest.mark.slow
def test_iot_example_end_to_end_through_a_crash(influx: Influx, example: Path) -> None:  # noqa: F811
    broker, port = start_mosquitto(example / "mosquitto.conf", example)
    unique = f"iot{uuid.uuid4().hex[:8]}"
    env = environment(influx, unique, port)
    try:
        run_the_scenario(influx, example, unique, port, env)
    finally:
        broker.kill()
        broker.wait(10)


def run_the_scenario(
    influx: Influx,  # noqa: F811
    example: Path,
    unique: str,
    port: int,
    env: dict[str, str],
) -> None:
    pipeline = str(example / "pipeline.yaml")
    # The first run subscribes (the session persists) and finds nothing yet.
    first = cli("run", pipeline, cwd=example, env=env)
    assert first.returncode == 0, first.stderr
    publish(example, port, unique, "--count", str(COUNT), "--boot", "1")
    crashed = cli(
        "run", pipeline, cwd=example, env={**env, "TIDEFLOW_CRASH_AT": "checkpoint.after_flush:2"}
    )
    assert crashed.returncode != 0
    # The first checkpoint committed part of the readings; the rest were never acknowledged.
    committed = read_parquet_tree(example / "out" / "raw").height
    assert 0 < committed < COUNT
    final = cli("run", pipeline, cwd=example, env=env)
    assert final.returncode == 0, final.stderr

    readings = pl.DataFrame(simulator().readings(COUNT, SENSORS, 7, 0, 1))
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
        letters = store.ledger.letters("iot")
    finally:
        store.close()
    # The malformed message, and no sequence gap: nothing was dropped on the way.
    assert [letter.record for letter in letters] == ["garbage 0"]
    # As the README lists it: by name, from the checkout's root.
    listed = cli("deadletters", "list", "iot", "--state-dir", "iot/.tideflow", cwd=example.parent)
    assert listed.returncode == 0, listed.stderr
    assert "garbage 0" in listed.stdout and "sequence gap" not in listed.stdout


@pytest.mark.slow
def test_readings_a_broker_drops_are_reported_as_gaps(influx: Influx, example: Path) -> None:  # noqa: F811
    # Mosquitto's default behaviour, scaled down: a queue of 100 messages per offline session.
    config = example / "small-queue.conf"
    config.write_text(
        (example / "mosquitto.conf")
        .read_text(encoding="utf-8")
        .replace("max_queued_messages 1000000", "max_queued_messages 100"),
        encoding="utf-8",
    )
    broker, port = start_mosquitto(config, example)
    unique = f"iot{uuid.uuid4().hex[:8]}"
    env = environment(influx, unique, port)
    pipeline = str(example / "pipeline.yaml")
    try:
        assert cli("run", pipeline, cwd=example, env=env).returncode == 0
        publish(example, port, unique, "--count", "200", "--boot", "5", "--malformed", "0")
        assert cli("run", pipeline, cwd=example, env=env).returncode == 0
        # The sensors go on (the same boot): the next reading of each shows the gap.
        publish(
            example,
            port,
            unique,
            "--count",
            "8",
            "--first",
            "200",
            "--boot",
            "5",
            "--malformed",
            "0",
        )
        last = cli("run", pipeline, cwd=example, env=env)
        assert last.returncode == 0, last.stderr
    finally:
        broker.kill()
        broker.wait(10)
        with redis.Redis() as r:
            keys = list(r.scan_iter(f"{unique}:*"))
            if keys:
                r.delete(*keys)
    received = read_parquet_tree(example / "out" / "raw").height
    assert received < 208  # the broker dropped some
    store = StateStore(example / ".tideflow" / "state.db")
    try:
        letters = store.ledger.letters("iot", step="sequence")
    finally:
        store.close()
    missing = 0
    for letter in letters:
        found = re.match(r"LookupError: sequence gap: (\d+) reading\(s\)", letter.reason)
        assert found, letter.reason
        missing += int(found.group(1))
    # Every dropped reading is counted in exactly one gap.
    assert missing == 208 - received
    assert {letter.record.count('"seq":25') for letter in letters} == {1}

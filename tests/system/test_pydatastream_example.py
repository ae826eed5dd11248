"""examples/pydatastream: the PyDataStream-style scripts on the embedded log and on Kafka,
and the README's commands run from a fresh copy of the repository.

Expected results are computed here from what was published (the readings read back from
the input topic), never copied from a run."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl
import psycopg
import pytest
from polars.testing import assert_frame_equal
from tests.system.helpers import EXAMPLES, ROOT

from tideflow import Stream

EXAMPLE = EXAMPLES / "pydatastream"


def run_script(folder: Path, script: str, env: dict[str, str]) -> str:
    """``python SCRIPT`` in the example folder, as the README runs it; its output."""
    done = subprocess.run(
        [sys.executable, script],
        cwd=folder,
        env={**{k: v for k, v in os.environ.items() if k != "KAFKA_BROKER"}, **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert done.returncode == 0, f"{script} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def expected_labels(published: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What chain.py's two processors should make of its readings."""
    out = []
    for reading in published:
        if "celsius" not in reading or reading["room"] == "test":
            continue
        fahrenheit = round(reading["celsius"] * 9 / 5 + 32, 1)
        out.append({**reading, "fahrenheit": fahrenheit, "hot": fahrenheit >= 77})
    return out


def expected_moving_average(published: list[dict[str, Any]]) -> pl.DataFrame:
    """One-minute windows every 10 s per sensor: each reading is in the 6 windows whose
    start is one of the 6 multiples of 10 s in (ts - 60 s, ts]."""
    readings = pl.from_dicts(published).with_columns(
        pl.col("ts").str.to_datetime(time_zone="UTC", time_unit="us")
    )
    return (
        readings.with_columns(
            pl.concat_list(
                [pl.col("ts").dt.truncate("10s") - pl.duration(seconds=10 * k) for k in range(6)]
            ).alias("window_start")
        )
        .explode("window_start")
        .group_by("sensor", "window_start")
        .agg(pl.col("temperature").mean().alias("avg_temperature"), pl.len().alias("readings"))
        .with_columns((pl.col("window_start") + timedelta(minutes=1)).alias("window_end"))
    )


def table(url: str) -> pl.DataFrame:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT sensor, window_start, window_end, avg_temperature, readings FROM moving_average"
        ).fetchall()
    return pl.DataFrame(
        rows,
        schema=["sensor", "window_start", "window_end", "avg_temperature", "readings"],
        orient="row",
    ).with_columns(pl.col("window_start", "window_end").dt.convert_time_zone("UTC"))


def check_outputs(folder: Path, broker: str | None, db_url: str, outputs: dict[str, str]) -> None:
    """Every script's result, from its own topics and table."""
    assert "doubled: [2, 4, 6]" in outputs["doubling.py"]
    stream = Stream("any", broker=broker, state_dir=folder)
    assert stream.read_data("double") == [2, 4, 6]

    assert stream.read_data("labelled") == expected_labels(stream.read_data("room_readings"))
    assert "to_fahrenheit: 5 in, 4 out, 0 dropped, 1 dead-lettered" in outputs["chain.py"]
    assert "label: 4 in, 3 out, 1 dropped, 0 dead-lettered" in outputs["chain.py"]

    expected = expected_moving_average(stream.read_data("sensor_readings"))
    written = table(db_url)
    order = ["sensor", "window_start"]
    assert_frame_equal(
        written.select(expected.columns).sort(order),
        expected.sort(order),
        check_dtypes=False,
        abs_tol=1e-9,
    )
    assert f"windows written: {expected.height}" in outputs["moving_average.py"]


@pytest.mark.parametrize("backend", ["embedded", "kafka"])
def test_pydatastream_example_scripts(
    tmp_path: Path, backend: str, postgres_database: str, request: pytest.FixtureRequest
) -> None:
    """examples/"pydatastream" run as its README says, on either backend."""
    broker = request.getfixturevalue("kafka_broker") if backend == "kafka" else None
    folder = tmp_path / "pydatastream"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns(".tideflow", "__pycache__"))
    env = {"DB_URL": postgres_database, **({"KAFKA_BROKER": broker} if broker else {})}
    outputs = {
        script: run_script(folder, script, env)
        for script in ("doubling.py", "chain.py", "moving_average.py")
    }
    check_outputs(folder, broker, postgres_database, outputs)


def readme_commands() -> list[str]:
    text = (EXAMPLE / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block is not None, "the README has no bash block"
    return [line for line in block.group(1).splitlines() if line and not line.startswith("#")]


def fresh_clone(target: Path) -> Path:
    """The repository as a fresh clone of this working tree has it: every file git tracks
    or would add (nothing ignored: no .tideflow, no outputs, no virtualenv)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def test_the_readme_commands_run_from_a_fresh_clone(
    tmp_path: Path, postgres_database: str, kafka_broker: str
) -> None:
    """The README's commands, in order, with the database and broker addresses pointed at
    the test's own services (a broker of its own, as every Kafka test has)."""
    clone = fresh_clone(tmp_path / "clone")
    assert not (clone / "examples" / "pydatastream" / ".tideflow").exists()
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BROKER", "DB_URL")}
    # `python` and `tideflow` of this virtualenv, importing the clone's own source.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(clone / "src")
    script = []
    for command in readme_commands():
        pointed = re.sub(r"DB_URL=\S+", f"DB_URL={postgres_database}", command)
        script.append(re.sub(r"KAFKA_BROKER=\S+", f"KAFKA_BROKER={kafka_broker}", pointed))
    done = subprocess.run(
        ["bash", "-e", "-c", "\n".join(script)],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("doubled: [2, 4, 6]") == 2  # the embedded log, then Kafka
    assert "KeyError: 'celsius'" in done.stdout  # tideflow deadletters list, by name
    assert "windows written: 195" in done.stdout
    folder = clone / "examples" / "pydatastream"
    stream = Stream("any", state_dir=folder)
    assert stream.read_data("labelled") == expected_labels(stream.read_data("room_readings"))
    on_kafka = folder / "on-kafka"
    assert Stream("any", broker=kafka_broker, state_dir=on_kafka).read_data("double") == [
        2,
        4,
        6,
    ]

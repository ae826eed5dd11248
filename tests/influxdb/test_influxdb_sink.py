"""The ``influxdb`` sink against a real InfluxDB 1.x (and a 2.x front end for it)."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from tests.influxdb.conftest import TOKEN, Influx

from tideflow.connectors.influxdb import InfluxSink, InfluxSinkConfig, build_lines
from tideflow.core.contracts import Context
from tideflow.errors import PipelineError


def ctx(tmp_path: Path) -> Context:
    return Context("test", "influx", tmp_path, tmp_path, threading.Event())


def database(influx: Influx) -> str:
    name = f"tf_{uuid.uuid4().hex[:10]}"
    influx.query(f'CREATE DATABASE "{name}"')
    return name


def write(tmp_path: Path, frame: pl.DataFrame, **settings: Any) -> pl.DataFrame | None:
    sink = InfluxSink(InfluxSinkConfig.model_validate(settings))
    sink.open(ctx(tmp_path), None)
    try:
        dead = sink.write_batch(frame)
        sink.flush()
    finally:
        sink.close()
    return dead


def readings(n: int) -> pl.DataFrame:
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    return pl.DataFrame(
        {
            "time": [start + dt.timedelta(seconds=i) for i in range(n)],
            "sensor": [f"s {i % 3},x=y" for i in range(n)],  # space, comma, equals: escaped
            "site": ["north"] * n,
            "temp": [20.0 + i / 10 for i in range(n)],
            "count": list(range(n)),
            "ok": [i % 2 == 0 for i in range(n)],
            "note": ['say "hi" \\ there'] * n,
        }
    )


def test_v1_points_round_trip_with_escaping_and_types(influx: Influx, tmp_path: Path) -> None:
    db = database(influx)
    frame = readings(120)
    dead = write(
        tmp_path,
        frame,
        url=influx.url,
        database=db,
        measurement="env reading",
        tags=["sensor", "site"],
        time_column="time",
        batch_size=50,
    )
    assert dead is None
    points = influx.points(db, "env reading")
    assert len(points) == 120
    first = points[0]
    assert first["sensor"] == "s 0,x=y" and first["site"] == "north"
    assert first["temp"] == 20.0 and first["count"] == 0 and first["ok"] is True
    assert first["note"] == 'say "hi" \\ there'
    assert first["time"] == int(dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp() * 1e9)


def test_replay_overwrites_instead_of_duplicating(influx: Influx, tmp_path: Path) -> None:
    db = database(influx)
    frame = readings(30)
    settings = {"url": influx.url, "database": db, "measurement": "m", "tags": ["sensor"]}
    write(tmp_path, frame, time_column="time", precision="s", **settings)
    write(tmp_path, frame, time_column="time", precision="s", **settings)
    assert len(influx.points(db, "m")) == 30


def test_v2_api_with_org_bucket_token(influx: Influx, tmp_path: Path) -> None:
    db = database(influx)
    frame = readings(10).with_columns(pl.col("time").dt.epoch("ms").alias("ts"))
    dead = write(
        tmp_path,
        frame.drop("time"),
        url=influx.v2_url,
        bucket=db,
        org="acme",
        token=TOKEN,
        measurement_column="site",
        fields=["temp"],
        time_column="ts",
        precision="ms",
    )
    assert dead is None
    assert influx.v2_requests[-1] == {"bucket": db, "org": "acme", "precision": "ms"}
    points = influx.points(db, "north")
    assert [p["temp"] for p in points] == frame["temp"].to_list()


def test_v2_bad_token_fails_redacted(influx: Influx, tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="401") as err:
        write(
            tmp_path,
            readings(1),
            url=influx.v2_url,
            bucket="b",
            org="o",
            token="wrong-token-456",
            measurement="m",
        )
    assert "wrong-token-456" not in str(err.value)


def test_unwritable_records_are_dead_lettered_and_neighbours_written(
    influx: Influx, tmp_path: Path
) -> None:
    db = database(influx)
    influx.query(f'CREATE DATABASE "{db}"')
    frame = pl.DataFrame(
        {
            "time": list(range(1, 7)),
            "tag": ["a", "b\nc", "d", "e", "f", "g"],
            "v": [1.0, 2.0, None, float("nan"), 5.0, 6.0],
        }
    )
    # Row 5 has a conflicting field type: InfluxDB rejects it (400) once v is a float.
    conflict = pl.DataFrame({"time": [7], "tag": ["h"], "v": ["text"]})
    settings = {
        "url": influx.url,
        "database": db,
        "measurement": "m",
        "tags": ["tag"],
        "time_column": "time",
    }
    dead = write(tmp_path, frame, **settings)
    assert dead is not None
    assert dead.height == 3
    assert any("newline" in r for r in dead["reason"])
    assert any("no field" in r for r in dead["reason"])
    dead2 = write(
        tmp_path, pl.concat([frame.slice(4, 1).cast({"v": pl.String}), conflict]), **settings
    )
    assert dead2 is not None and dead2.height == 2
    assert "influxdb rejected" in dead2["reason"][0]
    assert sorted(p["tag"] for p in influx.points(db, "m")) == ["a", "f", "g"]


def test_line_building_is_exact() -> None:
    config = InfluxSinkConfig(
        database="d", measurement="w,m", tags=["t"], fields=["i", "s"], time_column="ts"
    )
    frame = pl.DataFrame({"t": ["x y", None], "i": [1, None], "s": [None, 'q"'], "ts": [5, None]})
    lines, reasons = build_lines(frame, config)
    assert lines.to_list() == ["w\\,m,t=x\\ y i=1i 5", 'w\\,m s="q\\""']
    assert reasons.to_list() == [None, None]


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="not both"):
        InfluxSinkConfig.model_validate({"measurement": "m"})
    with pytest.raises(ValueError, match="org"):
        InfluxSinkConfig.model_validate({"bucket": "b", "measurement": "m"})


def test_server_errors_are_retried_with_backoff(influx: Influx, tmp_path: Path) -> None:
    db = database(influx)
    influx.fail_next = 2
    sink = InfluxSink(
        InfluxSinkConfig.model_validate(
            {
                "url": influx.v2_url,
                "bucket": db,
                "org": "acme",
                "token": TOKEN,
                "measurement": "m",
                "fields": ["temp"],
                "time_column": "time",
                "retry": {"first": 0.05, "cap": 0.1},
            }
        )
    )
    context = ctx(tmp_path)
    sink.open(context, None)
    try:
        assert sink.write_batch(readings(5)) is None
    finally:
        sink.close()
    assert context.metrics["retries"] == 2
    assert len(influx.points(db, "m")) == 5

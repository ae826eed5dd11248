"""What the service shows of a live run: source lag, end-to-end latency and per-step state
size (API and Prometheus), and the server-sent event stream the UI follows."""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient
from tests.service.conftest import LOCAL, Server, demo_pipeline, run_to_end

from tideflow.service.app import create_app

PRODUCE = """
name: produce
source: {type: generate, shape: rooms, count: 2000, keys: 9, batch_size: 250, seed: 5}
sink: {type: topic, topic: readings, broker: embedded, key: room, partitions: 3}
"""

CONSUME = """
name: consume
source: {type: topic, name: read, topic: readings, group: totals, broker: embedded,
         batch_size: 100, stop_at_end: true, idle_seconds: 1}
steps:
  - {type: aggregate, name: totals, keys: [room], aggregations: {people: sum(count)}}
sink: {type: file, path: out/totals, format: ndjson}
checkpoint: {every_records: 500}
"""

HOUR_MS = 3_600_000


def metric(text: str, name: str, **labels: str) -> float | None:
    """One sample of the Prometheus text, by name and labels."""
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.fixture
def topic_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "pipelines"
    folder.mkdir()
    (folder / "produce.yaml").write_text(PRODUCE, encoding="utf-8")
    (folder / "consume.yaml").write_text(CONSUME, encoding="utf-8")
    return folder


def test_a_topic_run_reports_lag_end_to_end_latency_and_state_size(topic_folder: Path) -> None:
    with TestClient(create_app(topic_folder, background=False), base_url=LOCAL) as client:
        assert run_to_end(client, "produce", 90)["status"] == "succeeded"
        # The messages were written an hour ago, as far as their timestamps say: every
        # end-to-end latency, measured from them, is then at least an hour.
        log = sqlite3.connect(topic_folder / ".tideflow" / "topics.db")
        with log:
            log.execute("UPDATE messages SET timestamp = timestamp - ?", (HOUR_MS,))
        log.close()
        before = time.time()
        run = run_to_end(client, "consume", 90)
        assert run["status"] == "succeeded", run
        after = time.time()

        read = run["counts"]["read"]
        assert read["out"] == 2000
        # Everything produced was consumed: nothing is behind.
        assert run["lag"] == {"read": {"records": 0.0, "seconds": 0.0}}
        # Each source batch became visible once, through the checkpoint that covered it.
        latency = run["end_to_end"]["read"]
        assert latency["batches"] == read["batches"] == 20
        assert 3600 <= latency["p50"] <= latency["p95"] <= latency["max"]
        assert latency["max"] <= 3600 + (after - before) + 1  # plus the timestamps' rounding

        # The state size is what the state store holds for the step, read here directly:
        # its whole state and the deltas stored after it (incremental checkpoints).
        store = sqlite3.connect(topic_folder / ".tideflow" / "state.db")
        [(base,)] = store.execute(
            "SELECT length(data) FROM step_state WHERE pipeline='consume' AND step='totals'"
        ).fetchall()
        [(deltas,)] = store.execute(
            "SELECT coalesce(sum(length(data)), 0) FROM state_deltas "
            "WHERE pipeline='consume' AND step='totals'"
        ).fetchall()
        store.close()
        stored = base + deltas
        assert run["state_bytes"] == {"totals": stored}

        text = client.get("/metrics").text
        labels = {"pipeline": "consume", "source": "read"}
        count = metric(text, "tideflow_end_to_end_latency_seconds_count", **labels)
        assert count == 20
        assert metric(text, "tideflow_end_to_end_latency_seconds_bucket", le="900.0", **labels) == 0
        # The run has ended: its own lag gauges are gone (nobody measures them any more);
        # the server's group lag, read from the topic, says nothing is behind.
        assert metric(text, "tideflow_source_lag_records", **labels) is None
        assert metric(text, "tideflow_source_lag_seconds", **labels) is None
        for part in ("0", "1", "2"):
            group = {**labels, "group": "totals", "topic": "readings", "partition": part}
            assert metric(text, "tideflow_group_lag_records", **group) == 0
        assert metric(text, "tideflow_state_bytes", pipeline="consume", step="totals") == stored


def events_of(lines: Iterator[str]) -> Iterator[tuple[str, Any]]:
    """(event, JSON data) of a server-sent event stream; `retry` as ("retry", ms)."""
    name, data = "message", []
    for line in lines:
        if line.startswith("retry:"):
            yield "retry", int(line.split(":", 1)[1])
        elif line.startswith("event:"):
            name = line.split(":", 1)[1].strip()
        elif line.startswith("data:"):
            data.append(line.split(":", 1)[1].strip())
        elif line == "" and data:
            yield name, orjson.loads("\n".join(data))
            name, data = "message", []


def follow(http: httpx.Client, pid: str) -> list[tuple[str, Any]]:
    """Every event of one connection to the pipeline's stream, until the server closes it."""
    with http.stream("GET", f"/api/pipelines/{pid}/events", timeout=120) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return list(events_of(response.iter_lines()))


@pytest.mark.slow
def test_the_event_stream_pushes_the_run_until_its_end(folder: Path) -> None:
    (folder / "demo.yaml").write_text(demo_pipeline(count=6000, rate=3000), encoding="utf-8")
    server = Server(folder)
    try:
        idle = follow(server.http, "demo")
        assert [e for e, _ in idle] == ["retry", "run", "end"]
        assert idle[1][1]["status"] == "idle" and idle[2][1] == {"status": "idle", "run_id": None}

        run_id = server.http.post("/api/pipelines/demo/start").json()["id"]
        events = follow(server.http, "demo")
        final = server.http.get(f"/api/runs/{run_id}").json()
        assert final["status"] == "succeeded"

        runs = [data for event, data in events if event == "run"]
        assert runs and all(r["run_id"] == run_id for r in runs)
        read = [r["run"]["records_in"] for r in runs]
        assert read == sorted(read)  # counters only move forward
        assert runs[-1]["status"] == "succeeded" and not runs[-1]["active"]
        assert runs[-1]["run"]["counts"] == final["counts"]
        assert final["counts"]["typed"]["dead_lettered"] == 600
        assert events[-1] == ("end", {"status": "succeeded", "run_id": run_id})

        # The latest tap event of a step holds what the tap route shows at the end.
        taps = {data["step"]: data["records"] for event, data in events if event == "tap"}
        shown = server.http.get("/api/pipelines/demo/tap", params={"step": "typed"}).json()
        assert taps["typed"] == shown["records"] and len(taps["typed"]) == 20
        assert server.http.get("/api/pipelines/nope/events").status_code == 404
    finally:
        server.close()


def test_the_event_stream_needs_the_token_and_takes_the_ui_cookie(folder: Path) -> None:
    token = "stream-token-for-tests"
    with TestClient(create_app(folder, token=token, background=False), base_url=LOCAL) as client:
        assert client.get("/api/pipelines/demo/events").status_code == 401
        client.cookies.set("tideflow_token", token)
        with client.stream("GET", "/api/pipelines/demo/events") as response:
            assert response.status_code == 200
            events = list(events_of(response.iter_lines()))
        assert [e for e, _ in events] == ["retry", "run", "end"]

"""The REST API in-process: pipelines, runs in their own processes, history, dead letters,
metrics, crash isolation and redaction."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from tests.service.conftest import LOCAL, run_to_end, wait_for

from tideflow.service.app import create_app
from tideflow.service.policy import Policy


@pytest.fixture
def client(folder: Path) -> Iterator[TestClient]:
    with TestClient(create_app(folder, tick_seconds=0.2), base_url=LOCAL) as test_client:
        yield test_client


def test_pipelines_are_created_validated_updated_and_deleted(client: TestClient) -> None:
    listed = client.get("/api/pipelines").json()
    assert [p["id"] for p in listed] == ["demo"]
    assert listed[0]["valid"] and listed[0]["status"] == "idle"

    text = "name: other\nsource: {type: generate, count: 5}\nsink: {type: stdout}\n"
    created = client.post("/api/pipelines", json={"yaml": text})
    assert created.status_code == 201, created.text
    assert created.json()["graph"][0] == {
        "name": "generate",
        "kind": "source",
        "type": "generate",
        "inputs": [],
    }
    assert client.post("/api/pipelines", json={"yaml": text}).status_code == 409

    bad = "name: other\nsource:\n  type: generate\n  count: -1\nsinks:\n  - type: stdot\n"
    refused = client.put("/api/pipelines/other", json={"yaml": bad})
    assert refused.status_code == 422
    issues = refused.json()["issues"]
    assert {k: issues[0][k] for k in ("file", "line", "path")} == {
        "file": "other.yaml",
        "line": 4,
        "path": "source.count",
    }
    assert issues[1]["path"] == "sinks[0].type" and "stdout" in issues[1]["message"]
    assert client.get("/api/pipelines/other").json()["yaml"] == text  # the file was kept

    checked = client.post("/api/validate", json={"yaml": bad}).json()
    assert not checked["valid"] and len(checked["issues"]) == 2
    assert client.post("/api/validate", json={"yaml": text}).json()["valid"]

    updated = text.replace("count: 5", "count: 7")
    assert client.put("/api/pipelines/other", json={"yaml": updated}).status_code == 200
    assert "count: 7" in client.get("/api/pipelines/other").json()["yaml"]
    assert client.delete("/api/pipelines/other").json() == {"deleted": "other"}
    assert client.get("/api/pipelines/other").status_code == 404
    assert client.get("/api/pipelines/..%2Fetc").status_code in (404, 422)


def test_a_run_reports_counts_logs_history_tap_and_dead_letters(client: TestClient) -> None:
    run = run_to_end(client, "demo")
    assert run["status"] == "succeeded", run
    assert run["counts"]["typed"]["dead_lettered"] == 300
    assert run["counts"]["file"]["out"] == 2700
    logs = client.get(f"/api/runs/{run['id']}/logs").json()["lines"]
    assert any("succeeded" in line["text"] for line in logs)
    newer = client.get(f"/api/runs/{run['id']}/logs", params={"after": logs[-2]["seq"]}).json()
    assert len(newer["lines"]) == 1

    history = client.get("/api/pipelines/demo/runs").json()
    assert history[0]["id"] == run["id"] and history[0]["status"] == "succeeded"
    assert history[0]["trigger"] == "api"

    tap = client.get("/api/pipelines/demo/tap", params={"step": "typed"}).json()
    assert tap["records"] and set(tap["records"][-1]) == {"id", "code"}

    dead = client.get(
        "/api/pipelines/demo/deadletters", params={"reason": "cannot cast", "limit": 5}
    ).json()
    assert dead["summary"][0]["count"] == 300 and len(dead["records"]) == 5
    assert (
        client.get("/api/pipelines/demo/deadletters", params={"reason": "no such reason"}).json()[
            "records"
        ]
        == []
    )
    ids = [r["id"] for r in dead["records"][:2]]
    replay = client.post(
        "/api/pipelines/demo/deadletters/replay", json={"step": "typed", "ids": ids}
    )
    assert replay.status_code == 201 and replay.json()["kind"] == "replay"
    wait_for(lambda: client.get(f"/api/runs/{replay.json()['id']}").json()["status"] == "succeeded")
    left = client.get("/api/pipelines/demo/deadletters", params={"limit": 5000}).json()["records"]
    assert not {r["id"] for r in left} & set(ids)  # replayed rows leave the default view
    missing = client.post("/api/pipelines/demo/deadletters/replay", json={"step": "nope"})
    assert missing.status_code == 404


def test_runs_of_one_pipeline_never_overlap_and_stop_on_request(
    client: TestClient, folder: Path
) -> None:
    (folder / "endless.yaml").write_text(
        "name: endless\nsource: {type: generate, shape: sequence, rate: 500, batch_size: 50}\n"
        "sink: {type: stdout, max_rows: 1}\n",
        encoding="utf-8",
    )
    started = client.post("/api/pipelines/endless/start")
    assert started.status_code == 201
    assert client.post("/api/pipelines/endless/start").status_code == 409
    run_id = started.json()["id"]
    wait_for(lambda: client.get(f"/api/runs/{run_id}").json()["records_in"] > 0)
    # Another pipeline runs at the same time in its own process.
    assert run_to_end(client, "demo")["status"] == "succeeded"
    listed = {p["id"]: p for p in client.get("/api/pipelines").json()}
    assert listed["endless"]["active"] and listed["endless"]["rate"] > 0
    assert client.post("/api/pipelines/endless/stop").json()["status"] == "stopping"
    wait_for(lambda: client.get(f"/api/runs/{run_id}").json()["status"] == "stopped")
    assert client.post("/api/pipelines/endless/stop").status_code == 409


def test_a_crashing_run_takes_nothing_else_down(folder: Path) -> None:
    app = create_app(folder, tick_seconds=0.2, policy=Policy(allow_python=True))
    with TestClient(app, base_url=LOCAL) as client:
        crash_and_carry_on(client, folder)


def crash_and_carry_on(client: TestClient, folder: Path) -> None:
    """A run whose process dies is `crashed`; the server and other pipelines go on."""
    (folder / "boom.py").write_text(
        "import os\n\ndef explode(record):\n    os._exit(3)\n", encoding="utf-8"
    )
    (folder / "crash.yaml").write_text(
        "name: crash\nsource: {type: generate, shape: sequence, count: 10}\n"
        "steps:\n  - {type: python, function: 'boom.py:explode'}\nsink: {type: stdout}\n",
        encoding="utf-8",
    )
    crashed = run_to_end(client, "crash")
    assert crashed["status"] == "crashed" and "exit code 3" in crashed["error"]
    assert client.get("/api/health").json()["status"] == "ok"
    history = client.get("/api/pipelines/crash/runs").json()
    assert history[0]["status"] == "crashed"
    assert run_to_end(client, "demo")["status"] == "succeeded"


def test_metrics_are_prometheus_text(client: TestClient) -> None:
    run_to_end(client, "demo")
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert (
        'tideflow_records_total{kind="step",outcome="dead_lettered",pipeline="demo",'
        'step="typed"} 300.0' in text
    )
    assert 'tideflow_batch_latency_seconds_bucket{le="0.1",pipeline="demo",source="generate"}' in (
        text
    )
    assert 'tideflow_runs_total{pipeline="demo",status="succeeded"} 1.0' in text
    assert "tideflow_last_record_timestamp_seconds" in text
    state = re.search(r'tideflow_state_store_bytes\{pipeline="demo"\} (\S+)', text)
    assert state is not None and float(state.group(1)) > 0


def test_secrets_never_leave_the_server(client: TestClient, folder: Path) -> None:
    secret = "hunter2-" + str(time.time_ns())
    (folder / "secretive.yaml").write_text(
        "name: secretive\n"
        "description: uses ${API_TOKEN:-" + secret + "}\n"
        "source: {type: generate, shape: sequence, count: 20}\n"
        "steps:\n"
        "  - type: with_columns\n"
        "    columns: {leak: \"'${API_TOKEN:-" + secret + "}'\"}\n"
        "sink: {type: stdout}\n",
        encoding="utf-8",
    )
    run = run_to_end(client, "secretive")
    assert run["status"] == "succeeded"
    bodies = [
        client.get("/api/pipelines").text,
        client.get("/api/pipelines/secretive").text,
        client.get("/api/pipelines/secretive/tap", params={"step": "with_columns"}).text,
        client.get(f"/api/runs/{run['id']}/logs").text,
        client.get("/api/pipelines/secretive/runs").text,
    ]
    echoed = client.post("/api/validate", json={"yaml": 12, "x": secret})
    assert echoed.status_code == 422
    bodies.append(client.post("/api/pipelines", json={"yaml": [secret]}).text)
    tap = client.get("/api/pipelines/secretive/tap", params={"step": "with_columns"}).json()
    assert tap["records"][0]["leak"] == "***"
    for body in bodies:
        assert secret not in body


def test_cors_is_off_and_bodies_are_limited(folder: Path) -> None:
    with TestClient(create_app(folder, max_body=1000, background=False), base_url=LOCAL) as client:
        preflight = client.options(
            "/api/pipelines",
            headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"},
        )
        assert "access-control-allow-origin" not in preflight.headers
        plain = client.get("/api/pipelines", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in plain.headers
        too_big = client.post("/api/validate", json={"yaml": "x" * 5000})
        assert too_big.status_code == 413
        assert client.post("/api/validate", json={"yaml": "name: x"}).status_code == 200

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
            yield b'{"yaml": "'
            for _ in range(10):
                yield b"x" * 500

        chunked = client.post(
            "/api/validate", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert chunked.status_code == 413


def test_the_ui_is_served_with_a_strict_content_security_policy(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and '<script src="/static/app.js"' in page.text
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "unsafe" not in policy
    # The one inline style allowed is the editor's, by a nonce new for every page.
    nonce = re.search(r"style-src 'self' 'nonce-([A-Za-z0-9_-]{24})'", policy)
    assert nonce is not None and f'nonce="{nonce[1]}"' in page.text
    again = client.get("/")
    assert nonce[1] not in again.text and nonce[1] not in again.headers["content-security-policy"]
    # Every file the page loads is the server's own, and is there.
    loaded = re.findall(r'<(?:script|link)[^>]*? (?:src|href)="([^"]+)"', page.text)
    assert loaded and all(url.startswith("/static/") for url in loaded), loaded
    for url in loaded:
        assert client.get(url).status_code == 200, url
    assert "/static/vendor/editor.js" in loaded
    for script in ("/static/app.js", "/static/chart.js"):
        assert "innerHTML" not in client.get(script).text.replace("never innerHTML", "")

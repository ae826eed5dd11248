"""The Grafana dashboard and the Prometheus alert rules in deploy/, checked against real
scrapes and a real Prometheus: every metric they name is exported by a running pipeline
(`tideflow serve`, `tideflow run --metrics-port`, `tideflow run --workers --metrics-port`),
`promtool check rules` passes, every dashboard query is valid PromQL, and the lag alert fires
when a consumer is stopped while its producer goes on."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from tests.service.conftest import Server, demo_pipeline, free_port, run_to_end, wait_for
from tests.service.test_live import metric

from tideflow.connectors.topic.admin import Admin

ROOT = Path(__file__).parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "tideflow.json"
RULES = ROOT / "deploy" / "prometheus" / "alerts.yaml"
CLI = [sys.executable, "-m", "tideflow.cli.main"]

SERVER_ONLY = {"tideflow_group_lag_records", "tideflow_state_store_bytes", "tideflow_runs_total"}
"""Measured by `tideflow serve` alone: group lag from the topic, the state file's size, runs."""
SUPERVISOR_ONLY = {"tideflow_worker_restarts_total", "tideflow_workers_running"}
"""Served by the supervisor of `tideflow run --workers`."""

PRODUCER = """
name: produce
source: {type: generate, shape: rooms, keys: 9, rate: 400, batch_size: 40, seed: 3}
sink: {type: topic, topic: readings, broker: embedded, key: room, partitions: 3}
checkpoint: {every_seconds: 0.5}
"""
"""Unbounded: 400 records a second into a topic of three partitions until stopped."""

CONSUMER = """
name: consume
source: {type: topic, name: read, topic: readings, group: totals, broker: embedded,
         batch_size: 200, partitioned_by: {column: room}}
steps:
  - {type: aggregate, name: totals, keys: [room], aggregations: {people: sum(count)}}
  - {type: cast, name: typed, columns: {room: int}}
sink: {type: file, path: out/totals, format: ndjson}
checkpoint: {every_seconds: 0.5}
"""
"""Reads the topic until stopped; keeps state (totals) and dead-letters every record of its
cast step (room names are not numbers), so every family has samples."""

WORKER = """
name: workers
source: {type: topic, name: read, topic: jobs, group: crew, broker: embedded}
sink: {type: file, path: out/jobs, format: ndjson}
"""


def named_metrics() -> set[str]:
    """Every tideflow metric the dashboard's queries and the alert rules name."""
    text = DASHBOARD.read_text(encoding="utf-8") + RULES.read_text(encoding="utf-8")
    return set(re.findall(r"\btideflow_[a-z_]+\b", text))


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query of the dashboard, Grafana variables filled in."""
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    queries = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", "1m").replace("$pipeline", ".*")
            queries.append((panel["title"], expr))
    return queries


def samples(text: str) -> set[str]:
    """Names of the metrics with at least one sample (not only HELP/TYPE) in a scrape."""
    return {m.group(1) for m in re.finditer(r"^([a-z_]+)[{ ]", text, re.MULTILINE)}


def scrape(url: str) -> str:
    """One scrape of a /metrics endpoint ('' while it is not up)."""
    try:
        response = httpx.get(url, timeout=10)
    except httpx.TransportError:
        return ""
    return response.text if response.status_code == 200 else ""


def require(tool: str) -> str:
    """The path of a Prometheus tool: CI fails without it, elsewhere the test skips."""
    found = shutil.which(tool)
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the monitoring tests: install `{tool}` (package prometheus)")
        pytest.skip(f"`{tool}` is not installed (apt-get install prometheus)")
    return found


def test_the_dashboard_is_a_grafana_dashboard_naming_what_the_issue_asks_for() -> None:
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert board["uid"] == "tideflow" and board["panels"]
    text = " ".join(panel["title"] for panel in board["panels"]).lower()
    for topic in (
        "records/s",
        "dead letters",
        "per partition",
        "end-to-end",
        "state size",
        "checkpoint duration",
        "restarts",
    ):
        assert topic in text, topic
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    assert {v["name"] for v in board["templating"]["list"]} == {"datasource", "pipeline"}


def test_promtool_accepts_the_rules() -> None:
    promtool = require("promtool")
    result = subprocess.run(
        [promtool, "check", "rules", str(RULES)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 6 rules found" in result.stdout + result.stderr


@pytest.fixture
def topic_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "pipelines"
    folder.mkdir()
    (folder / "produce.yaml").write_text(PRODUCER, encoding="utf-8")
    (folder / "consume.yaml").write_text(CONSUMER, encoding="utf-8")
    (folder / "demo.yaml").write_text(demo_pipeline(count=300, rate=3000), encoding="utf-8")
    # Created up front: a consumer that starts first would create it with one partition.
    Admin(None, folder / ".tideflow").create("readings", 3)
    return folder


def wait_status(server: Server, run_id: str, *statuses: str, timeout: float = 60) -> None:
    wait_for(
        lambda: server.http.get(f"/api/runs/{run_id}").json()["status"] in statuses,
        timeout=timeout,
    )


@pytest.mark.slow
def test_every_metric_named_is_exported_by_a_running_pipeline(
    topic_folder: Path, tmp_path: Path
) -> None:
    named = named_metrics()
    assert {
        "tideflow_checkpoint_duration_seconds_bucket",
        "tideflow_group_lag_records",
        "tideflow_source_partition_lag_records",
        "tideflow_worker_restarts_total",
    } <= named

    # 1. `tideflow serve`: a finished run (runs_total), a producer and a stateful consumer.
    server = Server(topic_folder)
    try:
        assert run_to_end(server.http, "demo")["status"] == "succeeded"
        producer = server.http.post("/api/pipelines/produce/start").json()["id"]
        consumer = server.http.post("/api/pipelines/consume/start").json()["id"]
        served: list[str] = []

        def served_all() -> bool:
            served.append(scrape(server.url + "/metrics"))
            return (named - SUPERVISOR_ONLY) <= samples(served[-1])

        try:
            wait_for(served_all, timeout=90, every=0.5)
        finally:
            for run_id in (consumer, producer):
                server.http.post(f"/api/runs/{run_id}/stop")
            for run_id in (consumer, producer):
                wait_status(server, run_id, "stopped", "succeeded")
        text = served[-1]
        parts = {
            labels["partition"]
            for line in text.splitlines()
            if line.startswith("tideflow_group_lag_records{")
            for labels in [dict(re.findall(r'(\w+)="([^"]*)"', line))]
        }
        assert parts == {"0", "1", "2"}
        assert metric(
            text,
            "tideflow_records_total",
            pipeline="consume",
            step="typed",
            outcome="dead_lettered",
        )
        # A stopped run's own lag is gone (nobody measures it); the group lag stays.
        after = scrape(server.url + "/metrics")
        assert metric(after, "tideflow_source_lag_records", pipeline="consume") is None
        assert metric(after, "tideflow_source_partition_lag_records", pipeline="consume") is None
        assert metric(after, "tideflow_group_lag_records", pipeline="consume") is not None
    finally:
        server.close()

    # 2. `tideflow run --metrics-port`: the consumer on its own, the producer beside it.
    port = free_port()
    feed = subprocess.Popen(
        [*CLI, "run", str(topic_folder / "produce.yaml"), "-q"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    run = subprocess.Popen(
        [*CLI, "run", str(topic_folder / "consume.yaml"), "-q", "--metrics-port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    alone: list[str] = []
    try:

        def run_exports_all() -> bool:
            assert run.poll() is None, run.communicate()
            alone.append(scrape(f"http://127.0.0.1:{port}/metrics"))
            return (named - SERVER_ONLY - SUPERVISOR_ONLY) <= samples(alone[-1])

        wait_for(run_exports_all, timeout=90, every=0.5)
    finally:
        for process in (run, feed):
            process.send_signal(signal.SIGTERM)
        _, err = run.communicate(timeout=60)
        _, fed = feed.communicate(timeout=60)
    assert run.returncode == 0, err
    assert feed.returncode == 0, fed
    assert metric(alone[-1], "tideflow_checkpoint_duration_seconds_count", pipeline="consume")

    # 3. `tideflow run --workers 2 --metrics-port P`: the supervisor counts restarts.
    workers = tmp_path / "workers"
    workers.mkdir()
    (workers / "workers.yaml").write_text(WORKER, encoding="utf-8")
    created = subprocess.run(
        [
            *CLI,
            "topics",
            "--state-dir",
            str(workers / ".tideflow"),
            "create",
            "jobs",
            "--partitions",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert created.returncode == 0, created.stderr
    port = free_port()
    supervisor = subprocess.Popen(
        [
            *CLI,
            "run",
            str(workers / "workers.yaml"),
            "-q",
            "--workers",
            "2",
            "--metrics-port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        wait_for(lambda: metric(scrape(url), "tideflow_workers_running") == 2, timeout=90)
        first = psutil.Process(supervisor.pid).children()[0]
        # Kill a worker once its own metrics server is up (it has started its run).
        ports = {port + 1, port + 2}
        wait_for(lambda: all(scrape(f"http://127.0.0.1:{p}/metrics") for p in ports), timeout=90)
        first.kill()
        killed_worker = None

        def restarted() -> bool:
            nonlocal killed_worker
            text = scrape(url)
            for line in text.splitlines():
                if line.startswith("tideflow_worker_restarts_total{") and line.endswith(" 1.0"):
                    killed_worker = dict(re.findall(r'(\w+)="([^"]*)"', line))["worker"]
                    return metric(text, "tideflow_workers_running") == 2
            return False

        wait_for(restarted, timeout=90)
        text = scrape(url)
        assert samples(text) >= SUPERVISOR_ONLY
        restarts = [
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("tideflow_worker_restarts_total{")
        ]
        assert sorted(restarts) == [0.0, 1.0], text
        assert killed_worker is not None
    finally:
        supervisor.send_signal(signal.SIGTERM)
        supervisor.communicate(timeout=60)


class Prometheus:
    """A real Prometheus on a free port, scraping ``targets`` every second and evaluating
    ``rules`` every second."""

    def __init__(self, workdir: Path, targets: list[str], rules: str) -> None:
        binary = require("prometheus")
        workdir.mkdir()
        (workdir / "rules.yaml").write_text(rules, encoding="utf-8")
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": ["rules.yaml"],
            "scrape_configs": [{"job_name": "tideflow", "static_configs": [{"targets": targets}]}],
        }
        (workdir / "prometheus.yml").write_text(json.dumps(config), encoding="utf-8")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (workdir / "prometheus.log").open("w")
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )

        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError((workdir / "prometheus.log").read_text())
            try:
                return httpx.get(self.url + "/-/ready", timeout=5).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, timeout=60)

    def get(self, path: str, **params: str) -> Any:
        response = httpx.get(self.url + path, params=params, timeout=10)
        body = response.json()
        assert body["status"] == "success", body
        return body["data"]

    def alerts(self, name: str) -> list[dict[str, Any]]:
        return [a for a in self.get("/api/v1/alerts")["alerts"] if a["labels"]["alertname"] == name]

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def scaled(rules: str) -> str:
    """The rules with their windows in seconds instead of minutes (10m -> 20s, `for: 10m`
    -> `for: 5s`), so a test sees in a minute what production sees in a quarter hour; the
    expressions and thresholds are the shipped ones."""
    rules = re.sub(r"\[(\d+)m\]", lambda m: f"[{int(m.group(1)) * 2}s]", rules)
    return re.sub(r"for: (\d+)m", lambda m: "for: 5s", rules)


@pytest.fixture
def prometheus_and_server(
    topic_folder: Path, tmp_path: Path
) -> Iterator[tuple[Prometheus, Server]]:
    require("prometheus")
    server = Server(topic_folder)
    prometheus = None
    try:
        target = server.url.removeprefix("http://")
        prometheus = Prometheus(tmp_path / "prometheus", [target], scaled(RULES.read_text()))
        yield prometheus, server
    finally:
        if prometheus is not None:
            prometheus.close()
        server.close()


@pytest.mark.slow
def test_prometheus_fires_the_lag_alert_when_the_consumer_stops(
    prometheus_and_server: tuple[Prometheus, Server],
) -> None:
    prometheus, server = prometheus_and_server

    def target_up() -> bool:
        targets = prometheus.get("/api/v1/targets")["activeTargets"]
        return any(t["health"] == "up" for t in targets)

    wait_for(target_up, timeout=60)
    producer = server.http.post("/api/pipelines/produce/start").json()["id"]
    consumer = server.http.post("/api/pipelines/consume/start").json()["id"]
    try:
        # While the consumer keeps up, Prometheus sees its lag and the alert stays quiet.
        def consumer_seen() -> bool:
            found = prometheus.get(
                "/api/v1/query", query='tideflow_group_lag_records{pipeline="consume"}'
            )["result"]
            read = prometheus.get(
                "/api/v1/query",
                query='tideflow_records_total{pipeline="consume",step="read",outcome="out"}',
            )["result"]
            return len(found) == 3 and bool(read) and float(read[0]["value"][1]) > 2000

        wait_for(consumer_seen, timeout=120, every=1)
        assert prometheus.alerts("TideflowLagGrowing") == []

        # Every dashboard query is valid PromQL that Prometheus evaluates.
        for title, expr in dashboard_queries():
            prometheus.get("/api/v1/query", query=expr)  # asserts status success
            assert title

        server.http.post(f"/api/runs/{consumer}/stop")
        wait_status(server, consumer, "stopped", "succeeded")

        def firing() -> bool:
            return any(
                a["state"] == "firing"
                and a["labels"].get("pipeline") == "consume"
                and a["labels"].get("source") == "read"
                for a in prometheus.alerts("TideflowLagGrowing")
            )

        wait_for(firing, timeout=180, every=1)
        (alert,) = prometheus.alerts("TideflowLagGrowing")
        assert float(alert["value"]) > 1000
        # The producer is the only pipeline running: nothing else is behind.
        assert {a["labels"]["pipeline"] for a in prometheus.alerts("TideflowLagGrowing")} == {
            "consume"
        }
    finally:
        for run_id in (consumer, producer):
            server.http.post(f"/api/runs/{run_id}/stop")
        for run_id in (consumer, producer):
            wait_status(server, run_id, "stopped", "succeeded", "failed")

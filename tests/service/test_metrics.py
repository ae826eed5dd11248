"""Prometheus metrics: counters stay monotonic across runs; `tideflow run --metrics-port`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from tests.service.conftest import demo_pipeline, free_port, wait_for

from tideflow.observe.figures import source_lag
from tideflow.observe.metrics import PipelineMetrics

CLI = [sys.executable, "-m", "tideflow.cli.main"]


def sample(metrics: PipelineMetrics, name: str, **labels: str) -> float | None:
    value = metrics.registry.get_sample_value(name, labels)
    return None if value is None else float(value)


def test_counts_become_monotonic_counters_across_runs() -> None:
    metrics = PipelineMetrics()
    first = {"src": {"kind": "source", "in": 10, "out": 10, "batches": 1, "retries": 2}}
    metrics.progress("p", None, first)
    later = {"src": {"kind": "source", "in": 25, "out": 24, "dead_lettered": 1, "batches": 3}}
    metrics.progress("p", first, later)
    labels = {"pipeline": "p", "step": "src", "kind": "source"}
    assert sample(metrics, "tideflow_records_total", outcome="out", **labels) == 24
    # A new run starts its counts from zero: only growth is added.
    metrics.progress("p", None, {"src": {"kind": "source", "in": 5, "out": 5}})
    assert sample(metrics, "tideflow_records_total", outcome="out", **labels) == 29
    assert sample(metrics, "tideflow_step_metric", pipeline="p", step="src", metric="retries") == 2
    metrics.batch("p", "src", 0.02)
    assert (
        sample(
            metrics, "tideflow_batch_latency_seconds_bucket", pipeline="p", source="src", le="0.025"
        )
        == 1
    )
    metrics.progress("p", None, {"src": {"kind": "source", "out": 1, "lag_seconds": 7.5}})
    assert sample(metrics, "tideflow_source_lag_seconds", pipeline="p", source="src") == 7.5


def test_reported_figures_become_lag_state_and_step_gauges() -> None:
    """The engine puts what components report under `report` (Context.metrics, report())."""
    metrics = PipelineMetrics()
    counts = {
        "src": {
            "kind": "source",
            "out": 10,
            "report": {"lag_records": 42, "lag_seconds": 3.25, "retries": 1},
        },
        "totals": {"kind": "step", "out": 4, "report": {"state_bytes": 1234, "note": "text"}},
    }
    metrics.progress("p", None, counts)
    assert sample(metrics, "tideflow_source_lag_records", pipeline="p", source="src") == 42
    assert sample(metrics, "tideflow_source_lag_seconds", pipeline="p", source="src") == 3.25
    assert sample(metrics, "tideflow_state_bytes", pipeline="p", step="totals") == 1234
    assert sample(metrics, "tideflow_step_metric", pipeline="p", step="src", metric="retries") == 1
    assert source_lag(counts) == (3.25, 42)
    assert source_lag({"totals": counts["totals"]}) == (None, None)

    for seconds in (0.2, 0.7, 40.0):
        metrics.visible("p", "src", seconds)
    bucket = "tideflow_end_to_end_latency_seconds_bucket"
    assert sample(metrics, bucket, pipeline="p", source="src", le="0.25") == 1
    assert sample(metrics, bucket, pipeline="p", source="src", le="1.0") == 2
    assert sample(metrics, bucket, pipeline="p", source="src", le="+Inf") == 3
    total = sample(metrics, "tideflow_end_to_end_latency_seconds_sum", pipeline="p", source="src")
    assert total == pytest.approx(40.9)


def test_run_serves_metrics_on_its_own_port(tmp_path: Path) -> None:
    pipeline = tmp_path / "demo.yaml"
    pipeline.write_text(demo_pipeline(count=6000, rate=1500), encoding="utf-8")
    port = free_port()
    run = subprocess.Popen(
        [*CLI, "run", str(pipeline), "-q", "--metrics-port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: list[str] = []

    def dead_letters_counted() -> bool:
        try:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        except httpx.TransportError:
            return False
        seen.append(text)
        return 'outcome="dead_lettered",pipeline="demo",step="typed"}' in text

    try:
        wait_for(dead_letters_counted, timeout=60)
        assert "tideflow_batch_latency_seconds_count" in seen[-1]
        # The first checkpoint (after 1,000 of 6,000 records) reports end-to-end latencies.
        wait_for(lambda: dead_letters_counted() and end_to_end_observed(seen[-1]), timeout=60)
        assert 'tideflow_pipeline_running{pipeline="demo"} 1.0' in seen[-1]
    finally:
        _, err = run.communicate(timeout=60)
    assert run.returncode == 0, err


def end_to_end_observed(text: str) -> bool:
    """At least one end-to-end latency was observed for the demo's source."""
    for line in text.splitlines():
        if line.startswith('tideflow_end_to_end_latency_seconds_count{pipeline="demo"'):
            return float(line.rsplit(" ", 1)[1]) >= 1
    return False


def test_metrics_port_in_use_is_a_configuration_error(tmp_path: Path) -> None:
    import socket

    pipeline = tmp_path / "demo.yaml"
    pipeline.write_text(demo_pipeline(count=10), encoding="utf-8")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [*CLI, "run", str(pipeline), "--metrics-port", str(port)],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2
    assert f"--metrics-port {port}: cannot listen there" in result.stderr

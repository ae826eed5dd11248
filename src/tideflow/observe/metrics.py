"""Prometheus metrics of pipelines and steps, for the server and for a single run.

Counts arrive as cumulative per-run snapshots (the engine's ``counts()``); the difference to
the previous snapshot is added to monotonic counters, so restarts of a pipeline keep its
``*_total`` series increasing as Prometheus expects. Batch latency (one source batch through
the whole graph) and end-to-end latency (a record's timestamp, or the moment its source read
it, to the commit of the checkpoint that made it visible) are histograms per pipeline and
source. What components report beside their counts (``Context.metrics`` and ``report()``,
under ``report`` in the counts) becomes gauges: a source's ``lag_records`` and
``lag_seconds``, a stateful step's ``state_bytes``, and the rest as ``tideflow_step_metric``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from tideflow.observe.figures import OUTCOMES, figures

LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Histogram buckets for batch latency, in seconds."""
END_TO_END_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)
"""Histogram buckets for end-to-end latency, in seconds: it includes the checkpoint interval
(records wait for the checkpoint that makes them visible) and any backlog."""
CHECKPOINT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Histogram buckets for checkpoint duration, in seconds."""
CONTENT_TYPE = CONTENT_TYPE_LATEST
"""The Prometheus text exposition content type."""


class PipelineMetrics:
    """The metric families of tideflow in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.records = Counter(
            "tideflow_records",
            "Records per pipeline, step and outcome (in, out, filtered, dead_lettered, ...).",
            ["pipeline", "step", "kind", "outcome"],
            registry=self.registry,
        )
        self.batches = Counter(
            "tideflow_batches",
            "Batches handled per step.",
            ["pipeline", "step"],
            registry=self.registry,
        )
        self.step_seconds = Counter(
            "tideflow_step_seconds",
            "Seconds spent inside each step.",
            ["pipeline", "step"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "tideflow_batch_latency_seconds",
            "Seconds for one source batch to pass through the whole pipeline.",
            ["pipeline", "source"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.node_metric = Gauge(
            "tideflow_step_metric",
            "What a component reports beside its counts (retries, outage_seconds, ...).",
            ["pipeline", "step", "metric"],
            registry=self.registry,
        )
        self.end_to_end = Histogram(
            "tideflow_end_to_end_latency_seconds",
            "Seconds from a record's timestamp (or the moment its source read it) to the "
            "commit of the checkpoint that made it visible; one observation per source batch.",
            ["pipeline", "source"],
            buckets=END_TO_END_BUCKETS,
            registry=self.registry,
        )
        self.source_lag = Gauge(
            "tideflow_source_lag_seconds",
            "How far a source reports it is behind in time (only sources that know their lag).",
            ["pipeline", "source"],
            registry=self.registry,
        )
        self.source_lag_records = Gauge(
            "tideflow_source_lag_records",
            "Records a source reports it is behind (topic/kafka: high watermark minus "
            "position, summed over the partitions it owns).",
            ["pipeline", "source"],
            registry=self.registry,
        )
        self.step_state_bytes = Gauge(
            "tideflow_state_bytes",
            "Encoded size of a stateful step's state at the latest checkpoint.",
            ["pipeline", "step"],
            registry=self.registry,
        )
        self.last_record = Gauge(
            "tideflow_last_record_timestamp_seconds",
            "Unix time at which the pipeline last read a record.",
            ["pipeline"],
            registry=self.registry,
        )
        self.state_bytes = Gauge(
            "tideflow_state_store_bytes",
            "Size on disk of the pipeline's SQLite state store (with its write-ahead log).",
            ["pipeline"],
            registry=self.registry,
        )
        self.running = Gauge(
            "tideflow_pipeline_running",
            "1 while a run of the pipeline is active.",
            ["pipeline"],
            registry=self.registry,
        )
        self.runs = Counter(
            "tideflow_runs",
            "Finished runs by status.",
            ["pipeline", "status"],
            registry=self.registry,
        )
        self.partition_lag = Gauge(
            "tideflow_source_partition_lag_records",
            "Records a topic/kafka source is behind on one partition it owns, as it last "
            "measured (the partitions add up to tideflow_source_lag_records).",
            ["pipeline", "source", "topic", "partition"],
            registry=self.registry,
        )
        self.checkpoint_seconds = Histogram(
            "tideflow_checkpoint_duration_seconds",
            "Seconds one checkpoint took: sink flushes, the state store commit, sink commits "
            "and source acknowledgements.",
            ["pipeline"],
            buckets=CHECKPOINT_BUCKETS,
            registry=self.registry,
        )
        self.last_checkpoint = Gauge(
            "tideflow_last_checkpoint_timestamp_seconds",
            "Unix time of the active run's latest committed checkpoint (its start before the "
            "first one).",
            ["pipeline"],
            registry=self.registry,
        )
        self.pending = Gauge(
            "tideflow_records_since_checkpoint",
            "Records the active run has read that no checkpoint covers yet.",
            ["pipeline"],
            registry=self.registry,
        )
        self.worker_restarts = Counter(
            "tideflow_worker_restarts",
            "Times `tideflow run --workers` restarted a worker that failed or was killed.",
            ["pipeline", "worker"],
            registry=self.registry,
        )
        self.workers_running = Gauge(
            "tideflow_workers_running",
            "Worker processes of `tideflow run --workers` alive now.",
            ["pipeline"],
            registry=self.registry,
        )
        self._lag_series: dict[str, set[tuple[Gauge, tuple[str, ...]]]] = {}

    def progress(
        self,
        pipeline: str,
        previous: dict[str, dict[str, Any]] | None,
        counts: dict[str, dict[str, Any]],
    ) -> None:
        """Add what changed between two count snapshots of the same run."""
        before = previous or {}
        read = 0.0
        for step, now in counts.items():
            was = before.get(step, {})
            kind = str(now.get("kind", ""))
            for outcome in OUTCOMES:
                delta = float(now.get(outcome, 0)) - float(was.get(outcome, 0))
                if delta > 0:
                    self.records.labels(pipeline, step, kind, outcome).inc(delta)
                    if kind == "source" and outcome in ("out", "dead_lettered"):
                        read += delta
            delta = float(now.get("batches", 0)) - float(was.get("batches", 0))
            if delta > 0:
                self.batches.labels(pipeline, step).inc(delta)
            delta = float(now.get("seconds", 0)) - float(was.get("seconds", 0))
            if delta > 0:
                self.step_seconds.labels(pipeline, step).inc(delta)
            if kind == "source":
                self._partition_lags(pipeline, step, now)
            for key, value in figures(now).items():
                if key in ("lag", "lag_seconds") and kind == "source":
                    self._lag(self.source_lag, pipeline, (pipeline, step), value)
                elif key == "lag_records" and kind == "source":
                    self._lag(self.source_lag_records, pipeline, (pipeline, step), value)
                elif key == "state_bytes":
                    self.step_state_bytes.labels(pipeline, step).set(value)
                else:
                    self.node_metric.labels(pipeline, step, key).set(value)
        if read:
            self.last_record.labels(pipeline).set(time.time())

    def _lag(self, gauge: Gauge, pipeline: str, labels: tuple[str, ...], value: float) -> None:
        """Set a lag gauge, remembered so that the run's end removes it."""
        gauge.labels(*labels).set(value)
        self._lag_series.setdefault(pipeline, set()).add((gauge, labels))

    def _partition_lags(self, pipeline: str, source: str, node: dict[str, Any]) -> None:
        """Per-partition lag from the source's report; partitions it no longer owns (a
        rebalance gave them away) are removed, not left at their last value."""
        report = node.get("report")
        reported = report.get("lag_partitions") if isinstance(report, dict) else None
        now: set[tuple[str, ...]] = set()
        for key, value in (reported or {}).items():
            topic, _, part = str(key).rpartition(":")
            owned: tuple[str, ...] = (pipeline, source, topic, part)
            self._lag(self.partition_lag, pipeline, owned, float(value))
            now.add(owned)
        kept = self._lag_series.get(pipeline, set())
        for gauge, labels in list(kept):
            if gauge is self.partition_lag and labels[1] == source and labels not in now:
                gauge.remove(*labels)
                kept.discard((gauge, labels))

    def checkpoint_status(self, pipeline: str, last_at: float, pending: int) -> None:
        """The active run's latest checkpoint time and the records no checkpoint covers."""
        self.last_checkpoint.labels(pipeline).set(last_at)
        self.pending.labels(pipeline).set(pending)

    def checkpoint(self, pipeline: str, seconds: float) -> None:
        """Record one committed checkpoint's duration."""
        self.checkpoint_seconds.labels(pipeline).observe(seconds)

    def batch(self, pipeline: str, source: str, seconds: float) -> None:
        """Record one batch's latency."""
        self.latency.labels(pipeline, source).observe(seconds)

    def visible(self, pipeline: str, source: str, seconds: float) -> None:
        """Record one source batch's end-to-end latency."""
        self.end_to_end.labels(pipeline, source).observe(seconds)

    def run_started(self, pipeline: str) -> None:
        """A run became active."""
        self.running.labels(pipeline).set(1)

    def run_finished(self, pipeline: str, status: str) -> None:
        """A run ended with ``status``. The lag its sources reported is removed: nobody
        measures it any more (the server's group lag goes on for topic sources)."""
        self.running.labels(pipeline).set(0)
        self.runs.labels(pipeline, status).inc()
        for gauge, labels in self._lag_series.pop(pipeline, set()):
            gauge.remove(*labels)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


@dataclass
class RunHooks:
    """The engine hooks that feed a single run's metrics."""

    on_progress: Callable[[Any], None]
    on_batch: Callable[[str, int, float], None]
    on_visible: Callable[[str, float], None]
    on_checkpoint_seconds: Callable[[int, float], None]


def serve_metrics(port: int, host: str = "127.0.0.1") -> tuple[PipelineMetrics, Any]:
    """A registry of tideflow metrics served on ``http://host:port/metrics``; returns it and
    the server (``shutdown()`` stops it)."""
    from prometheus_client import start_http_server

    metrics = PipelineMetrics()
    server, _ = start_http_server(port, addr=host, registry=metrics.registry)
    return metrics, server


def run_hooks(metrics: PipelineMetrics, pipeline: str) -> RunHooks:
    """The engine hooks that feed ``metrics`` from one run of ``pipeline`` (several runs,
    of several pipelines, may share one registry)."""
    metrics.run_started(pipeline)
    last: dict[str, dict[str, Any]] = {}

    def on_progress(engine: Any) -> None:
        counts = engine.counts()
        metrics.progress(pipeline, last.copy(), counts)
        metrics.checkpoint_status(pipeline, engine.last_checkpoint_at, engine.pending_records)
        last.clear()
        last.update({k: dict(v) for k, v in counts.items()})

    def on_batch(source: str, records: int, seconds: float) -> None:
        metrics.batch(pipeline, source, seconds)

    def on_visible(source: str, seconds: float) -> None:
        metrics.visible(pipeline, source, seconds)

    def on_checkpoint_seconds(checkpoint: int, seconds: float) -> None:
        metrics.checkpoint(pipeline, seconds)

    return RunHooks(on_progress, on_batch, on_visible, on_checkpoint_seconds)


def run_metrics(pipeline: str) -> tuple[PipelineMetrics, RunHooks]:
    """The metrics of a single ``tideflow run`` and the engine hooks that feed them.

    ``tideflow run --metrics-port`` serves :meth:`PipelineMetrics.render` at ``/metrics``
    (beside ``/healthz`` and ``/readyz``, :mod:`tideflow.observe.health`).
    """
    metrics = PipelineMetrics()
    return metrics, run_hooks(metrics, pipeline)

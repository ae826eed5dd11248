"""Consumer-group lag of the server's pipelines, measured from the topic, not the consumer.

A consumer reports its own lag while it runs (``tideflow_source_lag_records``); a consumer
that has stopped or hangs reports nothing, which is exactly when the lag matters. The server
knows every pipeline's topic sources, so at each scrape it reads, per partition, the topic's
last stable offset and the group's committed offset from the embedded log and exports the
difference as ``tideflow_group_lag_records``, whether or not the pipeline runs. Group offsets
are committed after each checkpoint, so this figure also counts what was read but not yet
checkpointed.

Only the embedded log is measured here: asking Kafka brokers on every scrape would make a
scrape as slow as the slowest broker. For Kafka, the running consumer's gauges and a
broker-side lag exporter give the same picture (see docs/operate.md).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client.core import GaugeMetricFamily

from tideflow.secrets import redact
from tideflow.service.catalog import Catalog

log = logging.getLogger("tideflow.service")

LABELS = ["pipeline", "source", "group", "topic", "partition"]
"""Labels of ``tideflow_group_lag_records``."""


def state_dir(location: str | None, base: Path) -> Path:
    """The folder holding a pipeline's state and embedded topic log (as the engine puts it:
    beside a SQLite state store, ``.tideflow/`` beside the file for PostgreSQL state)."""
    from tideflow.state.locate import state_path

    if location and "://" in location:
        return base / ".tideflow"
    return state_path(location, base).parent


def embedded_sources(spec: Any) -> Iterator[tuple[str, str, list[str], bool]]:
    """(source name, group, topics, starts at the end) of every ``topic`` source that reads
    the embedded log (no ``broker``, and none from ``KAFKA_BROKER``)."""
    from tideflow.connectors.topic.settings import resolve_broker

    for source in spec.all_sources:
        if source.type != "topic":
            continue
        try:
            if resolve_broker(source.broker) is not None:
                continue
        except Exception:  # noqa: BLE001 - an invalid broker is the pipeline's error, not ours
            continue
        topics = [source.topic] if isinstance(source.topic, str) else list(source.topic)
        yield str(source.name), str(source.group), topics, source.start == "latest"


class GroupLagCollector:
    """A Prometheus collector of the group lag of every pipeline in the catalog."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def describe(self) -> list[GaugeMetricFamily]:
        """The family, without reading any log (called at registration)."""
        return [self._family()]

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "tideflow_group_lag_records",
            "Messages of a partition that a pipeline's consumer group has not committed "
            "(last stable offset minus committed offset), read by the server from the "
            "embedded log whether or not the pipeline runs.",
            labels=LABELS,
        )

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Measure every pipeline's embedded topic sources now."""
        family = self._family()
        for entry in self.catalog.entries():
            if entry.spec is None:
                continue
            sources = list(embedded_sources(entry.spec))
            if not sources:
                continue
            path = state_dir(entry.spec.state, entry.path.parent) / "topics.db"
            if not path.exists():
                continue  # nothing written yet; a scrape never creates a log
            try:
                self._measure(family, entry.name, path, sources)
            except Exception as exc:  # noqa: BLE001 - one bad log must not fail the scrape
                log.warning("group lag of %s unavailable: %s", entry.name, redact(str(exc)))
        yield family

    @staticmethod
    def _measure(
        family: GaugeMetricFamily,
        pipeline: str,
        path: Path,
        sources: list[tuple[str, str, list[str], bool]],
    ) -> None:
        from tideflow.topics.embedded import open_log

        topic_log = open_log(path)
        known = set(topic_log.topics())
        for name, group, topics, from_end in sources:
            for topic in topics:
                if topic not in known:
                    continue
                ends = topic_log.stable_ends(topic)
                committed = topic_log.committed(group, topic)
                starts = topic_log.describe(topic).start_offsets
                for part, end in sorted(ends.items()):
                    if part not in committed and from_end:
                        continue  # a new group starting at the end: no backlog to speak of
                    # What retention removed can never be read: it is not lag.
                    done = max(committed.get(part, 0), starts.get(part, 0))
                    labels = [pipeline, name, group, topic, str(part)]
                    family.add_metric(labels, float(max(end - done, 0)))

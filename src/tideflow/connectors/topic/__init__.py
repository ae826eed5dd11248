"""``topic`` and ``kafka`` sources and sinks.

A ``topic`` lives in the embedded log (``.tideflow/topics.db`` beside the pipeline) unless a
broker is configured — ``broker: kafka://host:port`` or ``KAFKA_BROKER`` in the environment —
so the same pipeline file moves from a laptop to Kafka by configuration alone. ``kafka`` is the
same connector with Kafka's own settings (topic patterns, offset reset, librdkafka options for
TLS and SASL) and always talks to Kafka.

Delivery: sources commit group offsets only after the checkpoint that covers them, and start
from the checkpoint when it is ahead of the group, so output written through a two-phase sink
(files, a transactional SQL table) holds every message exactly once across crashes. On Kafka
they read with ``isolation.level=read_committed`` by default. The ``topic`` sink on the
embedded log is transactional (messages become visible at the checkpoint); on Kafka it is
exactly-once by default (``exactly_once``): each checkpoint's messages are stored in the
checkpoint and then produced in one Kafka transaction, with the consumed offsets of a Kafka
source on the same cluster (``connectors/kafka/exactly_once.py``); ``exactly_once: false``
gives an idempotent producer that is at-least-once across a crash.

Modules: ``settings`` (the settings models and ``resolve_broker``, which reads the ``broker``
setting), ``source``, ``sink``, and ``admin`` (topic administration on either backend). The
backends live with their systems: the embedded log and the interface both backends implement in
:mod:`tideflow.topics`, Kafka in :mod:`tideflow.connectors.kafka` (also home of the ``kafka``
source and sink, subclasses of these). Choosing between the backends is done here, in the
components layer, the lowest that may know both.
"""

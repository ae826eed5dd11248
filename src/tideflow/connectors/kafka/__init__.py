"""Kafka: everything that talks to a Kafka broker, through confluent-kafka (librdkafka).

- ``client``: the connection settings (bootstrap servers, ``KAFKA_BROKER``, librdkafka options
  such as TLS and SASL) and the librdkafka configuration built from them; confluent-kafka is
  imported only when a client is made.
- ``consumer`` and ``producer``: the Kafka backend of the topic connectors (the
  ``Consumer``/``Producer`` protocols of :mod:`tideflow.topics.backends`).
- ``transactions``, ``outbox`` and ``exactly_once``: the exactly-once producer (a transactional
  outbox stored in the checkpoint, read-back recovery).
- ``admin``: topic administration on Kafka (``tideflow topics``, the Stream API).
- ``source`` and ``sink``: the ``kafka`` source and sink.

The embedded topic log and what both backends share live in :mod:`tideflow.topics`; the
``topic`` connector, which picks one of the backends from its ``broker`` setting, in
:mod:`tideflow.connectors.topic`.
"""

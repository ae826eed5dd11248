"""The ``topic`` source and sink: a topic on the embedded log or on Kafka, chosen by the
``broker`` setting (``settings.resolve_broker``), and topic administration on either
(``admin.Admin``).

The backends themselves live with their systems: the embedded log and the interface both
implement in :mod:`tideflow.topics`, Kafka in :mod:`tideflow.connectors.kafka`. Choosing
between them is done here, in the components layer, because only this layer may know both.
"""

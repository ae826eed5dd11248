"""Time-series steps: event-time windows, running aggregates, dedupe, interpolation,
outlier detection and normalisation. One module per step family; shared event-time and
aggregation machinery lives in ``_common`` and ``aggs``."""

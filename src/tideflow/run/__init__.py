"""Running pipelines: from a validated spec to an engine (``plan``)."""

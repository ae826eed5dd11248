"""Running pipelines: from a validated spec to an engine (``plan``), the variants of a run
(``runner``: plain, preview, replay, test) and the supervisor of group workers (``workers``)."""

"""The public test kit: run a pipeline on given records and look at what each step produced.

::

    from tideflow.testing import run_pipeline

    out = run_pipeline("pipeline.yaml", records=[{"temp_c": 30}])
    assert out.at("convert")["temp_f"].to_list() == [86.0]

The ``memory`` source and sink are the kit's components: :func:`memory` builds either (as do
``tf.records`` and ``tf.collect``), :func:`collected` reads what a memory sink committed.
They run like any type but are not offered to users (``tideflow connectors``, suggestions,
the reference). :mod:`tideflow.testing.fake_api` is a demo HTTP API on loopback.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from tideflow.connectors.memory import clear, collected
from tideflow.core.result import RunResult
from tideflow.errors import ConfigError
from tideflow.pipeline import Pipeline, as_records
from tideflow.run.runner import TestOutcome, run_with_records
from tideflow.spec.loader import load_pipeline
from tideflow.spec.models import PipelineSpec

__all__ = ["PipelineRun", "clear", "collected", "memory", "run_pipeline"]


def memory(
    *,
    records: Sequence[Mapping[str, Any]] | pl.DataFrame | None = None,
    batch_size: int | None = None,
    collector: str | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """The ``memory`` source (give ``records``, and ``batch_size``, records per batch,
    default 10,000) or sink (give ``collector``, read it with :func:`collected`), as the
    settings dict ``Pipeline.source()`` / ``Pipeline.sink()`` take; ``name`` defaults to the
    type. Only the arguments given are set. Was ``tideflow.memory``."""
    given = {"records": records, "batch_size": batch_size, "collector": collector, "name": name}
    return {"type": "memory", **{key: value for key, value in given.items() if value is not None}}


class PipelineRun:
    """Outputs of a test run by step or sink name, and the run's counts."""

    def __init__(self, outcome: TestOutcome) -> None:
        self.outputs = outcome.outputs
        self.result: RunResult = outcome.result

    def at(self, name: str) -> pl.DataFrame:
        """Records produced by a step (``step`` or ``step.port``) or committed to a sink."""
        if name not in self.outputs:
            return pl.DataFrame()
        return self.outputs[name]


def run_pipeline(
    pipeline: str | Path | Pipeline | PipelineSpec,
    records: Any,
    base_dir: str | Path | None = None,
) -> PipelineRun:
    """Run with sources replaced by ``records`` and sinks by in-memory collectors.

    ``records`` is what :func:`tideflow.records` takes (a list of dicts, a Polars or pandas
    DataFrame, an Arrow table) for a single-source pipeline, or a mapping of source name to
    such records. No state is kept and no real sink is written.
    """
    if isinstance(pipeline, str | Path):
        spec = load_pipeline(pipeline)
        base = Path(pipeline).resolve().parent
    else:
        spec = pipeline.build() if isinstance(pipeline, Pipeline) else pipeline
        base = Path(base_dir or ".").resolve()
    if not isinstance(records, Mapping):
        if len(spec.all_sources) != 1:
            raise ConfigError("this pipeline has several sources: pass records by source name")
        records = {spec.all_sources[0].name or "": records}
    given = {name: as_records(rows) for name, rows in records.items()}
    return PipelineRun(run_with_records(spec, base, given))

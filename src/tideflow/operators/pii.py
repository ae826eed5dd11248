"""The ``pii`` step (being written)."""

from __future__ import annotations

import polars as pl
from pydantic import Field

from tideflow.core.contracts import Step, StepOutput
from tideflow.registry import component
from tideflow.spec.models import Settings


class PiiConfig(Settings):
    """Settings of ``pii``."""

    detect: str = Field("none", description="placeholder")


@component("step", "pii")
class Pii(Step):
    """Detect and mask personal data."""

    config_model = PiiConfig

    def process(self, batch: pl.DataFrame) -> StepOutput:
        """Pass through."""
        return StepOutput.of(batch)

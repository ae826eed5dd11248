"""The ``stdout`` sink: records as a table or as JSON lines on standard output."""

from __future__ import annotations

import sys
from typing import Any, Literal

import polars as pl
from pydantic import Field

from tideflow.core.contracts import Context, Sink
from tideflow.core.settings import Settings
from tideflow.registry import component


class StdoutConfig(Settings):
    """Settings of ``stdout``."""

    format: Literal["table", "jsonl"] = Field("table", description="`table` or `jsonl`.")
    max_rows: int = Field(20, ge=1, description="table: rows shown per batch.")


@component("sink", "stdout")
class Stdout(Sink[StdoutConfig]):
    """Print records to standard output (a display, not a durable sink)."""

    config_model = StdoutConfig

    def open(self, ctx: Context, pending: Any) -> None:
        """Nothing to recover: printed output is not transactional."""

    def write_batch(self, batch: pl.DataFrame) -> None:
        """Print the batch."""
        if self.config.format == "jsonl":
            sys.stdout.write(batch.write_ndjson())
        else:
            with pl.Config(tbl_rows=self.config.max_rows, tbl_cols=-1, tbl_width_chars=160):
                sys.stdout.write(f"{batch}\n")
        sys.stdout.flush()

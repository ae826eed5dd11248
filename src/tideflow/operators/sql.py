"""The ``sql`` step: a SQL query over the incoming batch, exposed as the table ``batch``."""

from __future__ import annotations

from typing import Any, Literal

import polars as pl
from pydantic import Field

from tideflow.core.contracts import Context, Step, StepOutput
from tideflow.errors import ConfigError, PipelineError
from tideflow.registry import component
from tideflow.spec.models import Settings


class SqlConfig(Settings):
    """Settings of ``sql``."""

    query: str = Field(
        description="A SELECT over the table `batch` (the incoming records), e.g. "
        "`SELECT room, count(*) AS n FROM batch GROUP BY room`. Runs per batch."
    )
    engine: Literal["duckdb", "polars"] = Field(
        "duckdb", description="`duckdb` (full SQL) or `polars` (Polars SQL, no extra engine)."
    )


@component("step", "sql")
class Sql(Step):
    """Run a SQL query over each batch (DuckDB or Polars SQL)."""

    config_model = SqlConfig

    def __init__(self, config: SqlConfig) -> None:
        super().__init__(config)
        self._duck: Any = None
        if "batch" not in config.query.lower():
            raise ConfigError("sql.query: the query must read from the table `batch`")

    def open(self, ctx: Context, state: Any) -> None:
        """Open a private DuckDB connection (one per step, so steps never share tables)."""
        if self.config.engine == "duckdb":
            import duckdb

            self._duck = duckdb.connect()

    def process(self, batch: pl.DataFrame) -> StepOutput:
        """Run the query; the output may have any number of rows and columns."""
        try:
            if self._duck is not None:
                arrow = batch.to_arrow()
                self._duck.register("batch", arrow)
                try:
                    result = self._duck.sql(self.config.query).pl()
                finally:
                    self._duck.unregister("batch")
            else:
                result = pl.SQLContext(batch=batch, eager=True).execute(self.config.query)
        except Exception as exc:  # noqa: BLE001 - both engines raise many types
            raise PipelineError(f"sql: the query failed: {exc}") from None
        return StepOutput.reshaped(result, batch.height)

    def close(self) -> None:
        """Close the DuckDB connection."""
        if self._duck is not None:
            self._duck.close()
            self._duck = None

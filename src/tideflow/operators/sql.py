"""The ``sql`` step: a SQL query over the incoming batch, exposed as the table ``batch``."""

from __future__ import annotations

import json
from functools import cache
from typing import Any, Literal

import polars as pl
from pydantic import Field

from tideflow.core.contracts import MAIN_PORT, Context, Step, StepOutput
from tideflow.core.settings import Settings
from tideflow.errors import ConfigError, PipelineError
from tideflow.registry import component


class SqlConfig(Settings):
    """Settings of ``sql``."""

    query: str = Field(
        description="A SELECT over the table `batch` (the incoming records), e.g. "
        "`SELECT room, count(*) AS n FROM batch GROUP BY room`. Runs per batch."
    )
    engine: Literal["duckdb", "polars"] = Field(
        "duckdb", description="`duckdb` (full SQL) or `polars` (Polars SQL, no extra engine)."
    )


@cache
def _aggregate_names() -> frozenset[str]:
    import duckdb

    with duckdb.connect() as conn:
        rows = conn.execute(
            "SELECT DISTINCT function_name FROM duckdb_functions() "
            "WHERE function_type = 'aggregate'"
        ).fetchall()
    return frozenset(str(name).lower() for (name,) in rows) | {"count_star"}


def _calls_aggregate(node: Any, names: frozenset[str]) -> bool:
    """True when an expression of the parsed query calls an aggregate function outside a
    window (``OVER``) or a subquery (those keep one row per input row)."""
    if isinstance(node, list):
        return any(_calls_aggregate(item, names) for item in node)
    if not isinstance(node, dict) or node.get("class") in ("WINDOW", "SUBQUERY"):
        return False
    if node.get("class") == "FUNCTION" and str(node.get("function_name", "")).lower() in names:
        return True
    return any(_calls_aggregate(v, names) for v in node.values() if isinstance(v, (dict, list)))


def aggregates(query: str) -> bool:
    """True when ``query`` merges rows: GROUP BY, DISTINCT or an aggregate in its SELECT
    list. Its input then counts as ``consumed`` ("aggregated" in the summary) and its rows as
    created, rather than every missing row as filtered. A query that does not parse counts as
    not aggregating (its error shows when it runs)."""
    import duckdb

    try:
        with duckdb.connect() as conn:
            text = conn.execute("SELECT json_serialize_sql(?)", [query]).fetchall()[0][0]
        tree = json.loads(text)
    except (duckdb.Error, ValueError, IndexError):
        return False
    if tree.get("error") or not tree.get("statements"):
        return False
    node = tree["statements"][0].get("node", {})
    if node.get("type") != "SELECT_NODE":
        return False  # set operations (UNION ...) and the like: leave them as reshaping
    if node.get("group_expressions") or node.get("group_sets"):
        return True
    if any(m.get("type") == "DISTINCT_MODIFIER" for m in node.get("modifiers", [])):
        return True
    return _calls_aggregate(node.get("select_list", []), _aggregate_names())


@component("step", "sql")
class Sql(Step[SqlConfig]):
    """Run a SQL query over each batch (DuckDB or Polars SQL)."""

    config_model = SqlConfig

    def __init__(self, config: SqlConfig) -> None:
        super().__init__(config)
        self._duck: Any = None
        if "batch" not in config.query.lower():
            raise ConfigError("sql.query: the query must read from the table `batch`")
        self._aggregates = aggregates(config.query)

    def open(self, ctx: Context, state: Any) -> None:
        """Open a private DuckDB connection (one per step, so steps never share tables)."""
        if self.config.engine == "duckdb":
            import duckdb

            from tideflow.sandbox import duckdb_config

            # A server's policy may forbid file access from SQL (tideflow serve).
            self._duck = duckdb.connect(config=duckdb_config())

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
        if self._aggregates:
            # Every input row went into the groups; the rows out are new ones.
            return StepOutput(
                outputs={MAIN_PORT: result}, consumed=batch.height, generated=result.height
            )
        return StepOutput.reshaped(result, batch.height)

    def close(self) -> None:
        """Close the DuckDB connection."""
        if self._duck is not None:
            self._duck.close()
            self._duck = None

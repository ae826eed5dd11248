"""SQL-like expressions (``amount > 0 and country != 'US'``) compiled to Polars expressions."""

from __future__ import annotations

import polars as pl

from tideflow.errors import ConfigError


def compile_expr(text: str, where: str) -> pl.Expr:
    """Compile a SQL expression; ``where`` names the field for the error message."""
    try:
        return pl.sql_expr(text)
    except Exception as exc:  # noqa: BLE001 - Polars raises several types for bad SQL
        raise ConfigError(f"{where}: not a valid SQL expression {text!r}: {exc}") from None


def condition_mask(frame: pl.DataFrame, condition: pl.Expr) -> pl.Series:
    """Evaluate a boolean condition; NULL counts as false, like SQL's WHERE."""
    return frame.select(condition.fill_null(False).cast(pl.Boolean)).to_series()

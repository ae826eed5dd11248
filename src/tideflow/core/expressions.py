"""SQL-like expressions (``amount > 0 and country != 'US'``) compiled to Polars expressions."""

from __future__ import annotations

from typing import Annotated

import polars as pl
from pydantic import AfterValidator

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


def _check_sql(text: str) -> str:
    try:
        pl.sql_expr(text)
    except Exception as exc:  # noqa: BLE001 - Polars raises several types for bad SQL
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"not a valid SQL expression ({message})") from None
    return text


SqlExpression = Annotated[str, AfterValidator(_check_sql)]
"""A config field holding a SQL expression, checked when the pipeline file is validated."""

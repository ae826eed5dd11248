"""Column and row steps: select, rename, drop, cast, filter, with_columns, route.

All are vectorised Polars expressions over the whole batch.
"""

from __future__ import annotations

from typing import Any

import polars as pl
from pydantic import Field, field_validator

from tideflow.core.contracts import MAIN_PORT, Step, StepOutput, dead_letters
from tideflow.core.expressions import SqlExpression, compile_expr, condition_mask
from tideflow.errors import PipelineError
from tideflow.registry import component, suggest
from tideflow.spec.models import Settings


def _require_columns(frame: pl.DataFrame, columns: list[str], step: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        hints = "; ".join(f"{c!r}: {suggest(c, frame.columns)}" for c in missing)
        raise PipelineError(f"{step}: column(s) not in the batch: {hints}")


class SelectConfig(Settings):
    """Settings of ``select``."""

    columns: list[str] = Field(min_length=1, description="Columns to keep, in this order.")


@component("step", "select")
class Select(Step):
    """Keep only the listed columns."""

    config_model = SelectConfig

    def process(self, batch: pl.DataFrame) -> StepOutput:
        """Project the batch."""
        _require_columns(batch, self.config.columns, "select")
        return StepOutput.of(batch.select(self.config.columns))


class RenameConfig(Settings):
    """Settings of ``rename``."""

    columns: dict[str, str] = Field(min_length=1, description="Old name -> new name.")


@component("step", "rename")
class Rename(Step):
    """Rename columns."""

    config_model = RenameConfig

    def process(self, batch: pl.DataFrame) -> StepOutput:
        """Rename the batch's columns."""
        _require_columns(batch, list(self.config.columns), "rename")
        return StepOutput.of(batch.rename(self.config.columns))


class DropConfig(Settings):
    """Settings of ``drop``."""

    columns: list[str] = Field(min_length=1, description="Columns to remove.")
    strict: bool = Field(True, description="Fail when a listed column is not in the batch.")


@component("step", "drop")
class Drop(Step):
    """Remove columns."""

    config_model = DropConfig

    def process(self, batch: pl.DataFrame) -> StepOutput:
        """Drop the listed columns."""
        if self.config.strict:
            _require_columns(batch, self.config.columns, "drop")
        return StepOutput.of(batch.drop(self.config.columns, strict=False))


TYPE_NAMES: dict[str, Any] = {
    "int": pl.Int64,
    "int8": pl.Int8,
    "int16": pl.Int16,
    "int32": pl.Int32,
    "int64": pl.Int64,
    "uint8": pl.UInt8,
    "uint16": pl.UInt16,
    "uint32": pl.UInt32,
    "uint64": pl.UInt64,
    "float": pl.Float64,
    "float32": pl.Float32,
    "float64": pl.Float64,
    "double": pl.Float64,
    "str": pl.String,
    "string": pl.String,
    "text": pl.String,
    "bool": pl.Boolean,
    "boolean": pl.Boolean,
    "date": pl.Date,
    "time": pl.Time,
    "datetime": pl.Datetime("us"),
    "timestamp": pl.Datetime("us"),
    "datetime_ms": pl.Datetime("ms"),
    "datetime_ns": pl.Datetime("ns"),
    "datetime_utc": pl.Datetime("us", "UTC"),
    "timestamptz": pl.Datetime("us", "UTC"),
    "decimal": pl.Decimal(38, 9),
}


def parse_type(name: str) -> Any:
    """A Polars dtype from a type name such as ``int``, ``float32`` or ``datetime_utc``."""
    key = name.strip().lower()
    if key not in TYPE_NAMES:
        raise ValueError(f"unknown type {name!r}; {suggest(key, TYPE_NAMES)}")
    return TYPE_NAMES[key]


class CastConfig(Settings):
    """Settings of ``cast``."""

    columns: dict[str, str] = Field(
        min_length=1,
        description="Column -> type (int, int32, float, string, bool, date, datetime, "
        "datetime_utc, decimal, ...).",
    )
    formats: dict[str, str] = Field(
        default_factory=dict,
        description="Column -> strftime format for parsing text into dates and times.",
    )
    strict: bool = Field(
        True,
        description="A value that cannot be converted sends its record to the dead-letter "
        "sink; with false it becomes null.",
    )

    @field_validator("columns")
    @classmethod
    def _known_types(cls, value: dict[str, str]) -> dict[str, str]:
        for type_name in value.values():
            parse_type(type_name)
        return value


@component("step", "cast")
class Cast(Step):
    """Convert columns to other types; failures are dead-lettered with the value and type."""

    config_model = CastConfig

    def __init__(self, config: CastConfig) -> None:
        super().__init__(config)
        self.targets = {col: parse_type(t) for col, t in config.columns.items()}

    def _convert(self, batch: pl.DataFrame, col: str, dtype: Any) -> pl.Expr:
        source = batch.schema[col]
        fmt = self.config.formats.get(col)
        expr = pl.col(col)
        if (source == pl.String and dtype in (pl.Date, pl.Time)) or (
            source == pl.String and isinstance(dtype, pl.Datetime)
        ):
            if dtype == pl.Date:
                return expr.str.to_date(fmt, strict=False)
            if dtype == pl.Time:
                return expr.str.to_time(fmt, strict=False)
            unit = dtype.time_unit
            # Polars 2 parses a UTC offset ("...+02:00") only when given a time zone.
            aware = expr.str.to_datetime(fmt, strict=False, time_unit=unit, time_zone="UTC")
            if dtype.time_zone:
                return aware.dt.convert_time_zone(dtype.time_zone)
            naive = expr.str.to_datetime(fmt, strict=False, time_unit=unit)
            return pl.coalesce(naive, aware.dt.replace_time_zone(None))
        if source == pl.String and dtype == pl.Boolean:
            lowered = expr.str.to_lowercase().str.strip_chars()
            return (
                pl.when(lowered.is_in(["true", "t", "yes", "y", "1"]))
                .then(True)
                .when(lowered.is_in(["false", "f", "no", "n", "0"]))
                .then(False)
                .otherwise(None)
            )
        if source == pl.String and dtype.is_numeric():
            expr = expr.str.strip_chars()
        return expr.cast(dtype, strict=False)

    def process(self, batch: pl.DataFrame) -> StepOutput:
        """Cast; rows where a non-null value became null failed and are dead-lettered."""
        _require_columns(batch, list(self.targets), "cast")
        converted = {
            col: self._convert(batch, col, dtype).alias(col) for col, dtype in self.targets.items()
        }
        result = batch.with_columns(converted.values())
        if not self.config.strict:
            return StepOutput.of(result)
        failed = pl.lit(False)
        reason: pl.Expr = pl.lit(None, dtype=pl.String)
        for col, dtype in reversed(list(self.targets.items())):
            bad = pl.col(col).is_not_null() & pl.col(f"__cast_{col}").is_null()
            failed = failed | bad
            reason = (
                pl.when(bad)
                .then(
                    pl.format(
                        "cannot cast {} value {} to {}",
                        pl.lit(col),
                        pl.col(col).cast(pl.String),
                        pl.lit(str(dtype)),
                    )
                )
                .otherwise(reason)
            )
        check = batch.with_columns([e.alias(f"__cast_{c}") for c, e in converted.items()]).select(
            failed.alias("failed"), reason.alias("reason")
        )
        mask = check.get_column("failed")
        if not mask.any():
            return StepOutput.of(result)
        dead = dead_letters(batch.filter(mask), "").with_columns(
            check.get_column("reason").filter(mask).alias("reason")
        )
        return StepOutput(outputs={MAIN_PORT: result.filter(~mask)}, dead=dead)


class FilterConfig(Settings):
    """Settings of ``filter``."""

    expr: SqlExpression = Field(
        description="SQL condition; records where it is true are kept "
        "(e.g. `amount > 0 and country != 'US'`). NULL counts as false."
    )


@component("step", "filter")
class Filter(Step):
    """Keep records matching a SQL condition; the others are counted as filtered."""

    config_model = FilterConfig

    def __init__(self, config: FilterConfig) -> None:
        super().__init__(config)
        self.condition = compile_expr(config.expr, "filter.expr")

    def process(self, batch: pl.DataFrame) -> StepOutput:
        """Apply the condition."""
        kept = batch.filter(self.condition.fill_null(False))
        return StepOutput.of(kept, filtered=batch.height - kept.height)


class WithColumnsConfig(Settings):
    """Settings of ``with_columns``."""

    columns: dict[str, SqlExpression] = Field(
        min_length=1,
        description="New or replaced column -> SQL expression over the batch "
        "(e.g. `temp_f: temp_c * 9 / 5 + 32`).",
    )


@component("step", "with_columns")
class WithColumns(Step):
    """Add or replace columns computed from SQL expressions."""

    config_model = WithColumnsConfig

    def __init__(self, config: WithColumnsConfig) -> None:
        super().__init__(config)
        self.exprs = [
            compile_expr(text, f"with_columns.columns.{name}").alias(name)
            for name, text in config.columns.items()
        ]

    def process(self, batch: pl.DataFrame) -> StepOutput:
        """Compute the columns."""
        return StepOutput.of(batch.with_columns(self.exprs))


class RouteConfig(Settings):
    """Settings of ``route``."""

    routes: dict[str, SqlExpression] = Field(
        min_length=1,
        description="Output name -> SQL condition. A record goes to the first route it "
        "matches; read a route with `input: <step>.<route>`.",
    )
    default: str | None = Field(
        None,
        description="Output for records matching no route; without it they count as filtered.",
    )

    @field_validator("routes")
    @classmethod
    def _names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not name.isidentifier():
                raise ValueError(f"route name {name!r} must be a plain identifier")
        return value


@component("step", "route")
class Route(Step):
    """Send each record to the first output whose condition it matches."""

    config_model = RouteConfig

    @classmethod
    def ports(cls, config: Any) -> tuple[str, ...]:
        """One port per route, plus the default."""
        names = tuple(config.routes)
        return (*names, config.default) if config.default else names

    def __init__(self, config: RouteConfig) -> None:
        super().__init__(config)
        self.conditions = {
            name: compile_expr(text, f"route.routes.{name}") for name, text in config.routes.items()
        }

    def process(self, batch: pl.DataFrame) -> StepOutput:
        """Split the batch by condition, first match wins."""
        unmatched = pl.Series("m", [True] * batch.height, dtype=pl.Boolean)
        outputs: dict[str, pl.DataFrame] = {}
        for name, condition in self.conditions.items():
            mask = condition_mask(batch, condition) & unmatched
            outputs[name] = batch.filter(mask)
            unmatched = unmatched & ~mask
        rest = batch.filter(unmatched)
        if self.config.default:
            outputs[self.config.default] = rest
            return StepOutput(outputs=outputs)
        return StepOutput(outputs=outputs, filtered=rest.height)

"""Column and row steps: select, rename, drop, cast, filter, with_columns, route.

All are vectorised Polars expressions over the whole batch.
"""

from __future__ import annotations

from typing import Any

import polars as pl
from pydantic import Field, field_validator

from tideflow.core.contracts import MAIN_PORT, Step, StepOutput, dead_letters
from tideflow.core.expressions import SqlExpression, compile_expr, condition_mask
from tideflow.core.settings import Settings
from tideflow.errors import PipelineError, suggest
from tideflow.registry import component


def _require_columns(frame: pl.DataFrame, columns: list[str], step: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        hints = "; ".join(f"{c!r}: {suggest(c, frame.columns)}" for c in missing)
        raise PipelineError(f"{step}: column(s) not in the batch: {hints}")


class SelectConfig(Settings):
    """Settings of ``select``."""

    columns: list[str] = Field(min_length=1, description="Columns to keep, in this order.")


@component("step", "select")
class Select(Step[SelectConfig]):
    """Keep only the listed columns."""

    config_model = SelectConfig

    @classmethod
    def output_types(cls, config: Any, known: dict[str, Any]) -> dict[str, Any]:
        """The kept columns keep their types."""
        return {c: known[c] for c in config.columns if c in known}

    def process(self, batch: pl.DataFrame) -> StepOutput:
        """Project the batch."""
        _require_columns(batch, self.config.columns, "select")
        return StepOutput.of(batch.select(self.config.columns))


class RenameConfig(Settings):
    """Settings of ``rename``."""

    columns: dict[str, str] = Field(min_length=1, description="Old name -> new name.")


@component("step", "rename")
class Rename(Step[RenameConfig]):
    """Rename columns."""

    config_model = RenameConfig

    @classmethod
    def output_types(cls, config: Any, known: dict[str, Any]) -> dict[str, Any]:
        """Types follow their columns' new names."""
        # A column whose name is taken by a renamed one loses its (old) type.
        targets = set(config.columns.values()) - set(config.columns)
        return {config.columns.get(c, c): t for c, t in known.items() if c not in targets}

    def process(self, batch: pl.DataFrame) -> StepOutput:
        """Rename the batch's columns."""
        _require_columns(batch, list(self.config.columns), "rename")
        return StepOutput.of(batch.rename(self.config.columns))


class DropConfig(Settings):
    """Settings of ``drop``."""

    columns: list[str] = Field(min_length=1, description="Columns to remove.")
    strict: bool = Field(True, description="Fail when a listed column is not in the batch.")


@component("step", "drop")
class Drop(Step[DropConfig]):
    """Remove columns."""

    config_model = DropConfig

    @classmethod
    def output_types(cls, config: Any, known: dict[str, Any]) -> dict[str, Any]:
        """The remaining columns keep their types."""
        return {c: t for c, t in known.items() if c not in config.columns}

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
class Cast(Step[CastConfig]):
    """Convert columns to other types; failures are dead-lettered with the value and type."""

    config_model = CastConfig

    @classmethod
    def output_types(cls, config: Any, known: dict[str, Any]) -> dict[str, Any]:
        """The cast columns have their target types, the others keep theirs."""
        return {**known, **{c: parse_type(t) for c, t in config.columns.items()}}

    def __init__(self, config: CastConfig) -> None:
        super().__init__(config)
        self.targets = {col: parse_type(t) for col, t in config.columns.items()}

    def _iso_first(self, batch: pl.DataFrame, col: str, dtype: Any) -> bool:
        """Whether text is first parsed as ISO 8601 with an offset (``%+``, about twice as
        fast as Polars' format inference), the usual form of event times in JSON; values
        it cannot parse are parsed again the general way (:meth:`_converted`)."""
        return (
            batch.schema[col] == pl.String
            and isinstance(dtype, pl.Datetime)
            and self.config.formats.get(col) is None
        )

    def _convert(self, batch: pl.DataFrame, col: str, dtype: Any, iso: bool = False) -> pl.Expr:
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
            if iso:
                utc = expr.str.to_datetime("%+", strict=False, time_unit=unit, time_zone="UTC")
                if dtype.time_zone:
                    return utc.dt.convert_time_zone(dtype.time_zone)
                return utc.dt.replace_time_zone(None)
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

    def _converted(self, batch: pl.DataFrame) -> pl.DataFrame:
        """The batch with each target column converted beside it as ``__cast_COLUMN``, each
        once (parsing text into times is the costly part). Text columns parsed as ISO 8601
        first are parsed again the general way when any value failed that way, so the
        result is the general way's wherever the ISO form does not fit."""
        iso = {c: self._iso_first(batch, c, t) for c, t in self.targets.items()}
        staged = batch.with_columns(
            self._convert(batch, c, t, iso[c]).alias(f"__cast_{c}") for c, t in self.targets.items()
        )
        again = [
            c
            for c, first in iso.items()
            if first
            and staged.select(
                (pl.col(c).is_not_null() & pl.col(f"__cast_{c}").is_null()).any()
            ).item()
        ]
        if not again:
            return staged
        return staged.with_columns(
            pl.coalesce(pl.col(f"__cast_{c}"), self._convert(batch, c, self.targets[c])).alias(
                f"__cast_{c}"
            )
            for c in again
        )

    def process(self, batch: pl.DataFrame) -> StepOutput:
        """Cast; rows where a non-null value became null failed and are dead-lettered."""
        _require_columns(batch, list(self.targets), "cast")
        staged = self._converted(batch)
        result = staged.select(
            pl.col(f"__cast_{c}").alias(c) if c in self.targets else pl.col(c)
            for c in batch.columns
        )
        if not self.config.strict:
            return StepOutput.of(result)
        bad = {c: pl.col(c).is_not_null() & pl.col(f"__cast_{c}").is_null() for c in self.targets}
        mask = staged.select(pl.any_horizontal(*bad.values()).alias("failed")).to_series()
        if not mask.any():
            return StepOutput.of(result)
        failed_rows = staged.filter(mask)
        reason: pl.Expr = pl.lit(None, dtype=pl.String)
        for col, dtype in reversed(list(self.targets.items())):
            reason = (
                pl.when(bad[col])
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
        dead = dead_letters(batch.filter(mask), "").with_columns(
            failed_rows.select(reason.alias("reason")).to_series()
        )
        return StepOutput(outputs={MAIN_PORT: result.filter(~mask)}, dead=dead)


class FilterConfig(Settings):
    """Settings of ``filter``."""

    expr: SqlExpression = Field(
        description="SQL condition; records where it is true are kept "
        "(e.g. `amount > 0 and country != 'US'`). NULL counts as false."
    )


@component("step", "filter")
class Filter(Step[FilterConfig]):
    """Keep records matching a SQL condition; the others are counted as filtered."""

    config_model = FilterConfig

    @classmethod
    def output_types(cls, config: Any, known: dict[str, Any]) -> dict[str, Any]:
        """Rows are removed, columns are untouched."""
        return dict(known)

    @classmethod
    def type_issues(cls, config: Any, known: dict[str, Any]) -> list[tuple[tuple[str, ...], str]]:
        """The condition over the known column types."""
        problem = compile_expr(config.expr, "expr").check(known)
        return [(("expr",), problem)] if problem else []

    def __init__(self, config: FilterConfig) -> None:
        super().__init__(config)
        self.condition = compile_expr(config.expr, "filter.expr")

    def process(self, batch: pl.DataFrame) -> StepOutput:
        """Apply the condition."""
        kept = batch.filter(condition_mask(batch, self.condition))
        return StepOutput.of(kept, filtered=batch.height - kept.height)


class WithColumnsConfig(Settings):
    """Settings of ``with_columns``."""

    columns: dict[str, SqlExpression] = Field(
        min_length=1,
        description="New or replaced column -> SQL expression over the batch "
        "(e.g. `temp_f: temp_c * 9 / 5 + 32`).",
    )


@component("step", "with_columns")
class WithColumns(Step[WithColumnsConfig]):
    """Add or replace columns computed from SQL expressions."""

    config_model = WithColumnsConfig

    @classmethod
    def output_types(cls, config: Any, known: dict[str, Any]) -> dict[str, Any]:
        """Each computed column has its expression's type when that can be told."""
        out = dict(known)
        for name, text in config.columns.items():
            dtype = compile_expr(text, name).output_type(known)
            if dtype is None:
                out.pop(name, None)
            else:
                out[name] = dtype
        return out

    @classmethod
    def type_issues(cls, config: Any, known: dict[str, Any]) -> list[tuple[tuple[str, ...], str]]:
        """Every expression over the known column types."""
        issues: list[tuple[tuple[str, ...], str]] = []
        for name, text in config.columns.items():
            problem = compile_expr(text, name).check(known)
            if problem:
                issues.append((("columns", name), problem))
        return issues

    def __init__(self, config: WithColumnsConfig) -> None:
        super().__init__(config)
        self.exprs = {
            name: compile_expr(text, f"with_columns.columns.{name}")
            for name, text in config.columns.items()
        }

    def process(self, batch: pl.DataFrame) -> StepOutput:
        """Compute the columns, each from the input batch."""
        values = [expr.evaluate(batch).alias(name) for name, expr in self.exprs.items()]
        return StepOutput.of(batch.with_columns(values))


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
class Route(Step[RouteConfig]):
    """Send each record to the first output whose condition it matches."""

    config_model = RouteConfig

    @classmethod
    def output_types(cls, config: Any, known: dict[str, Any]) -> dict[str, Any]:
        """Rows are split, columns are untouched."""
        return dict(known)

    @classmethod
    def type_issues(cls, config: Any, known: dict[str, Any]) -> list[tuple[tuple[str, ...], str]]:
        """Every route's condition over the known column types."""
        issues: list[tuple[tuple[str, ...], str]] = []
        for name, text in config.routes.items():
            problem = compile_expr(text, name).check(known)
            if problem:
                issues.append((("routes", name), problem))
        return issues

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

"""The ``normalize`` step: min-max or z-score scaling, fixed or learnt online per key."""

from __future__ import annotations

from typing import Literal

import polars as pl
from pydantic import Field, model_validator

from tideflow.core.contracts import JSON, Context, Step, StepOutput
from tideflow.core.settings import Settings
from tideflow.operators.timeseries._common import ALL, key_frame, require_columns
from tideflow.registry import component

_PARAMS = {"minmax": ("min", "max"), "zscore": ("mean", "std")}


class NormalizeConfig(Settings):
    """Settings of ``normalize``."""

    columns: list[str] = Field(min_length=1, description="Numeric columns to scale in place.")
    method: Literal["minmax", "zscore"] = Field(
        "zscore",
        description="`minmax`: (x - min) / (max - min); `zscore`: (x - mean) / std, std the "
        "population standard deviation (n in the denominator; `outliers` uses the sample one). "
        "Online, min, max, mean and std are over the key's non-null values so far, x included, "
        "so a key's first value has no spread. A zero (or, fixed, negative) spread gives null.",
    )
    fit: Literal["fixed", "online"] = Field(
        "online",
        description="`fixed`: use `params`; `online`: per key, the statistics of every value "
        "seen so far, this one included.",
    )
    params: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="fixed: column -> {min, max} (minmax) or {mean, std} (zscore).",
    )
    keys: list[str] = Field(default_factory=list, description="online: statistics per key.")

    @model_validator(mode="after")
    def _params(self) -> NormalizeConfig:
        if self.fit == "fixed":
            need = _PARAMS[self.method]
            for column in self.columns:
                given = self.params.get(column, {})
                if set(need) - set(given):
                    raise ValueError(
                        f"params.{column}: fit fixed with {self.method} needs "
                        f"{{{need[0]}: ..., {need[1]}: ...}}"
                    )
        return self


@component("step", "normalize")
class Normalize(Step[NormalizeConfig]):
    """Scale numeric columns; results are Float64, null where the scale is zero or unknown.

    ``fit: online`` keeps, per key and column, the running count, mean, M2 (sum of squared
    deviations), min and max in state, and scales each value with the statistics of all
    values up to and including it (population standard deviation), across batches.
    """

    config_model = NormalizeConfig

    def __init__(self, config: NormalizeConfig) -> None:
        super().__init__(config)
        self.gkeys = list(config.keys) or [ALL]
        self.stats: pl.DataFrame | None = None

    def open(self, ctx: Context, state: JSON | None) -> None:
        """Restore the running statistics."""
        if state:
            self.stats = state["stats"]

    def snapshot(self) -> JSON:
        """Running statistics per key (online fit); nothing for a fixed fit."""
        return {"stats": self.stats} if self.config.fit == "online" else None

    def process(self, batch: pl.DataFrame) -> StepOutput:
        """Scale the batch."""
        require_columns(batch, [*self.config.keys, *self.config.columns], "normalize")
        if self.config.fit == "fixed":
            return StepOutput.of(batch.with_columns(self._fixed()))
        return StepOutput.of(self._online(batch))

    def _fixed(self) -> list[pl.Expr]:
        out = []
        for c in self.config.columns:
            p = self.config.params[c]
            x = pl.col(c).cast(pl.Float64)
            if self.config.method == "minmax":
                out.append(_scale(x - p["min"], pl.lit(p["max"] - p["min"])).alias(c))
            else:
                out.append(_scale(x - p["mean"], pl.lit(p["std"])).alias(c))
        return out

    def _online(self, batch: pl.DataFrame) -> pl.DataFrame:
        frame, _ = key_frame(batch, self.config.keys)
        names = self._stat_names()
        if self.stats is not None and self.stats.height:
            frame = frame.join(
                self.stats, on=self.gkeys, how="left", nulls_equal=True, maintain_order="left"
            )
        else:
            frame = frame.with_columns(pl.lit(None, pl.Float64).alias(n) for n in names)
        scaled, carried = [], []
        g = self.gkeys
        for c in self.config.columns:
            n0 = pl.col(f"__n_{c}").fill_null(0.0)
            mean0 = pl.col(f"__mean_{c}").fill_null(0.0)
            m20 = pl.col(f"__m2_{c}").fill_null(0.0)
            x = pl.col(c).cast(pl.Float64)
            # Deviations from a shift close to the mean (the stored mean, or a new key's first
            # value) keep the running sums well conditioned; the formulas below need the shift
            # to be the stored mean whenever there is one.
            shift = pl.when(n0 > 0).then(mean0).otherwise(x.drop_nulls().first().over(g))
            # Staged so that every running sum is computed once and then reused.
            frame = frame.with_columns((x - shift).fill_null(0.0).alias("__d"), shift.alias("__h"))
            d = pl.col("__d")
            frame = frame.with_columns(
                (n0 + x.is_not_null().cast(pl.Float64).cum_sum().over(g)).alias(f"__cn_{c}"),
                d.cum_sum().over(g).alias("__ds"),
                (d * d).cum_sum().over(g).alias("__dq"),
                pl.min_horizontal(pl.col(f"__min_{c}"), x.cum_min().over(g)).alias(f"__cmin_{c}"),
                pl.max_horizontal(pl.col(f"__max_{c}"), x.cum_max().over(g)).alias(f"__cmax_{c}"),
            )
            count, dsum = pl.col(f"__cn_{c}"), pl.col("__ds")
            frame = frame.with_columns(
                pl.when(count > 0).then(pl.col("__h") + dsum / count).alias(f"__cmean_{c}"),
                (m20 + pl.col("__dq") - pl.when(count > 0).then(dsum**2 / count))
                .clip(lower_bound=0.0)
                .alias(f"__cm2_{c}"),
            )
            if self.config.method == "minmax":
                value = _scale(
                    x - pl.col(f"__cmin_{c}"), pl.col(f"__cmax_{c}") - pl.col(f"__cmin_{c}")
                )
            else:
                std = (pl.col(f"__cm2_{c}") / pl.col(f"__cn_{c}")).sqrt()
                value = _scale(x - pl.col(f"__cmean_{c}"), std)
            scaled.append(value.alias(c))
            carried += [
                pl.col(f"__cn_{c}").last().alias(f"__n_{c}"),
                pl.col(f"__cmean_{c}").last().alias(f"__mean_{c}"),
                pl.col(f"__cm2_{c}").last().alias(f"__m2_{c}"),
                pl.min_horizontal(pl.col(f"__min_{c}").first(), x.min()).alias(f"__min_{c}"),
                pl.max_horizontal(pl.col(f"__max_{c}").first(), x.max()).alias(f"__max_{c}"),
            ]
        updated = frame.group_by(g, maintain_order=True).agg(carried)
        if self.stats is not None and self.stats.height:
            untouched = self.stats.join(updated, on=g, how="anti", nulls_equal=True)
            updated = pl.concat([untouched, updated], how="vertical_relaxed")
        self.stats = updated.select(*g, *names)
        return frame.with_columns(scaled).select(batch.columns)

    def _stat_names(self) -> list[str]:
        return [
            f"__{s}_{c}" for c in self.config.columns for s in ("n", "mean", "m2", "min", "max")
        ]


def _scale(distance: pl.Expr, spread: pl.Expr) -> pl.Expr:
    """distance / spread, null where the spread is zero or unknown."""
    return pl.when(spread > 0).then(distance / spread)

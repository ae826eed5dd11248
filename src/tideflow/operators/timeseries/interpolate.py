"""The ``interpolate`` step (alias ``resample``): per key, values on a fixed time grid."""

from __future__ import annotations

from typing import Literal

import polars as pl
from pydantic import Field

from tideflow.core.contracts import JSON, MAIN_PORT, Context, Step, StepOutput
from tideflow.operators.timeseries._common import (
    ALL,
    Duration,
    EventClock,
    EventTimeSettings,
    PositiveDuration,
    T,
    combine_dead,
    key_frame,
    late_letters,
    parse_duration,
    require_columns,
)
from tideflow.registry import component

PREV = "__prev_"
"""Prefix of internal columns holding the previous point of the same key."""


class InterpolateConfig(EventTimeSettings):
    """Settings of ``interpolate`` / ``resample``."""

    columns: list[str] = Field(min_length=1, description="Value columns to resample.")
    keys: list[str] = Field(default_factory=list, description="One series per key.")
    interval: PositiveDuration = Field(
        description="Grid step; grid times are multiples of it since the epoch (UTC)."
    )
    method: Literal["linear", "ffill", "none"] = Field(
        "linear",
        description="Value at a grid time between two points: `linear` interpolation, "
        "`ffill` (the earlier point's value), or `none` (null unless a point is on the grid).",
    )
    max_gap: Duration | None = Field(
        None,
        description="Between points further apart than this, no grid rows are invented "
        "(a point exactly on the grid is still emitted). Default: no limit.",
    )


@component("step", "interpolate")
class Interpolate(Step[InterpolateConfig]):
    """Resample each key's series onto a fixed grid of ``interval``.

    Output rows: the time column (grid times), the keys and the value columns. A grid time
    is emitted once both points around it are known, so results do not depend on batch
    boundaries: points are held until the watermark (minus ``allowed_lateness``) passes
    them, and the last released point of each key is kept to bridge to the next batch. Held
    points count as ``consumed``; grid rows as ``generated``. A point older than what was
    released is dead-lettered ``late``. Of points with the same time, the first to arrive
    is used. ``finish`` releases everything held (no grid rows after a key's last point).
    """

    config_model = InterpolateConfig

    def __init__(self, config: InterpolateConfig) -> None:
        super().__init__(config)
        self.clock = EventClock(config, self.type_name())
        self.interval = parse_duration(config.interval)
        self.max_gap = parse_duration(config.max_gap) if config.max_gap else None
        self.gkeys = list(config.keys) or [ALL]
        self.held: pl.DataFrame | None = None
        self.last: pl.DataFrame | None = None

    @classmethod
    def type_name(cls) -> str:
        """The step type this class is registered as (used in messages)."""
        return "interpolate"

    def open(self, ctx: Context, state: JSON | None) -> None:
        """Restore the clock, held points and last point per key."""
        if state:
            self.clock.restore(state["clock"])
            self.held, self.last = state["held"], state["last"]

    def snapshot(self) -> JSON:
        """Clock, held points and the last released point per key."""
        return {"clock": self.clock.snapshot(), "held": self.held, "last": self.last}

    def _floor(self) -> int | None:
        wm = self.clock.watermark
        return None if wm is None else wm - self.clock.lateness

    def process(self, batch: pl.DataFrame) -> StepOutput:
        """Hold the new points, then emit the grid up to the watermark."""
        frame, dead = self.clock.prepare(batch)
        require_columns(frame, [*self.config.keys, *self.config.columns], self.type_name())
        frame, _ = key_frame(frame, self.config.keys)
        floor = self._floor()
        late = (
            frame.get_column(T) < floor
            if floor is not None
            else pl.Series([False] * frame.height, dtype=pl.Boolean)
        )
        fresh = frame.filter(~late).select(*self.gkeys, T, *self.config.columns)
        self.held = fresh if self.held is None else pl.concat([self.held, fresh])
        self.clock.advance(frame.get_column(T))
        out = self._release(self._floor())
        return StepOutput(
            outputs={MAIN_PORT: out},
            dead=combine_dead(dead, late_letters(frame, batch, late)),
            consumed=fresh.height,
            generated=out.height,
        )

    def finish(self) -> StepOutput:
        """Emit the grid up to every key's last point."""
        out = self._release(None)
        return StepOutput(outputs={MAIN_PORT: out}, generated=out.height)

    def _release(self, floor: int | None) -> pl.DataFrame:
        """Grid rows for the held points below ``floor`` (all when None)."""
        held = self.held
        if held is None or held.height == 0:
            return self._shape(pl.DataFrame())
        if floor is not None:
            ready = held.get_column(T) < floor
            released, self.held = held.filter(ready), held.filter(~ready)
        else:
            released, self.held = held, held.head(0)
        if released.height == 0:
            return self._shape(pl.DataFrame())
        cols = self.config.columns
        points = released.with_columns(pl.lit(False).alias("__state"))
        if self.last is not None and self.last.height:
            prior = self.last.with_columns(pl.lit(True).alias("__state"))
            points = pl.concat([prior, points], how="vertical_relaxed")
        points = points.sort([*self.gkeys, T], maintain_order=True, nulls_last=True)
        previous = [pl.col(c).shift(1).over(self.gkeys).alias(PREV + c) for c in [T, *cols]]
        pairs = points.with_columns(previous).filter(~pl.col("__state"))
        self.last = points.group_by(self.gkeys, maintain_order=True).agg(
            pl.col(T).last(), *[pl.col(c).last() for c in cols]
        )
        if self.max_gap is not None and floor is not None:
            # A key silent for longer than max_gap behaves exactly like a new key.
            self.last = self.last.filter(pl.col(T) >= floor - self.max_gap)
        return self._shape(self._grid(pairs))

    def _grid(self, pairs: pl.DataFrame) -> pl.DataFrame:
        """Each (previous point, point) pair emits the grid times in (previous, point]; a
        key's first point emits its own time if it is on the grid."""
        iv = self.interval
        t0, t1 = pl.col(PREV + T), pl.col(T)
        on_grid = t1 % iv == 0
        bridged = t0.is_not_null()
        if self.max_gap is not None:
            bridged = bridged & (t1 - t0 <= self.max_gap)
        first = pl.when(bridged).then((t0 // iv + 1) * iv).otherwise(t1)
        count = (
            pl.when(bridged)
            .then(((t1 // iv) * iv - first) // iv + 1)
            .otherwise(on_grid.cast(pl.Int64))
            .clip(lower_bound=0)
        )
        grid = (
            pairs.with_columns(first.alias("__first"), pl.int_ranges(0, count).alias("__i"))
            .explode("__i")
            .filter(pl.col("__i").is_not_null())
            .with_columns((pl.col("__first") + pl.col("__i") * iv).alias("__g"))
        )
        exact = pl.col("__g") == t1
        values = []
        for c in self.config.columns:
            v0, v1 = pl.col(PREV + c), pl.col(c)
            if self.config.method == "linear":
                share = (pl.col("__g") - t0).cast(pl.Float64) / (t1 - t0).cast(pl.Float64)
                between = v0.cast(pl.Float64) + (v1 - v0).cast(pl.Float64) * share
                value = pl.when(exact).then(v1.cast(pl.Float64)).otherwise(between)
            elif self.config.method == "ffill":
                value = pl.when(exact).then(v1).otherwise(v0)
            else:
                value = pl.when(exact).then(v1)
            values.append(value.alias(c))
        return grid.select(*self.gkeys, pl.col("__g").alias(T), *values)

    def _shape(self, grid: pl.DataFrame) -> pl.DataFrame:
        if grid.height == 0:
            return pl.DataFrame()
        return grid.sort([T, *self.gkeys], nulls_last=True).select(
            self.clock.to_time(pl.col(T)).alias(self.config.time_column),
            *self.config.keys,
            *self.config.columns,
        )


@component("step", "resample")
class Resample(Interpolate):
    """Alias of ``interpolate``: resample each key's series onto a fixed grid."""

    @classmethod
    def type_name(cls) -> str:
        """The step type this class is registered as (used in messages)."""
        return "resample"

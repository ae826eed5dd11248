"""The ``dedupe`` step: drop repeated records by key within an event-time horizon."""

from __future__ import annotations

import polars as pl
from pydantic import Field

from tideflow.core.contracts import JSON, MAIN_PORT, Context, Step, StepOutput
from tideflow.core.delta import FrameDelta, StateDelta
from tideflow.operators.timeseries._common import (
    EventClock,
    EventTimeSettings,
    PositiveDuration,
    T,
    combine_dead,
    late_letters,
    parse_duration,
    require_columns,
)
from tideflow.registry import component


class DedupeConfig(EventTimeSettings):
    """Settings of ``dedupe``."""

    keys: list[str] = Field(min_length=1, description="Columns that identify a repeat.")
    horizon: PositiveDuration = Field(
        description="A record is a repeat when the previous record with the same keys (in "
        "event time) is less than this much older."
    )


@component("step", "dedupe")
class Dedupe(Step[DedupeConfig]):
    """Drop records whose keys were seen less than ``horizon`` earlier in event time.

    Records are held until the watermark (minus ``allowed_lateness``) passes them, so that
    one arriving out of order is compared with the records truly before it: the result is
    the same as sorting the whole input by time, whatever the arrival order within
    ``max_out_of_orderness``. Held records are reported as ``consumed`` when they arrive and as
    ``generated`` when released; released repeats count as ``filtered``. A record older than
    what was already released is dead-lettered with reason ``late``. State: the held records
    plus the newest time per key, forgotten once no new record can fall within the horizon.
    """

    config_model = DedupeConfig

    def __init__(self, config: DedupeConfig) -> None:
        super().__init__(config)
        self.clock = EventClock(config, "dedupe")
        self.horizon = parse_duration(config.horizon)
        self.keys = list(config.keys)
        self.held: pl.DataFrame | None = None
        self.last: pl.DataFrame | None = None
        self.changed: list[pl.DataFrame] = []
        """Keys whose newest time was set since the last checkpoint."""
        self.forgotten: list[pl.DataFrame] = []
        """Keys forgotten (past the horizon) since the last checkpoint."""

    def open(self, ctx: Context, state: JSON | None) -> None:
        """Restore the clock, held records and newest time per key."""
        if state:
            self.clock.restore(state["clock"])
            self.held, self.last = state["held"], state["last"]

    def snapshot(self) -> JSON:
        """Clock, held records and the per-key newest time."""
        self.changed, self.forgotten = [], []
        return {"clock": self.clock.snapshot(), "held": self.held, "last": self.last}

    def snapshot_changes(self) -> StateDelta:
        """The clock and the held records (bounded by the out-of-orderness) whole; of the
        per-key newest times, those set and those forgotten since the last checkpoint."""
        values = {"clock": self.clock.snapshot(), "held": self.held}
        changed = pl.concat(self.changed).unique() if self.changed else None
        forgotten = pl.concat(self.forgotten).unique() if self.forgotten else None
        self.changed, self.forgotten = [], []
        if self.last is None:
            return StateDelta(values=values)
        upsert = (
            self.last.head(0)
            if changed is None
            else self.last.join(changed, on=self.keys, how="semi", nulls_equal=True)
        )
        return StateDelta(
            values=values,
            frames={"last": FrameDelta(keys=self.keys, upsert=upsert, delete=forgotten)},
        )

    def _floor(self) -> int | None:
        wm = self.clock.watermark
        return None if wm is None else wm - self.clock.lateness

    def process(self, batch: pl.DataFrame) -> StepOutput:
        """Hold the batch, release what the watermark passed, drop repeats among them."""
        frame, dead = self.clock.prepare(batch)
        require_columns(frame, self.keys, "dedupe")
        floor = self._floor()
        late = (
            frame.get_column(T) < floor
            if floor is not None
            else pl.Series([False] * frame.height, dtype=pl.Boolean)
        )
        fresh = frame.filter(~late).drop("__row")
        self.held = fresh if self.held is None else pl.concat([self.held, fresh])
        self.clock.advance(frame.get_column(T))
        out = self._release(self._floor(), final=False)
        out.dead = combine_dead(dead, late_letters(frame, batch, late))
        out.consumed = fresh.height
        return out

    def finish(self) -> StepOutput:
        """Release every held record."""
        return self._release(None, final=True)

    def _release(self, floor: int | None, final: bool) -> StepOutput:
        held = self.held
        if held is None or held.height == 0 or (floor is None and not final):
            return StepOutput(outputs={MAIN_PORT: pl.DataFrame()})
        ready = pl.lit(True) if final else pl.col(T) < floor
        flagged = held.with_columns(ready.alias("__ready"))
        released = flagged.filter("__ready").drop("__ready")
        self.held = flagged.filter(~pl.col("__ready")).drop("__ready")
        # Released records all come after everything released before, so comparing each with
        # its predecessor by key (the previous release's newest time first) decides repeats.
        ordered = released.with_columns(pl.lit(False).alias("__state"))
        if self.last is not None and self.last.height:
            prior = self.last.with_columns(pl.lit(True).alias("__state"))
            ordered = pl.concat([prior, ordered], how="diagonal_relaxed")
        ordered = ordered.sort([*self.keys, T], maintain_order=True, nulls_last=True)
        previous = pl.col(T).shift(1).over(self.keys)
        repeat = previous.is_not_null() & (pl.col(T) - previous < self.horizon)
        ordered = ordered.with_columns(repeat.alias("__repeat"))
        fresh = ordered.filter(~pl.col("__state"))
        kept = fresh.filter(~pl.col("__repeat")).sort(T, maintain_order=True)
        self.last = ordered.group_by(self.keys).agg(pl.col(T).max())
        self.changed.append(released.select(self.keys).unique())
        if floor is not None:  # no record released later can fall within the horizon
            keep = (pl.col(T) > floor - self.horizon).fill_null(False)
            self.forgotten.append(self.last.filter(~keep).select(self.keys))
            self.last = self.last.filter(keep)
        out = kept.select(released.columns).drop(T)
        return StepOutput(
            outputs={MAIN_PORT: out},
            generated=released.height,
            filtered=released.height - out.height,
        )

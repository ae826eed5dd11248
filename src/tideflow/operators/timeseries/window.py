"""The ``window`` step: tumbling, sliding and session windows in event time.

State is one row of partial aggregates per key and open window (see ``aggs``), merged with
each batch by one ``group_by``; windows close when the watermark passes their end plus the
allowed lateness, never on the wall clock.
"""

from __future__ import annotations

import os
from typing import Any, Literal

import polars as pl
from pydantic import Field, model_validator

from tideflow.core.contracts import JSON, MAIN_PORT, Context, Step, StepOutput
from tideflow.core.delta import FrameDelta, StateDelta
from tideflow.operators.timeseries._common import (
    ALL,
    EventClock,
    EventTimeSettings,
    PositiveDuration,
    T,
    combine_dead,
    environment_duration,
    key_frame,
    late_letters,
    parse_duration,
    require_columns,
)
from tideflow.operators.timeseries.aggs import (
    AggSpec,
    columns_used,
    final_exprs,
    holistic_exprs,
    merge_exprs,
    parse_aggregations,
    raw_exprs,
    row_exprs,
)
from tideflow.registry import component

WS, LAST, N = "__ws", "__last", "__n"
"""Internal columns: window start, last event time (sessions), row count."""


def default_aggregations(columns: list[str]) -> dict[str, str]:
    """Aggregations when none are configured: ``AGGREGATION_TYPE`` (default ``mean``) of each
    listed column, or a plain ``count()`` without columns."""
    func = os.environ.get("AGGREGATION_TYPE", "mean" if columns else "count").strip()
    if not columns:
        return {func: f"{func}()"} if func == "count" else {"count": "count()"}
    return {f"{func}_{c}": f"{func}({c})" for c in columns}


class WindowConfig(EventTimeSettings):
    """Settings of ``window``."""

    kind: Literal["tumbling", "sliding", "session"] = Field(
        "tumbling",
        description="`tumbling`: fixed, non-overlapping windows of `size`; `sliding`: windows "
        "of `size` starting every `slide`; `session`: per key, records closer than `gap` "
        "share a window.",
    )
    size: PositiveDuration | None = Field(
        None,
        description="Window length (tumbling, sliding). Default: $WINDOW_SIZE (a bare "
        "number there is seconds: `WINDOW_SIZE=60` is `60s`).",
    )
    slide: PositiveDuration | None = Field(None, description="Sliding: distance between starts.")
    gap: PositiveDuration | None = Field(None, description="Session: inactivity that ends it.")
    keys: list[str] = Field(default_factory=list, description="Columns to window by, if any.")
    aggregations: dict[str, str] = Field(
        default_factory=dict,
        description="Output column -> `func(column)`: count() / count(col), sum, mean, min, "
        "max, first, last, stddev, variance, count_distinct, median, quantile(col, q). "
        "Default: $AGGREGATION_TYPE (or mean) of each of `columns`, or count().",
    )
    columns: list[str] = Field(
        default_factory=list,
        description="Columns aggregated with $AGGREGATION_TYPE when `aggregations` is omitted.",
    )
    emit: Literal["on_close", "on_update"] = Field(
        "on_close",
        description="`on_close`: one final row per window when it closes; `on_update`: "
        "after each batch, the current row of every window the batch changed (for upserts).",
    )

    @model_validator(mode="before")
    @classmethod
    def _environment_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if data.get("size") is None and os.environ.get("WINDOW_SIZE"):
            data["size"] = environment_duration(os.environ["WINDOW_SIZE"])
        if not data.get("aggregations"):
            data["aggregations"] = default_aggregations(list(data.get("columns") or []))
        return data

    @model_validator(mode="after")
    def _shape(self) -> WindowConfig:
        if self.kind in ("tumbling", "sliding") and self.size is None:
            raise ValueError(f"a {self.kind} window needs `size` (or $WINDOW_SIZE), e.g. size: 1m")
        if self.kind == "sliding":
            if self.slide is None:
                raise ValueError("a sliding window needs `slide`, e.g. size: 1m, slide: 10s")
            assert self.size is not None
            if parse_duration(self.slide) > parse_duration(self.size):
                raise ValueError("slide must not be longer than size (records would be missed)")
        if self.kind == "session" and self.gap is None:
            raise ValueError("a session window needs `gap`, e.g. gap: 30s")
        parse_aggregations(self.aggregations)
        return self


@component("step", "window")
class Window(Step[WindowConfig]):
    """Aggregate records per key over event-time windows.

    Outputs ``window_start``, ``window_end``, the keys and one column per aggregation. A
    window closes when the watermark reaches its end + ``allowed_lateness``. A record is
    dead-lettered with reason ``late`` when what it belongs to was already emitted: all its
    tumbling/sliding windows have closed (a sliding window record still counts in its open
    windows), or, for sessions, it is behind watermark - allowed_lateness and joins no open
    session. Records taken into state count as ``consumed`` and emitted window rows as
    ``generated``. ``finish`` (bounded input ended) closes every window.

    Defaults from the environment: ``WINDOW_SIZE`` is the default ``size``;
    ``AGGREGATION_TYPE`` (e.g. ``max``) is applied to ``columns`` when ``aggregations`` is
    omitted. ``count_distinct``, ``median`` and ``quantile`` keep the raw values of open
    windows in state (bounded by the open windows); every other aggregation keeps a few
    numbers per key and window. With ``emit: on_update`` a session that merges with another
    is re-emitted under its new start, so the sink should key on (keys, window_start) and
    tolerate superseded sessions.
    """

    config_model = WindowConfig

    def __init__(self, config: WindowConfig) -> None:
        super().__init__(config)
        self.specs: list[AggSpec] = parse_aggregations(config.aggregations)
        self.session = config.kind == "session"
        self.size = parse_duration(config.size) if config.size else 0
        self.slide = parse_duration(config.slide) if config.slide else self.size
        self.gap = parse_duration(config.gap) if config.gap else 0
        self.clock = EventClock(config, "window")
        self.holistic = any(s.holistic for s in self.specs)
        self.partials: pl.DataFrame | None = None
        self.raw: pl.DataFrame | None = None
        self.gkeys = list(config.keys) or [ALL]
        self.touched: list[pl.DataFrame] = []
        """(keys, window start) of windows changed since the last checkpoint."""
        self.closed: list[pl.DataFrame] = []
        """(keys, window start) of windows closed since the last checkpoint."""

    def open(self, ctx: Context, state: JSON | None) -> None:
        """Restore the clock and the open windows."""
        if state:
            self.clock.restore(state["clock"])
            self.partials = state["partials"]
            self.raw = state["raw"]

    def snapshot(self) -> JSON:
        """Clock and open windows (frames travel as Arrow IPC through the state codec)."""
        self.touched, self.closed = [], []
        return {"clock": self.clock.snapshot(), "partials": self.partials, "raw": self.raw}

    def snapshot_changes(self) -> StateDelta | None:
        """Tumbling and sliding windows without raw values: the open windows changed since
        the last checkpoint and those closed. Sessions (whose start moves as they merge)
        and holistic aggregations (raw values) are stored whole (None)."""
        if self.session or self.holistic:
            return None
        group = [*self.gkeys, WS]
        values = {"clock": self.clock.snapshot(), "raw": None}
        if self.partials is None:
            self.touched, self.closed = [], []
            return StateDelta(values=values)
        touched = pl.concat(self.touched, how="vertical_relaxed") if self.touched else None
        upsert = (
            self.partials.head(0)
            if touched is None
            else self.partials.join(touched, on=group, how="semi", nulls_equal=True)
        )
        closed = pl.concat(self.closed, how="vertical_relaxed").unique() if self.closed else None
        self.touched, self.closed = [], []
        return StateDelta(
            values=values,
            frames={"partials": FrameDelta(keys=group, upsert=upsert, delete=closed)},
        )

    # -- processing ----------------------------------------------------------------------

    def process(self, batch: pl.DataFrame) -> StepOutput:
        """Merge the batch into open windows, then emit what the watermark closed."""
        frame, dead = self.clock.prepare(batch)
        require_columns(frame, [*self.config.keys, *columns_used(self.specs)], "window")
        frame, _ = key_frame(frame, self.config.keys)
        # Only the columns the windows read (a select of existing columns copies nothing);
        # the per-row partial states are computed inside the batch's own group_by.
        rows = frame.select(*self.gkeys, T, "__row", *columns_used(self.specs))
        floor = self._floor()
        if self.session:
            late, touched = self._merge_sessions(rows, floor)
        else:
            late, touched = self._merge_windows(rows, floor)
        self.clock.advance(rows.get_column(T))
        emitted = self._close(touched, final=False)
        late_dead = late_letters(rows, batch, late)
        return StepOutput(
            outputs={MAIN_PORT: emitted},
            dead=combine_dead(dead, late_dead),
            consumed=rows.height - int(late.sum()),
            generated=emitted.height,
        )

    def finish(self) -> StepOutput:
        """The bounded input ended: close every open window."""
        emitted = self._close(None, final=True)
        return StepOutput(outputs={MAIN_PORT: emitted}, generated=emitted.height)

    def idle(self, seconds: float) -> StepOutput:
        """The input has been quiet: past ``idle_timeout``, close every open window."""
        timeout = self.config.idle_timeout
        timeout_us = None if timeout is None else parse_duration(timeout)
        state = self.partials
        if state is None or state.height == 0 or not self.clock.quiet_past(seconds, timeout_us):
            return StepOutput()
        end = (pl.col(LAST) + self.gap) if self.session else (pl.col(WS) + self.size)
        last_end = int(state.select(end.max()).item())
        self.clock.move_to(last_end + self.clock.lateness)
        emitted = self._close(None, final=False)
        return StepOutput(outputs={MAIN_PORT: emitted}, generated=emitted.height)

    def _floor(self) -> int | None:
        """Windows ending at or before this time closed before the current batch."""
        wm = self.clock.watermark
        return None if wm is None else wm - self.clock.lateness

    def _merge_windows(self, rows: pl.DataFrame, floor: int | None) -> tuple[pl.Series, Any]:
        """Tumbling and sliding: assign each row to its windows, reduce the batch to one
        partial row per key and window with one group_by, then merge those (a few thousand
        rows) into the open windows' state: the state is never re-sorted or joined whole."""
        last_start = (pl.col(T) // self.slide) * self.slide
        if floor is None:
            late = _all_false(rows.height)
            live = rows.lazy()
        else:
            late = rows.select((last_start + self.size <= floor).alias("late")).to_series()
            live = rows.lazy().filter(~late) if late.any() else rows.lazy()
        live = live.with_columns(last_start.alias(WS))
        count = -(-self.size // self.slide)
        if count > 1:
            # Every window containing t starts at one of the `count` slide multiples <= t.
            offsets = pl.LazyFrame({"__i": pl.Series(range(count), dtype=pl.Int64)})
            live = (
                live.join(offsets, how="cross")
                .with_columns((pl.col(WS) - pl.col("__i") * self.slide).alias(WS))
                .filter(pl.col(WS) + self.size > pl.col(T))
            )
            if floor is not None:  # windows of this record that have already closed
                live = live.filter(pl.col(WS) + self.size > floor)
        group = [*self.gkeys, WS]
        # Row partials and their merge in one lazy query: Polars fuses the projection into
        # the aggregation, so the per-row partial columns are never materialised.
        parts = (
            live.select(*group, pl.lit(1, pl.Int64).alias(N), *row_exprs(self.specs))
            .group_by(group)
            .agg(pl.col(N).sum(), *merge_exprs(self.specs))
        )
        if self.holistic:  # the raw values of open windows, for median and the like
            new_raw = live.select(*group, *raw_exprs(self.specs)).collect()
            self.raw = new_raw if self.raw is None else pl.concat([self.raw, new_raw])
        batch_parts = parts.collect()
        self.partials = self._merge(self.partials, batch_parts, group)
        if not self.holistic:  # incremental checkpoints (snapshot_changes)
            self.touched.append(batch_parts.select(group))
        # The batch's partials are one row per window it touched: no unique() needed.
        return late, batch_parts.select(group)

    def _merge(self, state: pl.DataFrame | None, parts: pl.DataFrame, group: list[str]) -> Any:
        if state is None or state.height == 0:
            return parts
        both = pl.concat([state, parts], how="vertical_relaxed")
        return both.group_by(group).agg(pl.col(N).sum(), *merge_exprs(self.specs))

    def _merge_sessions(self, rows: pl.DataFrame, floor: int | None) -> tuple[pl.Series, Any]:
        """Sessions: open sessions and new rows, sorted per key by start, are chained while the
        next start is closer than ``gap`` to the furthest end so far; each chain is a session."""
        new = rows.select(
            *self.gkeys,
            pl.col(T).alias(WS),
            pl.col(T).alias(LAST),
            pl.lit(False).alias("__state"),
            "__row",
            pl.lit(1, pl.Int64).alias(N),
            *row_exprs(self.specs),
        )
        parts = [new]
        if self.partials is not None and self.partials.height:
            parts.insert(
                0,
                self.partials.with_columns(
                    pl.lit(True).alias("__state"), pl.lit(None, pl.Int64).alias("__row")
                ).select(new.columns),
            )
        both = pl.concat(parts, how="vertical_relaxed").sort(
            [*self.gkeys, WS], maintain_order=True, nulls_last=True
        )
        both = self._chain(both)
        if floor is not None:
            # A new record behind the floor that joins no open session may belong to a session
            # that has closed (and was emitted): it is late. Closed sessions ended at or before
            # the floor, so a record at or after the floor can never touch one.
            joins_open = pl.col("__state").any().over("__g")
            lost = (~pl.col("__state") & (pl.col(WS) < floor) & ~joins_open).alias("__lost")
            both = both.with_columns(lost)
            late = rows.get_column("__row").is_in(
                both.filter(pl.col("__lost")).get_column("__row").implode()
            )
            if late.any():  # without the late rows, the other rows may chain differently
                both = self._chain(both.filter(~pl.col("__lost")))
            both = both.drop("__lost")
        else:
            late = _all_false(rows.height)
        merged = both.group_by("__g").agg(
            *[pl.col(k).first() for k in self.gkeys],
            pl.col(WS).min(),
            pl.col(LAST).max(),
            (~pl.col("__state")).any().alias("__new"),
            pl.col(N).sum(),
            *merge_exprs(self.specs),
        )
        touched = merged.filter(pl.col("__new")).select(*self.gkeys, WS)
        self.partials = merged.drop("__g", "__new")
        if self.holistic:
            kept = rows.filter(~late).select(*self.gkeys, pl.col(T), *raw_exprs(self.specs))
            self.raw = kept if self.raw is None else pl.concat([self.raw, kept])
        return late, touched

    def _chain(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Number the sessions (``__g``) of rows sorted by key and start: a row starts a new
        session when its start is ``gap`` or more past the furthest end before it."""
        reach = pl.col(LAST).cum_max().shift(1).over(self.gkeys)
        starts = reach.is_null() | (pl.col(WS) - reach >= self.gap)
        return frame.with_columns(starts.cum_sum().alias("__g"))

    # -- emitting ------------------------------------------------------------------------

    def _close(self, touched: pl.DataFrame | None, final: bool) -> pl.DataFrame:
        """Evict the windows the watermark closed; return the rows to emit."""
        state = self.partials
        if state is None or state.height == 0:
            return self._finalize(self._empty_state())
        end = (pl.col(LAST) + self.gap) if self.session else (pl.col(WS) + self.size)
        wm = self.clock.watermark
        if final:
            mask = pl.lit(True)
        elif wm is None:
            mask = pl.lit(False)
        else:
            mask = end + self.clock.lateness <= wm
        flagged = state.with_columns(mask.alias("__closed"))
        closed = flagged.filter(pl.col("__closed")).drop("__closed")
        self.partials = flagged.filter(~pl.col("__closed")).drop("__closed")
        if closed.height and not (self.session or self.holistic):
            self.closed.append(closed.select(*self.gkeys, WS))
        if self.config.emit == "on_update" and touched is not None:
            emit = state.join(touched, on=[*self.gkeys, WS], how="semi", nulls_equal=True)
        elif self.config.emit == "on_update":
            emit = closed.head(0)  # on finish every window was already emitted when updated
        else:
            emit = closed
        out = self._finalize(emit)
        if self.raw is not None and closed.height:
            self.raw = self._evict_raw(closed)
        return out

    def _empty_state(self) -> pl.DataFrame:
        return pl.DataFrame(
            schema={**dict.fromkeys(self.gkeys, pl.Null), WS: pl.Int64, LAST: pl.Int64}
        )

    def _evict_raw(self, closed: pl.DataFrame) -> pl.DataFrame:
        assert self.raw is not None
        if self.session:
            members = self._session_members(closed)
            return self.raw.join(
                members.select(*self.gkeys, T), on=[*self.gkeys, T], how="anti", nulls_equal=True
            )
        return self.raw.join(
            closed.select(*self.gkeys, WS), on=[*self.gkeys, WS], how="anti", nulls_equal=True
        )

    def _session_members(self, sessions: pl.DataFrame) -> pl.DataFrame:
        """Raw rows of the given sessions (a row belongs to its key's session spanning it)."""
        assert self.raw is not None
        return self.raw.join(
            sessions.select(*self.gkeys, WS, LAST), on=self.gkeys, nulls_equal=True
        ).filter(pl.col(T).is_between(pl.col(WS), pl.col(LAST)))

    def _finalize(self, windows: pl.DataFrame) -> pl.DataFrame:
        """Window rows: start, end, keys and the aggregation values, oldest first."""
        names = [s.output for s in self.specs]
        end = (pl.col(LAST) + self.gap) if self.session else (pl.col(WS) + self.size)
        if windows.height == 0:
            return pl.DataFrame(
                schema={"window_start": pl.Datetime("us"), "window_end": pl.Datetime("us")}
            )
        values = windows.with_columns(*final_exprs(self.specs))
        if self.holistic:
            assert self.raw is not None
            group = [*self.gkeys, WS]
            if self.session:
                members = self._session_members(windows)
            else:
                members = self.raw.join(
                    windows.select(group), on=group, how="semi", nulls_equal=True
                )
            extra = members.group_by(group).agg(*holistic_exprs(self.specs))
            values = values.join(extra, on=group, how="left", nulls_equal=True)
        return values.sort([WS, *self.gkeys], nulls_last=True).select(
            self.clock.to_time(pl.col(WS)).alias("window_start"),
            self.clock.to_time(end).alias("window_end"),
            *self.config.keys,
            *names,
        )


def _all_false(height: int) -> pl.Series:
    """A mask of ``height`` False values, built in Polars (not from a Python list)."""
    return pl.select(pl.repeat(False, height, dtype=pl.Boolean)).to_series().alias("late")

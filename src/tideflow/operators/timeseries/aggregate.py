"""The ``aggregate`` step: keyed running aggregates without windows, for upsert sinks."""

from __future__ import annotations

import polars as pl
from pydantic import Field, field_validator, model_validator

from tideflow.core.contracts import JSON, MAIN_PORT, Context, Step, StepOutput
from tideflow.operators.timeseries._common import (
    ALL,
    Duration,
    T,
    key_frame,
    parse_duration,
    require_columns,
)
from tideflow.operators.timeseries.aggs import (
    columns_used,
    final_exprs,
    merge_exprs,
    parse_aggregations,
    row_exprs,
)
from tideflow.registry import component
from tideflow.spec.models import Settings

SEEN = "__seen"
"""Internal column: newest event time (or arrival number) of a key, for expiry."""


class AggregateConfig(Settings):
    """Settings of ``aggregate``."""

    keys: list[str] = Field(default_factory=list, description="Columns to aggregate by.")
    aggregations: dict[str, str] = Field(
        min_length=1,
        description="Output column -> `func(column)`: count() / count(col), sum, mean, min, "
        "max, first, last, stddev, variance.",
    )
    time_column: str | None = Field(
        None,
        description="Event time; orders `first`/`last` (arrival order without it) and drives "
        "`expire_after`.",
    )
    expire_after: Duration | None = Field(
        None,
        description="Forget a key when the newest event time seen is this much past the key's "
        "newest record (bounds state for streams of ever-new keys).",
    )

    @field_validator("aggregations")
    @classmethod
    def _mergeable(cls, value: dict[str, str]) -> dict[str, str]:
        for spec in parse_aggregations(value):
            if spec.holistic:
                raise ValueError(
                    f"{spec.output}: {spec.func} needs every value of a key for ever; use it in "
                    "a `window` step, which keeps values only while a window is open"
                )
        return value

    @model_validator(mode="after")
    def _expiry_needs_time(self) -> AggregateConfig:
        if self.expire_after is not None and self.time_column is None:
            raise ValueError("expire_after needs time_column (expiry runs on event time)")
        return self


@component("step", "aggregate")
class Aggregate(Step):
    """Running aggregates per key; each batch emits the current row of every key it changed.

    The output (keys + one column per aggregation) is meant for an upsert sink keyed on the
    keys. State is one row of partial aggregates per key. Input records count as ``consumed``
    and emitted rows as ``generated``.
    """

    config_model = AggregateConfig

    def __init__(self, config: AggregateConfig) -> None:
        super().__init__(config)
        self.specs = parse_aggregations(config.aggregations)
        self.gkeys = list(config.keys) or [ALL]
        self.state: pl.DataFrame | None = None
        self.arrivals = 0
        self.max_seen: int | None = None
        self.expiry = parse_duration(config.expire_after) if config.expire_after else None

    def open(self, ctx: Context, state: JSON | None) -> None:
        """Restore the per-key partials."""
        if state:
            self.state = state["partials"]
            self.arrivals = state["arrivals"]
            self.max_seen = state["max_seen"]

    def snapshot(self) -> JSON:
        """Per-key partial aggregates (a frame) and counters."""
        return {"partials": self.state, "arrivals": self.arrivals, "max_seen": self.max_seen}

    def process(self, batch: pl.DataFrame) -> StepOutput:
        """Merge the batch into the per-key state and emit the changed keys."""
        needed = [*self.config.keys, *columns_used(self.specs)]
        if self.config.time_column:
            needed.append(self.config.time_column)
        require_columns(batch, needed, "aggregate")
        if batch.height == 0:
            return StepOutput(outputs={MAIN_PORT: batch.head(0)})
        frame, _ = key_frame(batch, self.config.keys)
        if self.config.time_column:
            time = pl.col(self.config.time_column).dt.epoch("us")
        else:  # arrival order stands in for time
            time = pl.int_range(pl.len(), dtype=pl.Int64) + self.arrivals
        frame = frame.with_columns(time.alias(T))
        self.arrivals += batch.height
        rows = frame.select(*self.gkeys, pl.col(T).alias(SEEN), *row_exprs(self.specs))
        changed = rows.select(self.gkeys).unique()
        both = rows if self.state is None else pl.concat([self.state, rows], how="vertical_relaxed")
        self.state = both.group_by(self.gkeys, maintain_order=True).agg(
            pl.col(SEEN).max(), *merge_exprs(self.specs)
        )
        out = self.state.join(changed, on=self.gkeys, how="semi", nulls_equal=True)
        out = out.select(*self.config.keys, *final_exprs(self.specs))
        self._expire(frame.get_column(T))
        return StepOutput(outputs={MAIN_PORT: out}, consumed=batch.height, generated=out.height)

    def _expire(self, times: pl.Series) -> None:
        if self.expiry is None or self.state is None:
            return
        top = times.max()
        if top is None:
            return
        self.max_seen = max(int(top), self.max_seen or int(top))  # type: ignore[arg-type]
        self.state = self.state.filter(pl.col(SEEN) > self.max_seen - self.expiry)

"""Shared machinery of the time-series steps: durations, event time and the watermark.

Event times are handled internally as Int64 microseconds since the Unix epoch (column
``__t``), whatever the unit and time zone of the user's column; outputs convert back to the
column's own type. Window boundaries are therefore aligned to the epoch in UTC.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import polars as pl
from pydantic import AfterValidator, Field

from tideflow.core.contracts import JSON, dead_letters
from tideflow.core.settings import Settings
from tideflow.errors import PipelineError, suggest

T = "__t"
"""Internal column: event time in microseconds since the epoch."""

ALL = "__all"
"""Internal constant key column used when a step has no key columns (group_by needs one)."""

_UNITS_US = {
    "us": 1,
    "ms": 1_000,
    "s": 1_000_000,
    "m": 60_000_000,
    "h": 3_600_000_000,
    "d": 86_400_000_000,
    "w": 604_800_000_000,
}
_PART = re.compile(r"(\d+(?:\.\d+)?)(us|ms|s|m|h|d|w)")


def parse_duration(text: str) -> int:
    """``"1h30m"``, ``"5s"``, ``"250ms"``, ``"0s"`` -> microseconds.

    Units: ``us ms s m h d w``; parts add up. Raises ``ValueError`` with the accepted form.
    """
    cleaned = text.strip().lower().replace(" ", "")
    pos, total = 0, 0.0
    for match in _PART.finditer(cleaned):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS_US[match.group(2)]
        pos = match.end()
    if pos != len(cleaned) or not cleaned:
        raise ValueError(
            f"{text!r} is not a duration; write a number and a unit such as 500ms, 5s, 1m, "
            "1h30m or 1d (units: us, ms, s, m, h, d, w)"
        )
    return round(total)


def environment_duration(text: str) -> str:
    """A duration from an environment variable such as ``WINDOW_SIZE``: a bare number is
    seconds (``60`` -> ``60s``), as stream-processing tools that read these variables take
    it; anything else must be a duration with units, as in a pipeline file."""
    cleaned = text.strip()
    return f"{cleaned}s" if re.fullmatch(r"\d+(?:\.\d+)?", cleaned) else cleaned


def _check_duration(text: str) -> str:
    parse_duration(text)
    return text


Duration = Annotated[str, AfterValidator(_check_duration)]
"""A duration string in a settings model, validated when the pipeline is loaded."""


def _positive(text: str) -> str:
    if parse_duration(text) <= 0:
        raise ValueError(f"{text!r} must be longer than zero")
    return text


PositiveDuration = Annotated[Duration, AfterValidator(_positive)]
"""A duration that must be greater than zero (window sizes, intervals)."""


class EventTimeSettings(Settings):
    """Settings shared by steps that work in event time."""

    time_column: str = Field(description="Column holding each record's event time.")
    max_out_of_orderness: Duration = Field(
        "0s",
        description="How far behind the newest event time a record may still arrive "
        "(e.g. `5s`). The watermark is the max event time seen minus this.",
    )
    allowed_lateness: Duration = Field(
        "0s",
        description="Extra time, beyond the watermark, for which closed results still "
        "accept records; older records are dead-lettered with reason `late`.",
    )
    idle_timeout: PositiveDuration | None = Field(
        None,
        description="When no record arrives for this long (wall clock), the watermark moves "
        "past every open window, so the last windows of a quiet stream close (records for "
        "them that come later are late). Replays are unaffected: their records arrive "
        "without pauses.",
    )


def require_columns(frame: pl.DataFrame, columns: list[str], step: str) -> None:
    """Raise an actionable error naming the missing columns and close matches."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        hints = "; ".join(f"{c!r}: {suggest(c, frame.columns)}" for c in missing)
        raise PipelineError(f"{step}: column(s) not in the batch: {hints}")


def key_frame(frame: pl.DataFrame, keys: list[str]) -> tuple[pl.DataFrame, list[str]]:
    """The grouping columns to use: the keys, or a constant column when there are none."""
    if keys:
        return frame, list(keys)
    return frame.with_columns(pl.lit(True).alias(ALL)), [ALL]


class EventClock:
    """Event time of one step: converts the time column and tracks the watermark.

    The watermark only moves forward and only with event time, so a replay of the same input
    closes the same windows at the same records; the one exception is an explicit
    ``idle_timeout``, which moves a quiet input's watermark past its open windows.
    """

    def __init__(self, settings: EventTimeSettings, step: str) -> None:
        self.column = settings.time_column
        self.out_of_orderness = parse_duration(settings.max_out_of_orderness)
        self.lateness = parse_duration(settings.allowed_lateness)
        self.step = step
        self.max_seen: int | None = None
        self._quiet_handled = False
        self.unit = "us"
        self.tz: str | None = None

    @property
    def watermark(self) -> int | None:
        """Max event time seen minus the out-of-orderness bound; None before any record."""
        return None if self.max_seen is None else self.max_seen - self.out_of_orderness

    def prepare(self, batch: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame | None]:
        """Add ``__t`` (epoch microseconds) and a row number ``__row``; rows without an
        event time are returned separately as dead letters."""
        require_columns(batch, [self.column], self.step)
        dtype = batch.schema[self.column]
        if isinstance(dtype, pl.Datetime):
            self.unit, self.tz = dtype.time_unit or "us", dtype.time_zone
            micros = pl.col(self.column).dt.epoch("us")
        elif dtype == pl.Date:
            self.unit, self.tz = "us", None
            micros = pl.col(self.column).cast(pl.Datetime("us")).dt.epoch("us")
        else:
            raise PipelineError(
                f"{self.step}: time_column {self.column!r} is {dtype}, not a date or datetime; "
                f"convert it first, e.g. a `cast` step with `columns: {{{self.column}: "
                "datetime}`"
            )
        frame = batch.with_columns(micros.alias(T), pl.int_range(pl.len()).alias("__row"))
        missing = frame.get_column(T).is_null()
        if not missing.any():
            return frame, None
        dead = dead_letters(batch.filter(missing), f"no event time in {self.column!r}")
        return frame.filter(~missing), dead

    def advance(self, times: pl.Series) -> None:
        """Move the watermark with the newest event time of a batch."""
        if times.len() == 0:
            return
        self._quiet_handled = False
        top = int(times.max())  # type: ignore[arg-type]
        self.max_seen = top if self.max_seen is None else max(self.max_seen, top)

    def quiet_past(self, seconds: float, timeout_us: int | None) -> bool:
        """True once per quiet period: when the input has been quiet (wall clock) for longer
        than ``timeout_us``."""
        if timeout_us is None or self.max_seen is None or self._quiet_handled:
            return False
        if seconds * 1_000_000 < timeout_us:
            return False
        self._quiet_handled = True
        return True

    def move_to(self, watermark: int) -> None:
        """Move the watermark forward to ``watermark`` (never back)."""
        target = watermark + self.out_of_orderness
        if self.max_seen is None or target > self.max_seen:
            self.max_seen = target

    def to_time(self, expr: pl.Expr) -> pl.Expr:
        """Epoch microseconds back to the time column's own type."""
        out = pl.from_epoch(expr, time_unit="us")
        if self.tz is not None:
            out = out.dt.replace_time_zone("UTC").dt.convert_time_zone(self.tz)
        return out.cast(pl.Datetime(self.unit, self.tz))  # type: ignore[arg-type]

    def snapshot(self) -> dict[str, Any]:
        """The clock's state (JSON)."""
        return {"max_seen": self.max_seen, "unit": self.unit, "tz": self.tz}

    def restore(self, state: JSON) -> None:
        """Inverse of :meth:`snapshot`."""
        self.max_seen = state["max_seen"]
        self.unit = state["unit"]
        self.tz = state["tz"]


def late_letters(
    frame: pl.DataFrame, original: pl.DataFrame, mask: pl.Series
) -> pl.DataFrame | None:
    """Dead letters (reason ``late``) for the rows of ``original`` whose ``__row`` is marked."""
    if not mask.any():
        return None
    rows = frame.filter(mask).get_column("__row")
    return dead_letters(original[rows], "late")


def combine_dead(*frames: pl.DataFrame | None) -> pl.DataFrame | None:
    """Concatenate the dead-letter frames that exist."""
    present = [f for f in frames if f is not None and f.height]
    if not present:
        return None
    return present[0] if len(present) == 1 else pl.concat(present)

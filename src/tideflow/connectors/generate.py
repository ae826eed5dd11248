"""The ``generate`` source: synthetic records, seedable, by count or at a rate.

Values are a pure function of (seed, record index): records are produced in fixed blocks, each
from its own seeded generator, so a resumed run yields exactly the records an uninterrupted run
would have, whatever the batch boundaries.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, Literal

import polars as pl
from pydantic import Field

from tideflow.core.contracts import Context, Source, SourceBatch
from tideflow.core.settings import Settings
from tideflow.registry import component

_BLOCK = 4096
_COUNTRIES = ("US", "DE", "FR", "GB", "NL", "ES", "IT", "SE", "PL", "JP")
_FIRST = (
    "Ada",
    "Alan",
    "Grace",
    "Edsger",
    "Barbara",
    "Donald",
    "Frances",
    "Ken",
    "Margaret",
    "Dennis",
    "Radia",
    "John",
)
_LAST = (
    "Lovelace",
    "Turing",
    "Hopper",
    "Dijkstra",
    "Liskov",
    "Knuth",
    "Allen",
    "Thompson",
    "Hamilton",
    "Ritchie",
    "Perlman",
    "Backus",
)


class GenerateConfig(Settings):
    """Settings of ``generate``."""

    shape: Literal["sensors", "rooms", "orders", "sequence"] = Field(
        "sensors",
        description="`sensors`: readings per sensor with gaps (nulls) and spikes; `rooms`: "
        "people counts per room; `orders`: orders with PII columns (name, email, phone, card); "
        "`sequence`: just an `id` column.",
    )
    count: int | None = Field(
        None, ge=0, description="Records to produce; omit for an unbounded stream."
    )
    rate: float | None = Field(
        None, gt=0, description="Records per second; omit to produce as fast as possible."
    )
    seed: int = Field(0, description="Same seed, same records.")
    keys: int = Field(10, ge=1, description="Number of sensors / rooms / customers.")
    batch_size: int = Field(10_000, ge=1, description="Records per batch.")
    start: datetime = Field(
        datetime(2026, 1, 1, tzinfo=UTC), description="Event time of the first record."
    )
    interval: float = Field(
        1.0, gt=0, description="Seconds of event time between two readings of one key."
    )
    gap_rate: float = Field(0.02, ge=0, le=1, description="sensors: share of null readings.")
    spike_rate: float = Field(0.005, ge=0, le=1, description="sensors: share of spikes.")


def _labels(prefix: str, width: int, n: int) -> pl.Series:
    return pl.Series([f"{prefix}-{k:0{width}d}" for k in range(n)], dtype=pl.String)


def _block(cfg: GenerateConfig, block: int) -> pl.DataFrame:
    """Records ``block * _BLOCK`` up to the next block, from a generator seeded per block."""
    if cfg.shape == "sequence":
        start = block * _BLOCK
        return pl.DataFrame({"id": pl.int_range(start, start + _BLOCK, dtype=pl.Int64, eager=True)})
    # Imported here: numpy takes 0.1-0.2 s to import, a third of a small run's start-up, and
    # only the random shapes need it.
    import numpy as np

    rng = np.random.default_rng([cfg.seed, block])
    index = np.arange(block * _BLOCK, (block + 1) * _BLOCK, dtype=np.int64)
    key = index % cfg.keys
    start_us = int(cfg.start.timestamp() * 1_000_000)
    ts_us = start_us + (index // cfg.keys) * int(cfg.interval * 1_000_000)
    ts = pl.Series("ts", ts_us).cast(pl.Datetime("us", "UTC"))
    if cfg.shape == "sensors":
        base = 15.0 + (key % 7) * 1.5
        daily = 5.0 * np.sin(2 * np.pi * ((ts_us / 1e6) % 86_400) / 86_400)
        temp = base + daily + rng.normal(0, 0.3, _BLOCK)
        spikes = rng.random(_BLOCK) < cfg.spike_rate
        jump = rng.choice([-1, 1], _BLOCK) * rng.uniform(25, 40, _BLOCK)
        temp = np.where(spikes, temp + jump, temp)
        gaps = rng.random(_BLOCK) < cfg.gap_rate
        return pl.DataFrame(
            {
                "sensor_id": _labels("sensor", 3, cfg.keys).gather(key),
                "ts": ts,
                "temperature_c": pl.Series(np.where(gaps, np.nan, np.round(temp, 3))).fill_nan(
                    None
                ),
                "humidity": np.round(np.clip(45 + rng.normal(0, 8, _BLOCK), 0, 100), 2),
            }
        )
    if cfg.shape == "rooms":
        return pl.DataFrame(
            {
                "event_id": index,
                "room": _labels("room", 2, cfg.keys).gather(key),
                "ts": ts,
                "count": rng.integers(-2, 6, _BLOCK),
            }
        )
    first = np.asarray(_FIRST)[rng.integers(0, len(_FIRST), _BLOCK)]
    last = np.asarray(_LAST)[rng.integers(0, len(_LAST), _BLOCK)]
    digits = rng.integers(10**15, 10**16, _BLOCK, dtype=np.int64)
    names = pl.Series(first) + " " + pl.Series(last)
    return pl.DataFrame(
        {
            "order_id": index,
            "ts": ts,
            "customer_id": key,
            "customer_name": names,
            "email": (
                pl.Series(first).str.to_lowercase()
                + "."
                + pl.Series(last).str.to_lowercase()
                + "@example.com"
            ),
            "phone": pl.Series(rng.integers(10**9, 10**10, _BLOCK))
            .cast(pl.String)
            .str.replace(r"^(\d{3})(\d{3})(\d{4})$", "+1-$1-$2-$3"),
            "card_number": pl.Series(digits).cast(pl.String),
            "country": np.asarray(_COUNTRIES)[rng.integers(0, len(_COUNTRIES), _BLOCK)],
            "amount": np.round(rng.lognormal(3.5, 1.0, _BLOCK), 2),
            "currency": "EUR",
        }
    )


def generate_range(cfg: GenerateConfig, first: int, stop: int) -> pl.DataFrame:
    """Records ``first`` (inclusive) to ``stop`` (exclusive)."""
    blocks = range(first // _BLOCK, (stop - 1) // _BLOCK + 1)
    frame = pl.concat([_block(cfg, b) for b in blocks])
    offset = first - blocks[0] * _BLOCK
    return frame.slice(offset, stop - first)


@component("source", "generate")
class Generate(Source[GenerateConfig]):
    """Synthetic records: sensors, rooms, orders or a plain sequence."""

    config_model = GenerateConfig

    def __init__(self, config: GenerateConfig) -> None:
        super().__init__(config)
        self.bounded = config.count is not None
        self.next_index = 0
        self._ctx: Context | None = None
        self._started = 0.0
        self._start_index = 0

    def open(self, ctx: Context, position: Any) -> None:
        """Resume after the last record index in ``position``."""
        self._ctx = ctx
        self.next_index = int(position["index"]) if position else 0
        self._started = time.monotonic()
        self._start_index = self.next_index

    def expected_records(self) -> int | None:
        """What is left of ``count`` after earlier runs (None without a count)."""
        count = self.config.count
        return None if count is None else max(count - self._start_index, 0)

    def read_batch(self) -> SourceBatch | None:
        """The next batch, paced to ``rate`` if set."""
        cfg = self.config
        size = cfg.batch_size
        if cfg.count is not None:
            size = min(size, cfg.count - self.next_index)
            if size <= 0:
                return None
        if cfg.rate is not None:
            size = max(1, min(size, int(cfg.rate * 0.2)))
            due = self._started + (self.next_index + size - self._start_index) / cfg.rate
            delay = due - time.monotonic()
            if delay > 0 and self._ctx is not None and self._ctx.wait(delay):
                return SourceBatch(pl.DataFrame(), {"index": self.next_index})
        frame = generate_range(cfg, self.next_index, self.next_index + size)
        self.next_index += size
        return SourceBatch(frame, {"index": self.next_index})

    def notices(self) -> list[str]:
        """Why a run generated nothing: earlier runs generated every record already."""
        count = self.config.count
        if count is not None and self._start_index >= count:
            return [
                f"all {count:,} records were generated by earlier runs (`tideflow state show` "
                "shows the position; `tideflow state reset` generates them again)"
            ]
        return []

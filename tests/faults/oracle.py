"""The fault suite's three parts: a seeded record generator, an oracle, an exact-set checker.

The checker compares sets of records, never counts alone: ``lost = expected - actual`` and
``duplicated = rows - distinct keys``, plus rows whose values differ from the oracle's.
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass
from pathlib import Path

import polars as pl

FULL = os.environ.get("TIDEFLOW_FAULTS_FULL") == "1"
"""`make faults` runs every trial; CI runs a short version with fewer seeds."""


def trials(short: int, full: int) -> int:
    """How many seeded trials to run: ``full`` under `make faults`, ``short`` otherwise."""
    return full if FULL else short


def seeds(short: int, full: int, base: int = 1000) -> list[int]:
    """Deterministic seeds, so a failing trial is reproduced by its seed alone."""
    return [base + i for i in range(trials(short, full))]


def records(seed: int, n: int, keys: int = 50) -> pl.DataFrame:
    """``n`` records with a unique ``id``, a ``key`` and an integer ``value``."""
    rng = random.Random(seed)
    return pl.DataFrame(
        {
            "id": list(range(n)),
            "key": [f"k{rng.randrange(keys):03d}" for _ in range(n)],
            "value": [rng.randrange(-1000, 1000) for _ in range(n)],
        }
    )


@dataclass
class Diff:
    """What the actual output got wrong against the oracle."""

    lost: list[int]
    duplicated: list[int]
    unexpected: list[int]
    differing: list[int]

    @property
    def exact(self) -> bool:
        """True when the output is exactly the oracle's set of rows."""
        return not (self.lost or self.duplicated or self.unexpected or self.differing)

    def __str__(self) -> str:
        parts = [f"{name}={len(ids)} (first {ids[:5]})" for name, ids in vars(self).items() if ids]
        return ", ".join(parts) or "exact"


def compare(expected: pl.DataFrame, actual: pl.DataFrame, key: str = "id") -> Diff:
    """Exact-set comparison of ``actual`` with ``expected`` by ``key`` and every column."""
    if actual.height == 0:
        return Diff(expected[key].to_list(), [], [], [])
    actual = actual.select(expected.columns).cast(dict(expected.schema))
    counts = actual.group_by(key).len()
    duplicated = counts.filter(pl.col("len") > 1)[key].sort().to_list()
    lost = expected.join(actual, on=key, how="anti")[key].sort().to_list()
    unexpected = actual.join(expected, on=key, how="anti")[key].sort().to_list()
    distinct = actual.unique(subset=[key], keep="first")
    joined = expected.join(distinct, on=key, suffix="__actual")
    differs = pl.lit(False)
    for column in expected.columns:
        if column != key:
            differs = differs | pl.col(column).ne_missing(pl.col(f"{column}__actual"))
    differing = joined.filter(differs)[key].sort().to_list()
    return Diff(lost, duplicated, unexpected, differing)


def content_hash(frame: pl.DataFrame, key: str = "id") -> str:
    """A hash of the sorted rows: equal hashes mean equal content, whatever the file layout."""
    data = frame.sort(key).write_csv().encode()
    return hashlib.sha256(data).hexdigest()


def visible_parquet(folder: Path) -> list[Path]:
    """Committed Parquet files (hidden staging names excluded)."""
    return sorted(
        p
        for p in folder.rglob("*.parquet")
        if not any(part.startswith((".", "_")) for part in p.relative_to(folder).parts)
    )


def read_output(folder: Path) -> pl.DataFrame:
    """Every committed Parquet file under ``folder`` as one frame."""
    files = visible_parquet(folder)
    return pl.read_parquet(files) if files else pl.DataFrame()

"""Run pipelines against a test database; build and normalise typed test data."""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path
from typing import Any

import polars as pl

from tideflow.core.observer import RunObserver
from tideflow.core.result import RunResult
from tideflow.run.plan import engine_for
from tideflow.spec.loader import load_pipeline_text
from tideflow.state.store import StateStore


def run_yaml(
    base: Path,
    text: str,
    env: dict[str, str] | None = None,
    observer: RunObserver | None = None,
) -> RunResult:
    """Load pipeline YAML (``${VAR}`` from ``env``) and run it with ``base`` as its folder."""
    spec = load_pipeline_text(text, str(base / "pipeline.yaml"), environ=env or {})
    return engine_for(spec, base, observer=observer).run()


def dead_letter_rows(base: Path, pipeline: str) -> list[tuple[str, str]]:
    """(record JSON, reason) of every dead letter a pipeline under ``base`` recorded."""
    store = StateStore(base / ".tideflow" / "state.db")
    try:
        return [(d.record, d.reason) for d in store.ledger.letters(pipeline)]
    finally:
        store.close()


NASTY_TEXT = [
    "plain",
    "O'Brien",
    'say "hi"',
    "comma, separated",
    "line\nbreak",
    "tab\there",
    "back\\slash",
    "NULL",
    "",
    "ünïcödé 表 🚀",
    "'); DROP TABLE canary;--",
]


def typed_frame(n: int, seed: int = 1, start: int = 0) -> pl.DataFrame:
    """``n`` rows covering every common type, with nulls and hostile text."""
    rng = random.Random(seed)
    base = dt.datetime(2024, 1, 1)
    return pl.DataFrame(
        {
            "id": list(range(start, start + n)),
            "name": [None if rng.random() < 0.1 else rng.choice(NASTY_TEXT) for _ in range(n)],
            "amount": [
                None if rng.random() < 0.1 else round(rng.uniform(-1e6, 1e6), 3) for _ in range(n)
            ],
            "small": [rng.randrange(-30000, 30000) for _ in range(n)],
            "flag": [None if rng.random() < 0.1 else rng.random() < 0.5 for _ in range(n)],
            "day": [dt.date(2020, 1, 1) + dt.timedelta(days=rng.randrange(2000)) for _ in range(n)],
            "at": [base + dt.timedelta(microseconds=rng.randrange(10**14)) for _ in range(n)],
        },
        schema={
            "id": pl.Int64,
            "name": pl.String,
            "amount": pl.Float64,
            "small": pl.Int32,
            "flag": pl.Boolean,
            "day": pl.Date,
            "at": pl.Datetime("us"),
        },
    )


def normalise(actual: pl.DataFrame, like: pl.DataFrame) -> pl.DataFrame:
    """Cast what a plain driver returned to the expected schema (SQLite returns dates as
    text, MySQL booleans as integers, ...); columns in the expected order."""
    out = []
    for name, dtype in like.schema.items():
        col = actual.get_column(name)
        if col.dtype == pl.String and dtype == pl.Date:
            col = col.str.to_date()
        elif col.dtype == pl.String and isinstance(dtype, pl.Datetime):
            col = col.str.to_datetime(time_unit="us", time_zone=dtype.time_zone)
        elif isinstance(col.dtype, pl.Datetime) and isinstance(dtype, pl.Datetime):
            col = col.dt.cast_time_unit("us")
            if dtype.time_zone and not col.dtype.time_zone:  # type: ignore[union-attr]
                col = col.dt.replace_time_zone("UTC").dt.convert_time_zone(dtype.time_zone)
            elif dtype.time_zone:
                col = col.dt.convert_time_zone(dtype.time_zone)
        elif isinstance(col.dtype, pl.Decimal):
            col = col.cast(pl.Float64)
        out.append(col.cast(dtype).alias(name))
    return pl.DataFrame(out)


def write_parquet_input(
    base: Path, frame: pl.DataFrame, parts: int = 3, prefix: str = "part"
) -> None:
    """``frame`` as ``parts`` Parquet files under ``base/in``, read in order by name."""
    folder = base / "in"
    folder.mkdir(exist_ok=True)
    size = max(1, -(-frame.height // parts))
    for i, part in enumerate(frame.iter_slices(size)):
        part.write_parquet(folder / f"{prefix}-{i:03d}.parquet")


def sql_sink_pipeline(name: str, sink: dict[str, Any], batch_size: int = 40) -> str:
    """A file (Parquet) -> sql pipeline; ``sink`` keys are written as YAML flow values."""
    settings = "\n".join(f"    {k}: {_yaml(v)}" for k, v in sink.items())
    return (
        f"name: {name}\n"
        f"source: {{type: file, path: 'in/*.parquet', batch_size: {batch_size}}}\n"
        "sinks:\n"
        "  - type: sql\n"
        "    url: ${DB_URL}\n"
        f"{settings}\n"
    )


def _yaml(value: Any) -> str:
    import json

    return json.dumps(value)

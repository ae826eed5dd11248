"""Deterministic benchmark inputs, generated once into benchmarks/data/."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

DATA = Path(__file__).parent / "data"
COUNTRIES = np.array(["US", "DE", "FR", "GB", "NL", "ES", "IT", "SE", "PL", "JP"])


def orders(rows: int) -> Path:
    """A Parquet file of ``rows`` orders (written once, reused)."""
    path = DATA / f"orders-{rows}.parquet"
    if path.exists():
        return path
    DATA.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    writer = None
    chunk = 1_000_000
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        table = pa.table(
            {
                "id": np.arange(start, start + n, dtype=np.int64),
                "ts": pa.array(
                    (1_767_225_600_000_000 + np.arange(start, start + n) * 1_000_000).astype(
                        "datetime64[us]"
                    )
                ),
                "country": COUNTRIES[rng.integers(0, len(COUNTRIES), n)],
                "amount": np.round(rng.normal(50, 40, n), 2),
                "qty": rng.integers(1, 10, n),
            }
        )
        if writer is None:
            writer = pq.ParquetWriter(path.with_suffix(".tmp"), table.schema, compression="zstd")
        writer.write_table(table, row_group_size=250_000)
    assert writer is not None
    writer.close()
    path.with_suffix(".tmp").rename(path)
    return path


def orders_ndjson(rows: int, poisoned: bool) -> Path:
    """The orders as NDJSON; ``poisoned`` breaks every 100th line (1% malformed JSON)."""
    path = DATA / f"orders-{rows}{'-poisoned' if poisoned else ''}.ndjson"
    if path.exists():
        return path
    frame = pl.read_parquet(orders(rows))
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as out:
        for start in range(0, frame.height, 100_000):
            chunk = frame.slice(start, 100_000).write_ndjson().encode()
            if poisoned:
                lines = chunk.split(b"\n")
                for i in range(0, len(lines) - 1, 100):
                    lines[i] = lines[i][:-1]  # drop the closing brace
                chunk = b"\n".join(lines)
            out.write(chunk)
    tmp.rename(path)
    return path


def orders_ndjson_refused(rows: int) -> Path:
    """The orders as NDJSON with the poison of F6 that reaches a database: every 100th line
    malformed (1%), and every 1,000th record (0.1%, offset 50 so that the two never meet)
    with a negative ``qty``, which the target's ``CHECK (qty > 0)`` refuses."""
    path = DATA / f"orders-{rows}-refused.ndjson"
    if path.exists():
        return path
    frame = pl.read_parquet(orders(rows))
    frame = frame.with_columns(
        pl.when(pl.int_range(pl.len()) % 1000 == 50)
        .then(-pl.col("qty"))
        .otherwise(pl.col("qty"))
        .alias("qty")
    )
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as out:
        for start in range(0, frame.height, 100_000):
            lines = frame.slice(start, 100_000).write_ndjson().encode().split(b"\n")
            for i in range(0, len(lines) - 1, 100):
                lines[i] = lines[i][:-1]  # drop the closing brace
            out.write(b"\n".join(lines))
    tmp.rename(path)
    return path


def orders_csv(rows: int) -> tuple[Path, Path]:
    """The orders as CSV, and a second CSV with 10% of them changed (new amounts)."""
    first = DATA / f"orders-{rows}.csv"
    changed = DATA / f"orders-{rows}-changed.csv"
    if not (first.exists() and changed.exists()):
        frame = pl.read_parquet(orders(rows))
        frame.write_csv(first)
        rng = np.random.default_rng(2)
        ids = np.sort(rng.choice(rows, size=rows // 10, replace=False))
        frame.filter(pl.col("id").is_in(ids)).with_columns(
            (pl.col("amount") + 1).round(2)
        ).write_csv(changed)
    return first, changed


def events(rows: int) -> Path:
    """``rows`` events from 1,000 keys, one per millisecond-ish, each up to 5 s out of order."""
    path = DATA / f"events-{rows}.parquet"
    if path.exists():
        return path
    DATA.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    base = 1_767_225_600_000_000  # 2026-01-01 in microseconds
    step = 1_000  # one event per millisecond on average
    times = base + np.arange(rows, dtype=np.int64) * step
    jitter = rng.integers(0, 5_000_000, rows)  # up to 5 s late
    table = pa.table(
        {
            "ts": pa.array((times - jitter).astype("datetime64[us]")),
            "key": rng.integers(0, 1000, rows).astype(np.int32),
            "value": np.round(rng.normal(20, 5, rows), 3),
        }
    )
    pq.write_table(table, path.with_suffix(".tmp"), compression="zstd", row_group_size=500_000)
    path.with_suffix(".tmp").rename(path)
    return path


def notes(rows: int) -> Path:
    """A Parquet file of ``rows`` free-text notes; about a third carry an email, a phone
    number or a card number (half of the card numbers fail the Luhn check)."""
    path = DATA / f"notes-{rows}.parquet"
    if path.exists():
        return path
    DATA.mkdir(parents=True, exist_ok=True)
    i = pl.int_range(0, rows, eager=True)
    kind = i % 6
    text = (
        pl.select(
            pl.when(kind == 0)
            .then(pl.format("please write to user{}@example.com about order {}", i, i))
            .when(kind == 1)
            .then(pl.format("call +44 20 7946 {} before noon", (i % 10000).cast(str).str.zfill(4)))
            .when(kind == 2)
            .then(pl.lit("paid with card 4111 1111 1111 1111 yesterday"))
            .when(kind == 3)
            .then(pl.lit("paid with card 4111 1111 1111 1112 yesterday"))
            .otherwise(pl.format("order {} shipped on 2026-01-15 from warehouse 7", i))
        )
        .to_series()
        .alias("note")
    )
    tmp = path.with_suffix(".tmp")
    pl.DataFrame({"id": i, "note": text}).write_parquet(tmp, compression="zstd")
    tmp.rename(path)
    return path

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

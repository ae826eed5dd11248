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
    """The orders as CSV, and the re-run's CSV: every order again, 10% of them changed (new
    amounts), as a nightly full export would be."""
    first = DATA / f"orders-{rows}.csv"
    changed = DATA / f"orders-{rows}-rerun.csv"
    if not (first.exists() and changed.exists()):
        frame = pl.read_parquet(orders(rows))
        frame.write_csv(first)
        rng = np.random.default_rng(2)
        ids = np.sort(rng.choice(rows, size=rows // 10, replace=False))
        frame.with_columns(
            pl.when(pl.col("id").is_in(ids))
            .then((pl.col("amount") + 1).round(2))
            .otherwise(pl.col("amount"))
            .alias("amount")
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


def events_ndjson(rows: int) -> Path:
    """The events of :func:`events` as NDJSON with ``ts`` as ISO-8601 text (W1 from NDJSON)."""
    path = DATA / f"events-{rows}.ndjson"
    if path.exists():
        return path
    frame = pl.read_parquet(events(rows)).with_columns(
        pl.col("ts").dt.to_string("%Y-%m-%dT%H:%M:%S%.6fZ")
    )
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as out:
        for start in range(0, frame.height, 500_000):
            out.write(frame.slice(start, 500_000).write_ndjson().encode())
    tmp.rename(path)
    return path


def readings_csv(rows: int) -> Path:
    """A CSV of ``rows`` sensor readings ``id, sensor, v, ts`` (about 256 MB at 5M rows) for
    the CSV ETL workload; ``v`` is normal around 20, so ``v > 20`` keeps about half."""
    path = DATA / f"readings-{rows}.csv"
    if path.exists():
        return path
    DATA.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(4)
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as out:
        for start in range(0, rows, 1_000_000):
            n = min(1_000_000, rows - start)
            frame = pl.DataFrame(
                {
                    "id": np.arange(start, start + n, dtype=np.int64),
                    "sensor": np.char.add("sensor-", rng.integers(0, 1000, n).astype(str)),
                    "v": np.round(rng.normal(20, 5, n), 3),
                    "ts": (1_767_225_600_000_000 + np.arange(start, start + n) * 1_000).astype(
                        "datetime64[us]"
                    ),
                }
            )
            out.write(frame.write_csv(include_header=start == 0).encode())
    tmp.rename(path)
    return path


def rooms_ndjson(rows: int) -> Path:
    """``rows`` NDJSON messages ``{"room": ..., "count": ...}`` over 100 rooms (W3)."""
    path = DATA / f"rooms-{rows}.ndjson"
    if path.exists():
        return path
    DATA.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    frame = pl.DataFrame(
        {
            "room": np.char.add("room-", rng.integers(0, 100, rows).astype(str)),
            "count": rng.integers(0, 10, rows),
        }
    )
    tmp = path.with_suffix(".tmp")
    frame.write_ndjson(tmp)
    tmp.rename(path)
    return path


def keyed(rows: int, keys: int) -> Path:
    """A Parquet file of ``rows`` records (``k``, ``v``) over exactly ``keys`` distinct keys
    (every key once, the rest drawn at random), shuffled so that every batch touches keys
    from all over the key space (written once, reused)."""
    path = DATA / f"keyed-{rows}-{keys}.parquet"
    if path.exists():
        return path
    if keys > rows:
        raise ValueError(f"{keys} distinct keys need at least as many rows, not {rows}")
    DATA.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(4)
    k = np.concatenate([np.arange(keys), rng.integers(0, keys, rows - keys)]).astype(np.int64)
    rng.shuffle(k)
    table = pa.table({"k": k, "v": rng.integers(-1000, 1000, rows, dtype=np.int64)})
    pq.write_table(table, path.with_suffix(".tmp"), compression="zstd", row_group_size=500_000)
    path.with_suffix(".tmp").rename(path)
    return path


def keyed_updates(keys: int, changed: int, batches: int) -> Path:
    """Every one of ``keys`` keys once, then ``batches`` batches of ``changed`` records over
    the first ``changed`` keys: after the state is built, each checkpoint (one per batch)
    has the same ``changed`` keys to store whatever the total, so that its cost can be
    compared between state sizes (written once, reused)."""
    path = DATA / f"keyed-updates-{keys}-{changed}-{batches}.parquet"
    if path.exists():
        return path
    DATA.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    k = np.concatenate([np.arange(keys)] + [rng.permutation(changed) for _ in range(batches)])
    table = pa.table({"k": k.astype(np.int64), "v": np.ones(len(k), dtype=np.int64)})
    pq.write_table(table, path.with_suffix(".tmp"), compression="zstd", row_group_size=500_000)
    path.with_suffix(".tmp").rename(path)
    return path

"""Kafka's default partitioner (murmur2 of the key bytes), so that a key lands in the same
partition on the embedded log and on Kafka, and a pipeline can switch backends without
reordering any key's records.

The hash runs once per distinct key in a batch (not per record), then a join spreads the
partitions over the rows.
"""

from __future__ import annotations

import polars as pl

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's ``Utils.murmur2`` (seed 0x9747b28c), as an unsigned 32-bit value."""
    length = len(data)
    h = (0x9747B28C ^ length) & _MASK
    whole = length - length % 4
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    rest = length % 4
    if rest == 3:
        h ^= data[whole + 2] << 16
    if rest >= 2:
        h ^= data[whole + 1] << 8
    if rest >= 1:
        h ^= data[whole]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives ``key``."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def partitions_of(keys: pl.Series, partitions: int, round_robin_start: int = 0) -> pl.Series:
    """A partition per row: by key where there is one, round-robin for null keys."""
    if partitions == 1:
        return pl.Series("partition", [0] * keys.len(), dtype=pl.Int32)
    distinct = keys.drop_nulls().unique()
    table = pl.DataFrame(
        {
            "k": distinct,
            "partition": [partition_for(bytes(k), partitions) for k in distinct.to_list()],
        },
        schema={"k": pl.Binary, "partition": pl.Int32},
    )
    rows = pl.DataFrame({"k": keys.cast(pl.Binary)}).with_row_index("i")
    joined = rows.join(table, on="k", how="left").sort("i")
    spread = ((pl.col("i") + round_robin_start) % partitions).cast(pl.Int32)
    return joined.select(pl.col("partition").fill_null(spread)).to_series()

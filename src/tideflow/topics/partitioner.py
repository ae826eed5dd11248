"""Kafka's default partitioner (murmur2 of the key bytes), so that a key lands in the same
partition on the embedded log and on Kafka, and a pipeline can switch backends without
reordering any key's records.

The hash runs once per distinct key in a batch (not per record), then a join spreads the
partitions over the rows.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Literal

import polars as pl

Partitioner = Literal["murmur2", "crc32"]

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
    spread = (pl.int_range(0, keys.len(), eager=True) + round_robin_start) % partitions
    by_key = keyed_partitions(keys, partitions, "murmur2")
    return by_key.fill_null(spread.cast(pl.Int32)).cast(pl.Int32).rename("partition")


def crc32_partition_for(key: bytes, partitions: int) -> int:
    """The partition librdkafka's default partitioner (``consistent_random``, and
    ``consistent``) gives a non-null ``key``: its CRC32 modulo the partition count."""
    return zlib.crc32(key) % partitions


PARTITIONERS: dict[str, Callable[[bytes, int], int]] = {
    "murmur2": partition_for,
    "crc32": crc32_partition_for,
}


def keyed_partitions(keys: pl.Series, partitions: int, partitioner: Partitioner) -> pl.Series:
    """The partition ``partitioner`` gives each (non-null) key; null where a key is null
    (null keys are spread by producers, not by their key)."""
    pick = PARTITIONERS[partitioner]
    distinct = keys.drop_nulls().unique()
    table = pl.DataFrame(
        {"k": distinct, "p": [pick(bytes(k), partitions) for k in distinct.to_list()]},
        schema={"k": pl.Binary, "p": pl.Int32},
    )
    rows = pl.DataFrame({"k": keys.cast(pl.Binary)}).with_row_index("i")
    return rows.join(table, on="k", how="left").sort("i").get_column("p")

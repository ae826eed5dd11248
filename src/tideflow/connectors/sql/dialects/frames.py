"""Frame conversions the dialects share: Polars frames to what a bulk path loads (Arrow,
CSV, ISO text) and driver results back to frames of a given batch size."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import polars as pl
import pyarrow as pa


def json_columns(frame: pl.DataFrame) -> pl.DataFrame:
    """Nested columns (lists, structs) as JSON text: every database can load text."""
    nested = [c for c, t in frame.schema.items() if isinstance(t, pl.List | pl.Array | pl.Struct)]
    if not nested:
        return frame
    # Encoding a one-field struct and cutting off its wrapper keeps this in Polars.
    return frame.with_columns(
        pl.when(pl.col(c).is_not_null())
        .then(pl.struct(pl.col(c).alias("v")).struct.json_encode().str.slice(5).str.head(-1))
        .alias(c)
        for c in nested
    )


def arrow_table(frame: pl.DataFrame) -> pa.Table:
    """Arrow with plain (not view) strings, which every ADBC driver ingests."""
    table = json_columns(frame).to_arrow()
    schema = pa.schema(
        [
            f.with_type(pa.large_string()) if pa.types.is_string_view(f.type) else f
            for f in table.schema
        ]
    )
    return table.cast(schema)


def as_csv(frame: pl.DataFrame, utc_wall_time: bool = True) -> bytes:
    """CSV for a server-side bulk load into text columns: no header, strings quoted, null as
    an unquoted ``NULL`` (a quoted "NULL" stays a string), binary as hex."""
    text = temporal_as_text(frame, utc_wall_time).with_columns(pl.col(pl.Binary).bin.encode("hex"))
    return text.write_csv(
        include_header=False, null_value="NULL", quote_style="non_numeric"
    ).encode()


def temporal_as_text(frame: pl.DataFrame, utc_wall_time: bool = False) -> pl.DataFrame:
    """Dates and times as ISO text. ``utc_wall_time`` (MySQL, which has no zone-aware type)
    turns zone-aware times into UTC without an offset."""
    frame = json_columns(frame)
    exprs = []
    for name, dtype in frame.schema.items():
        col = pl.col(name)
        if isinstance(dtype, pl.Datetime):
            if dtype.time_zone and utc_wall_time:
                col = col.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
            zone = "" if utc_wall_time or not dtype.time_zone else "%:z"
            fmt = "%Y-%m-%d %H:%M:%S%.6f" + zone
            exprs.append(col.dt.strftime(fmt).alias(name))
        elif dtype in (pl.Date, pl.Time) or isinstance(dtype, pl.Decimal):
            exprs.append(col.cast(pl.String).alias(name))
    return frame.with_columns(exprs) if exprs else frame


def rechunk(reader: Any, batch_size: int) -> Iterator[pl.DataFrame]:
    """Regroup Arrow record batches into frames of ``batch_size`` rows."""
    pending: list[pa.RecordBatch] = []
    rows = 0
    yielded = False
    schema = reader.schema
    for batch in reader:
        pending.append(batch)
        rows += batch.num_rows
        while rows >= batch_size:
            table = pa.Table.from_batches(pending, schema=schema)
            yield _frame(table.slice(0, batch_size))
            yielded = True
            rest = table.slice(batch_size)
            pending, rows = rest.to_batches(), rest.num_rows
    if rows or not yielded:
        # An empty result still yields one empty frame: it carries the column types.
        yield _frame(pa.Table.from_batches(pending, schema=schema))


def _frame(table: pa.Table) -> pl.DataFrame:
    frame = pl.from_arrow(table, rechunk=False)
    assert isinstance(frame, pl.DataFrame)
    return frame


def row_batches(cur: Any, names: list[str], batch_size: int) -> Iterator[pl.DataFrame]:
    """Frames from a DB-API cursor's ``fetchmany`` (drivers without an Arrow path)."""
    first = True
    while True:
        rows = cur.fetchmany(batch_size)
        if not rows and not first:
            return
        first = False
        yield pl.DataFrame(rows, schema=names, orient="row", infer_schema_length=None)
        if len(rows) < batch_size:
            return

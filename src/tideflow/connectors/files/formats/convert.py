"""Typing read columns: a value that does not convert makes its row a dead letter instead of
failing the file (all formats, and records replayed from dead letters)."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from tideflow.connectors.files.formats.base import to_frame
from tideflow.core.contracts import dead_letters


def _castable(value: pa.Array, target: pa.DataType) -> bool:
    try:
        pc.cast(value, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return False
    return True


@functools.lru_cache(maxsize=128)
def _spellings_read_as(spellings: tuple[str, ...], target: pa.DataType) -> str:
    """What the null spellings that convert to ``target`` become: "none" when none converts,
    "nan" when all that do become NaN (floats read "NaN" and "nan"), else "values"."""
    read = []
    for spelling in spellings:
        try:
            read.append(pc.cast(pa.array([spelling], pa.string()), target)[0].as_py())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            continue
    if not read:
        return "none"
    return "nan" if all(isinstance(v, float) and math.isnan(v) for v in read) else "values"


def _cast_without_spellings(
    column: pa.ChunkedArray, target: pa.DataType, null_values: pa.Array
) -> pa.ChunkedArray | None:
    """``column`` cast to ``target`` in one go, when that is what nulling its null spellings
    first would give (no spelling of null is in it that converts to a value); else None."""
    kind = _spellings_read_as(tuple(null_values.to_pylist()), target)
    if kind == "values":
        return None
    try:
        cast = pc.cast(column, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return None
    if kind == "nan" and pc.any(pc.is_nan(cast)).as_py():
        return None  # "NaN" (null) or a NaN spelt otherwise: the spellings decide
    return cast


def convert_columns(
    table: pa.Table,
    targets: dict[str, pa.DataType],
    null_values: pa.Array | None,
    where: Callable[[np.ndarray], list[str]],
) -> tuple[pa.Table, pl.DataFrame | None, np.ndarray]:
    """Cast columns to ``targets``; rows with a value that does not convert become dead letters.

    The whole column is cast at once; only when that fails is the column walked value by value
    to find the offending rows. ``null_values`` (CSV) are the spellings of null in text that
    becomes another type (``NA``, ``null``...); text columns keep them as text.
    ``where(indices)`` describes rows for the reasons (file and row number). Returns the
    converted good rows, the dead letters and the indices of the dead rows.
    """
    converted = table
    problems: dict[int, list[str]] = {}
    for name, target in targets.items():
        index = table.schema.get_field_index(name)
        if index < 0:
            continue
        column = table.column(index)
        if (
            null_values is not None
            and pa.types.is_string(column.type)
            and not pa.types.is_string(target)
        ):
            # Most columns hold no spelling of null that would convert: one cast does.
            direct = _cast_without_spellings(column, target, null_values)
            if direct is not None:
                converted = converted.set_column(index, name, direct)
                continue
            column = pc.if_else(pc.is_in(column, value_set=null_values), None, column)
        if column.type == target:
            converted = converted.set_column(index, name, column)
            continue
        try:
            cast = pc.cast(column, target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            flat = column.combine_chunks()
            bad = np.zeros(len(flat), dtype=bool)
            for i in range(len(flat)):  # only on failure: find which values do not convert
                if flat[i].is_valid and not _castable(flat.slice(i, 1), target):
                    bad[i] = True
                    problems.setdefault(i, []).append(
                        f"column {name!r}: cannot read {flat[i].as_py()!r} as {target}"
                    )
            cast = pc.cast(pc.if_else(pa.array(bad), None, flat), target)
        converted = converted.set_column(index, name, cast)
    if not problems:
        return converted, None, np.array([], dtype=np.int64)
    rows = np.array(sorted(problems), dtype=np.int64)
    keep = np.ones(table.num_rows, dtype=bool)
    keep[rows] = False
    labels = where(rows)
    reasons = [f"{w}: {'; '.join(problems[int(r)])}" for w, r in zip(labels, rows, strict=True)]
    failed = to_frame(table.take(pa.array(rows)))
    dead = dead_letters(failed, pl.lit(pl.Series("reason", reasons, dtype=pl.String)))
    return converted.filter(pa.array(keep)), dead, rows


def convert_replayed(
    frame: pl.DataFrame,
    targets: dict[str, pa.DataType],
    null_values: pa.Array | None,
    labels: list[str],
) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """Records replayed from dead letters converted to ``targets`` as a read converts them:
    the rows that convert, and dead letters for those that do not (``labels[i]`` names row
    ``i`` in their reasons)."""
    table = frame.to_arrow()
    # Polars hands text over as string views; the conversion (and the null spellings) work
    # on plain strings, as a read produces them.
    plain = pa.schema(
        [
            f.with_type(pa.string())
            if pa.types.is_string_view(f.type) or pa.types.is_large_string(f.type)
            else f
            for f in table.schema
        ]
    )
    converted, dead, _ = convert_columns(
        table.cast(plain), targets, null_values, lambda rows: [labels[int(i)] for i in rows]
    )
    return to_frame(converted), dead

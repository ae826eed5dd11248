"""Column types: Polars dtypes to portable kinds, kinds to each dialect's SQL, and back.

A *kind* is the portable name of a column type (``bigint``, ``text``, ``timestamptz``...).
Inference maps a batch's Polars dtypes to kinds; each dialect spells a kind in its own SQL
and reads an existing column's declared type back into a kind, so that schema comparison and
widening are written once for every database.
"""

from __future__ import annotations

import re

import polars as pl

from tideflow.errors import ConfigError

KINDS = (
    "boolean",
    "smallint",
    "integer",
    "bigint",
    "real",
    "double",
    "decimal",
    "text",
    "date",
    "time",
    "timestamp",
    "timestamptz",
    "binary",
    "json",
)
"""Every portable kind, as accepted in a declared column's ``type``."""

# Widening chains: a column may move right along its chain (never left) under `evolve`.
_CHAINS = (("smallint", "integer", "bigint", "double"), ("real", "double"))


def kind_of(dtype: pl.DataType) -> str:
    """The kind that holds every value of a Polars dtype without loss."""
    if dtype == pl.Boolean:
        return "boolean"
    if dtype in (pl.Int8, pl.Int16, pl.UInt8):
        return "smallint"
    if dtype in (pl.Int32, pl.UInt16):
        return "integer"
    if dtype in (pl.Int64, pl.UInt32):
        return "bigint"
    if dtype == pl.UInt64 or isinstance(dtype, pl.Decimal):
        return "decimal"
    if dtype == pl.Float32:
        return "real"
    if dtype == pl.Float64:
        return "double"
    if dtype == pl.Date:
        return "date"
    if dtype == pl.Time:
        return "time"
    if isinstance(dtype, pl.Datetime):
        return "timestamptz" if dtype.time_zone else "timestamp"
    if dtype == pl.Binary:
        return "binary"
    if isinstance(dtype, pl.List | pl.Array | pl.Struct | pl.Object):
        return "json"
    return "text"


def fits(incoming: str, existing: str) -> bool:
    """True when every value of ``incoming`` kind loads into an ``existing`` column as is."""
    if existing in (incoming, "text"):
        return True
    if existing == "decimal" and incoming in ("smallint", "integer", "bigint"):
        return True
    return any(
        incoming in chain and existing in chain and chain.index(incoming) < chain.index(existing)
        for chain in _CHAINS
    )


def widened(incoming: str, existing: str) -> str | None:
    """The kind to widen an ``existing`` column to so it holds ``incoming``, if one exists."""
    for chain in _CHAINS:
        if {incoming, existing} <= set(chain) and chain.index(incoming) > chain.index(existing):
            return incoming
    return None


def check_kind(type_name: str) -> str:
    """Validate a declared column type: a kind, or ``decimal(p,s)`` / ``varchar(n)``."""
    base = type_name.strip().lower()
    if base in KINDS or re.fullmatch(r"(decimal|numeric)\(\d+\s*(,\s*\d+)?\)|varchar\(\d+\)", base):
        return base
    raise ConfigError(
        f"unknown column type {type_name!r}; expected one of {', '.join(KINDS)}, "
        "decimal(p,s) or varchar(n)"
    )


def base_kind(type_name: str) -> str:
    """The kind of a declared type: ``varchar(20)`` is text, ``decimal(10,2)`` decimal."""
    if type_name.startswith("varchar"):
        return "text"
    if type_name.startswith(("decimal", "numeric")):
        return "decimal"
    return type_name

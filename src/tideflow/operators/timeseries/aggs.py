"""Aggregations as mergeable partial states.

Each aggregation is kept as a few columns of partial state (count, sum, mean and M2, min,
max, first/last with their event time) that can be computed from single rows and merged by a
``group_by``: ``row -> partial``, ``partials -> partial`` (associative), ``partial -> value``.
State therefore stays one row per key and window however many records arrive.

``count_distinct``, ``median`` and ``quantile`` have no small mergeable state; for them the
raw values of *open* windows are kept (bounded by the open windows) and evaluated on close.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import polars as pl

from tideflow.operators.timeseries._common import T

AGGREGATIONS = (
    "count",
    "sum",
    "mean",
    "min",
    "max",
    "first",
    "last",
    "stddev",
    "variance",
    "count_distinct",
    "median",
    "quantile",
)
HOLISTIC = frozenset({"count_distinct", "median", "quantile"})
_ALIASES = {"avg": "mean", "std": "stddev", "var": "variance", "n_unique": "count_distinct"}
_CALL = re.compile(r"^\s*([A-Za-z_]+)\s*\(\s*([^,()]*?)\s*(?:,\s*([0-9.eE+-]+)\s*)?\)\s*$")


@dataclass(frozen=True)
class AggSpec:
    """One output column: ``output = func(column[, q])``."""

    output: str
    func: str
    column: str | None
    q: float | None = None

    @classmethod
    def parse(cls, output: str, text: str) -> AggSpec:
        """Parse ``"mean(temp)"``, ``"count()"``, ``"quantile(temp, 0.9)"``; raise
        ``ValueError`` with the accepted forms otherwise."""
        match = _CALL.match(text)
        if not match:
            raise ValueError(
                f"{output}: {text!r} is not an aggregation; write `func(column)`, e.g. "
                "`mean(temperature)`, `count()` or `quantile(temperature, 0.9)`"
            )
        func = _ALIASES.get(match.group(1).lower(), match.group(1).lower())
        column = match.group(2) or None
        if func not in AGGREGATIONS:
            raise ValueError(f"{output}: unknown aggregation {func!r}; use one of {AGGREGATIONS}")
        if column == "*":
            column = None
        if column is None and func != "count":
            raise ValueError(f"{output}: {func}() needs a column, e.g. {func}(value)")
        q = match.group(3)
        if func == "quantile":
            if q is None or not 0 <= float(q) <= 1:
                raise ValueError(f"{output}: write quantile(column, q) with 0 <= q <= 1")
            return cls(output, func, column, float(q))
        if q is not None:
            raise ValueError(f"{output}: {func} takes one column, got a second argument")
        return cls(output, func, column)

    @property
    def holistic(self) -> bool:
        """Needs the raw values (no small mergeable state)."""
        return self.func in HOLISTIC


def parse_aggregations(mapping: dict[str, str]) -> list[AggSpec]:
    """Parse ``{output: "func(column)"}``."""
    return [AggSpec.parse(name, text) for name, text in mapping.items()]


def columns_used(specs: list[AggSpec]) -> list[str]:
    """Input columns read by the aggregations (for a clear missing-column error)."""
    return sorted({s.column for s in specs if s.column is not None})


def raw_column(column: str) -> str:
    """Name of a raw value column kept in state for holistic aggregations."""
    return f"__r_{column}"


def raw_exprs(specs: list[AggSpec]) -> list[pl.Expr]:
    """The raw value columns holistic aggregations keep for open windows."""
    cols = sorted({s.column for s in specs if s.holistic and s.column is not None})
    return [pl.col(c).alias(raw_column(c)) for c in cols]


def _p(i: int, part: str) -> str:
    return f"__a{i}_{part}"


def row_exprs(specs: list[AggSpec]) -> list[pl.Expr]:
    """Partial state of each aggregation for one row (no group_by needed)."""
    out: list[pl.Expr] = []
    for i, s in enumerate(specs):
        if s.holistic:
            continue
        col = pl.col(s.column) if s.column is not None else pl.lit(None)
        present = col.is_not_null().cast(pl.Int64)
        if s.func == "count":
            out.append((pl.lit(1, pl.Int64) if s.column is None else present).alias(_p(i, "n")))
        elif s.func == "sum":
            out.append(col.alias(_p(i, "s")))
        elif s.func == "mean":
            out += [col.cast(pl.Float64).alias(_p(i, "s")), present.alias(_p(i, "n"))]
        elif s.func in ("min", "max"):
            out.append(col.alias(_p(i, "v")))
        elif s.func in ("first", "last"):
            out += [col.alias(_p(i, "v")), pl.col(T).alias(_p(i, "t"))]
        else:  # stddev, variance: count, mean and M2 (Chan et al.'s parallel algorithm)
            out += [
                present.alias(_p(i, "n")),
                col.cast(pl.Float64).alias(_p(i, "m")),
                pl.lit(0.0).alias(_p(i, "q")),
            ]
    return out


def merge_exprs(specs: list[AggSpec]) -> list[pl.Expr]:
    """Merge partial states of one group (inside ``group_by().agg``). Rows of a group keep
    their order, so on equal event times ``first`` keeps the earliest arrival and ``last`` the
    latest, as a stable sort by time would."""
    out: list[pl.Expr] = []
    for i, s in enumerate(specs):
        if s.holistic:
            continue
        if s.func == "count":
            out.append(pl.col(_p(i, "n")).sum())
        elif s.func == "sum":
            out.append(pl.col(_p(i, "s")).sum())
        elif s.func == "mean":
            out += [pl.col(_p(i, "s")).sum(), pl.col(_p(i, "n")).sum()]
        elif s.func == "min":
            out.append(pl.col(_p(i, "v")).min())
        elif s.func == "max":
            out.append(pl.col(_p(i, "v")).max())
        elif s.func == "first":
            by_time = pl.col(_p(i, "v")).sort_by(_p(i, "t"), maintain_order=True)
            out += [by_time.first(), pl.col(_p(i, "t")).min()]
        elif s.func == "last":
            by_time = pl.col(_p(i, "v")).sort_by(_p(i, "t"), maintain_order=True)
            out += [by_time.last(), pl.col(_p(i, "t")).max()]
        else:
            n, m, q = pl.col(_p(i, "n")), pl.col(_p(i, "m")), pl.col(_p(i, "q"))
            total = n.sum()
            # A group with no values gets mean 0, not NaN: 0 * NaN would poison later merges.
            mean = pl.when(total > 0).then((n * m).sum() / total).otherwise(pl.lit(0.0))
            out += [
                total.alias(_p(i, "n")),
                mean.alias(_p(i, "m")),
                (q + n * (m - mean) ** 2).sum().alias(_p(i, "q")),
            ]
    return out


def final_exprs(specs: list[AggSpec]) -> list[pl.Expr]:
    """Values of the mergeable aggregations from merged partial state."""
    out: list[pl.Expr] = []
    for i, s in enumerate(specs):
        if s.holistic:
            continue
        if s.func == "count":
            value = pl.col(_p(i, "n"))
        elif s.func == "sum":
            value = pl.col(_p(i, "s"))
        elif s.func == "mean":
            n = pl.col(_p(i, "n"))
            value = pl.when(n > 0).then(pl.col(_p(i, "s")) / n)
        elif s.func in ("min", "max", "first", "last"):
            value = pl.col(_p(i, "v"))
        else:
            n = pl.col(_p(i, "n"))
            variance = pl.when(n > 1).then(pl.col(_p(i, "q")) / (n - 1))
            value = variance if s.func == "variance" else variance.sqrt()
        out.append(value.alias(s.output))
    return out


def holistic_exprs(specs: list[AggSpec]) -> list[pl.Expr]:
    """Holistic aggregations over raw value columns (inside ``group_by().agg``)."""
    out: list[pl.Expr] = []
    for s in specs:
        if not s.holistic or s.column is None:
            continue
        col = pl.col(raw_column(s.column))
        if s.func == "count_distinct":
            value = col.n_unique()
        elif s.func == "median":
            value = col.median()
        else:
            value = col.quantile(s.q or 0.0, interpolation="nearest")
        out.append(value.alias(s.output))
    return out

"""SQL-like expressions (``amount > 0 and country != 'US'``) evaluated as Polars expressions.

The grammar and most functions are Polars SQL's. Two things are added on top of it:

* Expressions are evaluated against the batch's real schema (through a ``SQLContext``) when
  Polars cannot translate them without types, so ``date_trunc('day', ordered_at)`` works
  whenever ``ordered_at`` is a date or datetime. At validation time the types declared
  upstream (a source's ``schema_overrides``, ``cast`` steps) are used the same way, see
  :meth:`Expression.check`.
* Functions Polars SQL lacks (``regexp_matches``, ``sha256``, ...) are listed in
  :data:`EXTENSIONS`. A call to one is cut out of the SQL text, its arguments are evaluated as
  SQL, the function runs on the whole column, and its result is put back as a hidden column.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import polars as pl
from pydantic import AfterValidator

from tideflow.errors import ConfigError, PipelineError

_HIDDEN = "__tf_fn_"
_TABLE = "__tf_batch"
# Polars translates these only when it knows the argument's type; we then evaluate the text
# against a frame that has the types instead.
_NEEDS_TYPES = ("cannot determine the type",)


def _hash(algorithm: str) -> Callable[[list[Any]], pl.Series]:
    # Neither Polars nor pyarrow has a cryptographic hash kernel, so this is one pass of
    # hashlib over the column's values (nulls stay null); the rest of the expression stays
    # columnar.
    def run(args: list[Any]) -> pl.Series:
        values = args[0].cast(pl.String).to_list()
        return pl.Series(
            [None if v is None else hashlib.new(algorithm, v.encode()).hexdigest() for v in values],
            dtype=pl.String,
        )

    return run


@dataclass(frozen=True)
class Extension:
    """A function tideflow adds to Polars SQL; ``literals`` marks arguments that must be
    string literals (regular expressions), the others are SQL expressions."""

    name: str
    arity: tuple[int, int]
    literals: tuple[int, ...]
    run: Callable[[list[Any]], pl.Series]


EXTENSIONS: dict[str, Extension] = {
    ext.name: ext
    for ext in (
        Extension(
            "regexp_matches",
            (2, 2),
            (1,),
            lambda a: a[0].cast(pl.String).str.contains(a[1]),
        ),
        Extension(
            "regexp_extract",
            (2, 3),
            (1, 2),
            lambda a: a[0].cast(pl.String).str.extract(a[1], int(a[2]) if len(a) > 2 else 0),
        ),
        Extension(
            "regexp_count",
            (2, 2),
            (1,),
            lambda a: a[0].cast(pl.String).str.count_matches(a[1]).cast(pl.Int64),
        ),
        Extension("md5", (1, 1), (), _hash("md5")),
        Extension("sha1", (1, 1), (), _hash("sha1")),
        Extension("sha256", (1, 1), (), _hash("sha256")),
        Extension("sha512", (1, 1), (), _hash("sha512")),
    )
}
"""Functions evaluated by tideflow rather than Polars SQL, by lower-case name."""


# -- rewriting extension calls out of the SQL text ------------------------------------------

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _skip_quoted(text: str, i: int) -> int:
    """Index after the quoted literal or identifier starting at ``i`` ('' escapes a quote)."""
    quote = text[i]
    j = i + 1
    while j < len(text):
        if text[j] == quote:
            if j + 1 < len(text) and text[j + 1] == quote:
                j += 2
                continue
            return j + 1
        j += 1
    raise ValueError(f"unterminated {quote} quote")


def _split_call(text: str, open_at: int) -> tuple[list[str], int]:
    """Split the arguments of the call whose ``(`` is at ``open_at``; return them and the
    index after the closing parenthesis."""
    depth, start, args, i = 0, open_at + 1, [], open_at
    while i < len(text):
        ch = text[i]
        if ch in "'\"":
            i = _skip_quoted(text, i)
            continue
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                args.append(text[start:i])
                return ([] if not "".join(args).strip() and len(args) == 1 else args), i + 1
        elif ch == "," and depth == 1:
            args.append(text[start:i])
            start = i + 1
        i += 1
    raise ValueError("unbalanced parentheses")


def _literal(arg: str, name: str, position: int) -> str:
    arg = arg.strip()
    if len(arg) >= 2 and arg[0] == arg[-1] == "'":
        return arg[1:-1].replace("''", "'")
    if position == 2 and arg.isdigit():  # regexp_extract's group number
        return arg
    raise ValueError(f"argument {position + 1} of {name}() must be a quoted string literal")


@dataclass(frozen=True)
class _Call:
    extension: Extension
    args: tuple[str | None, ...]  # SQL text, or None where the literal is used
    literals: tuple[str | None, ...]


def _rewrite(text: str, calls: list[_Call]) -> str:
    """Replace every extension call with a hidden column name, innermost calls first."""
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch in "'\"":
            j = _skip_quoted(text, i)
            out.append(text[i:j])
            i = j
            continue
        match = _WORD.match(text, i)
        if not match or (i > 0 and (text[i - 1].isalnum() or text[i - 1] == "_")):
            out.append(ch)
            i += 1
            continue
        word, end = match.group(), match.end()
        k = end
        while k < len(text) and text[k].isspace():
            k += 1
        ext = EXTENSIONS.get(word.lower())
        if ext is None or k >= len(text) or text[k] != "(":
            out.append(word)
            i = end
            continue
        raw, i = _split_call(text, k)
        low, high = ext.arity
        if not low <= len(raw) <= high:
            want = str(low) if low == high else f"{low} to {high}"
            raise ValueError(f"{ext.name}() takes {want} argument(s), got {len(raw)}")
        args: list[str | None] = []
        literals: list[str | None] = []
        for n, arg in enumerate(raw):
            if n in ext.literals:
                args.append(None)
                literals.append(_literal(arg, ext.name, n))
            else:
                args.append(_rewrite(arg, calls))
                literals.append(None)
        calls.append(_Call(ext, tuple(args), tuple(literals)))
        out.append(f'"{_HIDDEN}{len(calls) - 1}"')
    return "".join(out)


_KEYWORDS = frozenset(
    {
        *("and", "or", "not", "is", "null", "true", "false", "in", "between", "like", "ilike"),
        *("case", "when", "then", "else", "end", "cast", "as", "date", "time", "timestamp"),
        *("interval", "from", "for", "distinct"),
    }
)


def _columns(text: str) -> set[str]:
    """Names the expression may use as columns: words outside quotes that are not function
    names or keywords, and double-quoted identifiers. Over-approximates (a type name in
    ``CAST(x AS int)`` counts), which only makes :meth:`Expression.check` judge less."""
    names: set[str] = set()
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "'":
            i = _skip_quoted(text, i)
            continue
        if ch == '"':
            j = _skip_quoted(text, i)
            names.add(text[i + 1 : j - 1].replace('""', '"'))
            i = j
            continue
        match = _WORD.match(text, i)
        if not match or (i > 0 and (text[i - 1].isalnum() or text[i - 1] == "_")):
            i += 1
            continue
        rest = text[match.end() :].lstrip()
        word = match.group()
        if not rest.startswith("(") and word.lower() not in _KEYWORDS:
            names.add(word)
        i = match.end()
    return names


# -- evaluation -----------------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def _translate(text: str) -> pl.Expr | None:
    """The Polars expression for ``text``, translated once; None when its translation needs
    the argument types (then each batch is evaluated through a ``SQLContext``)."""
    try:
        return pl.sql_expr(text)
    except Exception as exc:  # Polars raises several types for bad SQL
        if not any(m in str(exc) for m in _NEEDS_TYPES):
            raise
        return None


def _sql(text: str, frame: pl.DataFrame) -> pl.Series:
    """Evaluate one SQL expression over ``frame``, with its types known; length = height."""
    expr = _translate(text)
    if expr is not None:
        series = frame.select(expr.alias("v")).to_series()
    else:
        series = (
            pl.SQLContext({_TABLE: frame}, eager=True)
            # The user's own expression, run by Polars over this one in-memory frame (the
            # only table the context knows): no database is behind it.
            .execute(f'SELECT {text} AS "v" FROM "{_TABLE}"')  # nosec B608
            .to_series()
        )
    if series.len() == 1 and frame.height != 1:
        series = series.new_from_index(0, frame.height)
    return series


class Expression:
    """A compiled expression; ``where`` names the config field for error messages."""

    def __init__(self, text: str, where: str) -> None:
        self.text = text
        self.where = where
        self._calls: list[_Call] = []
        self._main = _rewrite(text, self._calls)

    def evaluate(self, frame: pl.DataFrame) -> pl.Series:
        """The expression's value for every row of ``frame``, computed column-wise."""
        try:
            work = frame
            for n, call in enumerate(self._calls):
                values: list[Any] = [
                    _sql(arg, work) if arg is not None else lit
                    for arg, lit in zip(call.args, call.literals, strict=True)
                ]
                work = work.with_columns(call.extension.run(values).alias(f"{_HIDDEN}{n}"))
            return _sql(self._main, work)
        except Exception as exc:  # report any Polars error with its field
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise PipelineError(f"{self.where}: cannot evaluate {self.text!r}: {message}") from exc

    def check(self, schema: Mapping[str, Any]) -> str | None:
        """Evaluate on an empty frame of the known column types; the problem, if any.

        Only an expression whose every column has a known type is judged: the type of any
        other column is known only at run time.
        """
        if not _columns(self.text) <= set(schema):
            return None
        try:
            self.evaluate(pl.DataFrame(schema=dict(schema)))
        except PipelineError as exc:
            return str(exc).partition(": ")[2]
        return None

    def output_type(self, schema: Mapping[str, Any]) -> Any | None:
        """The result's dtype over the known types, or None when it cannot be told."""
        if not _columns(self.text) <= set(schema):
            return None
        try:
            return self.evaluate(pl.DataFrame(schema=dict(schema))).dtype
        except PipelineError:
            return None


def compile_expr(text: str, where: str) -> Expression:
    """Compile a SQL expression; ``where`` names the field for the error message."""
    try:
        return Expression(text, where)
    except ValueError as exc:
        raise ConfigError(f"{where}: not a valid SQL expression {text!r}: {exc}") from None


def condition_mask(frame: pl.DataFrame, condition: Expression) -> pl.Series:
    """Evaluate a boolean condition; NULL counts as false, like SQL's WHERE."""
    return condition.evaluate(frame).fill_null(False).cast(pl.Boolean)


def _check_sql(text: str) -> str:
    try:
        calls: list[_Call] = []
        main = _rewrite(text, calls)
        for sql in [main, *(a for c in calls for a in c.args if a is not None)]:
            try:
                pl.sql_expr(sql)
            except Exception as exc:  # noqa: BLE001 - Polars raises several types for bad SQL
                # Type-dependent functions are checked against known types later.
                if not any(m in str(exc) for m in _NEEDS_TYPES):
                    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                    raise ValueError(message) from None
    except ValueError as exc:
        raise ValueError(f"not a valid SQL expression ({exc})") from None
    return text


SqlExpression = Annotated[str, AfterValidator(_check_sql)]
"""A config field holding a SQL expression, checked when the pipeline file is validated."""

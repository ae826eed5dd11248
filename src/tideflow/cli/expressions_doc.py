"""The expression language's reference, ``docs/expressions.md``, generated from the engine.

Every function listed here is evaluated through the engine when the page is generated (the
result column of each example comes from a real run), and ``tests/unit/test_expressions_doc.py``
compares each example's result with a value computed independently. Run
``python -m tideflow.cli.expressions_doc > docs/expressions.md`` after changing the list.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import polars as pl

from tideflow.core.expressions import EXTENSIONS, compile_expr


@dataclass(frozen=True)
class Function:
    """One documented function: how it is called, what it does, and an example over
    :func:`example_frame`."""

    name: str
    signature: str
    category: str
    description: str
    example: str


def example_frame() -> pl.DataFrame:
    """The table every example is evaluated on."""
    return pl.DataFrame(
        {
            "name": [" Ada Lovelace ", "grace HOPPER"],
            "email": ["ada@example.org", "grace@navy.mil"],
            "amount": [12.345, -7.5],
            "ordered_at": [datetime(2026, 1, 1, 9, 30), datetime(2026, 3, 15, 18, 5)],
            "note": [None, "n/a"],
        }
    )


_F = Function
FUNCTIONS: tuple[Function, ...] = (
    # dates and times
    _F(
        "date_trunc",
        "date_trunc(unit, ts)",
        "Dates and times",
        "Truncate a date or datetime to `unit` ('year', 'month', 'week', 'day', 'hour', ...). "
        "The column's type must be known: from the data, `schema_overrides` or a `cast`.",
        "date_trunc('day', ordered_at) = DATE '2026-01-01'",
    ),
    _F(
        "strftime",
        "strftime(ts, format)",
        "Dates and times",
        "Format a date or datetime as text with a strftime format.",
        "strftime(ordered_at, '%Y-%m')",
    ),
    _F(
        "date_part",
        "date_part(part, ts)",
        "Dates and times",
        "A field of a date or datetime ('year', 'month', 'day', 'hour', 'minute', ...).",
        "date_part('hour', ordered_at)",
    ),
    _F("year", "year(ts)", "Dates and times", "The year.", "year(ordered_at)"),
    _F("quarter", "quarter(ts)", "Dates and times", "The quarter, 1 to 4.", "quarter(ordered_at)"),
    _F("month", "month(ts)", "Dates and times", "The month, 1 to 12.", "month(ordered_at)"),
    _F("day", "day(ts)", "Dates and times", "The day of the month.", "day(ordered_at)"),
    _F(
        "dayofweek",
        "dayofweek(ts)",
        "Dates and times",
        "The day of the week, 0 (Sunday) to 6 (Saturday).",
        "dayofweek(ordered_at)",
    ),
    _F("hour", "hour(ts)", "Dates and times", "The hour, 0 to 23.", "hour(ordered_at)"),
    _F("minute", "minute(ts)", "Dates and times", "The minute, 0 to 59.", "minute(ordered_at)"),
    # text
    _F("lower", "lower(s)", "Text", "Lower case.", "lower(name)"),
    _F("upper", "upper(s)", "Text", "Upper case.", "upper(name)"),
    _F("initcap", "initcap(s)", "Text", "Each word capitalised.", "initcap(trim(name))"),
    _F("length", "length(s)", "Text", "Number of characters.", "length(name)"),
    _F("trim", "trim(s)", "Text", "Without leading and trailing spaces.", "trim(name)"),
    _F("ltrim", "ltrim(s)", "Text", "Without leading spaces.", "ltrim(name)"),
    _F("rtrim", "rtrim(s)", "Text", "Without trailing spaces.", "rtrim(name)"),
    _F(
        "substr",
        "substr(s, start, length)",
        "Text",
        "`length` characters from position `start` (1-based).",
        "substr(email, 1, 3)",
    ),
    _F("left", "left(s, n)", "Text", "The first `n` characters.", "left(email, 5)"),
    _F("right", "right(s, n)", "Text", "The last `n` characters.", "right(email, 3)"),
    _F(
        "replace",
        "replace(s, from, to)",
        "Text",
        "Every occurrence of the text `from` replaced by `to`.",
        "replace(email, '@', ' at ')",
    ),
    _F(
        "concat",
        "concat(a, b, ...)",
        "Text",
        "The arguments joined as text, like the concatenation operator.",
        "concat(trim(name), ' <', email, '>')",
    ),
    _F(
        "concat_ws",
        "concat_ws(sep, a, b, ...)",
        "Text",
        "The arguments joined with a separator.",
        "concat_ws('/', email, year(ordered_at))",
    ),
    _F(
        "starts_with",
        "starts_with(s, prefix)",
        "Text",
        "True when `s` starts with `prefix`.",
        "starts_with(email, 'ada')",
    ),
    _F(
        "ends_with",
        "ends_with(s, suffix)",
        "Text",
        "True when `s` ends with `suffix`.",
        "ends_with(email, '.mil')",
    ),
    _F(
        "strpos",
        "strpos(s, sub)",
        "Text",
        "1-based position of `sub` in `s`, 0 when absent.",
        "strpos(email, '@')",
    ),
    _F(
        "split_part",
        "split_part(s, sep, n)",
        "Text",
        "The `n`-th (1-based) piece of `s` split on `sep`.",
        "split_part(email, '@', 2)",
    ),
    _F(
        "lpad",
        "lpad(s, length, fill)",
        "Text",
        "Padded on the left with `fill` to `length` characters.",
        "lpad(left(email, 3), 6, '*')",
    ),
    _F(
        "reverse",
        "reverse(s)",
        "Text",
        "The characters in reverse order.",
        "reverse(left(email, 3))",
    ),
    # regular expressions
    _F(
        "regexp_like",
        "regexp_like(s, pattern)",
        "Regular expressions",
        "True when the regular expression matches somewhere in `s`.",
        "regexp_like(email, '\\.org$')",
    ),
    _F(
        "regexp_matches",
        "regexp_matches(s, 'pattern')",
        "Regular expressions",
        "The same as `regexp_like`; the pattern must be a string literal.",
        "regexp_matches(email, '^[a-z]+@navy')",
    ),
    _F(
        "regexp_replace",
        "regexp_replace(s, pattern, replacement)",
        "Regular expressions",
        "Every match replaced; `$1` in the replacement is the first group.",
        "regexp_replace(email, '@.*$', '@…')",
    ),
    _F(
        "regexp_extract",
        "regexp_extract(s, 'pattern'[, group])",
        "Regular expressions",
        "The first match (or its group `group`), null when there is none.",
        "regexp_extract(email, '@([a-z]+)\\.', 1)",
    ),
    _F(
        "regexp_count",
        "regexp_count(s, 'pattern')",
        "Regular expressions",
        "The number of non-overlapping matches.",
        "regexp_count(email, '[aeiou]')",
    ),
    # nulls and conditions
    _F(
        "coalesce",
        "coalesce(a, b, ...)",
        "Nulls",
        "The first argument that is not null.",
        "coalesce(note, 'none')",
    ),
    _F(
        "nullif",
        "nullif(a, b)",
        "Nulls",
        "Null when `a` equals `b`, else `a`.",
        "nullif(amount, -7.5)",
    ),
    # numbers
    _F("abs", "abs(x)", "Numbers", "The absolute value.", "abs(amount)"),
    _F(
        "round",
        "round(x, digits)",
        "Numbers",
        "Rounded to `digits` decimals (half away from zero).",
        "round(amount, 1)",
    ),
    _F("ceil", "ceil(x)", "Numbers", "The smallest integer value not below `x`.", "ceil(amount)"),
    _F("floor", "floor(x)", "Numbers", "The largest integer value not above `x`.", "floor(amount)"),
    _F("sign", "sign(x)", "Numbers", "-1, 0 or 1.", "sign(amount)"),
    _F("sqrt", "sqrt(x)", "Numbers", "The square root.", "sqrt(abs(amount))"),
    _F("power", "power(x, y)", "Numbers", "`x` to the power `y`.", "power(amount, 2)"),
    _F(
        "mod",
        "mod(x, y)",
        "Numbers",
        "The remainder of `x / y`; `x % y` does the same.",
        "mod(amount, 5)",
    ),
    _F(
        "greatest", "greatest(a, b, ...)", "Numbers", "The largest argument.", "greatest(amount, 0)"
    ),
    _F("least", "least(a, b, ...)", "Numbers", "The smallest argument.", "least(amount, 0)"),
    # hashes
    _F("md5", "md5(s)", "Hashes", "The MD5 digest of the text, 32 hex digits.", "md5(email)"),
    _F("sha1", "sha1(s)", "Hashes", "The SHA-1 digest of the text, 40 hex digits.", "sha1(email)"),
    _F(
        "sha256",
        "sha256(s)",
        "Hashes",
        "The SHA-256 digest of the text, 64 hex digits (e.g. to pseudonymise a key).",
        "sha256(lower(email))",
    ),
    _F(
        "sha512",
        "sha512(s)",
        "Hashes",
        "The SHA-512 digest of the text, 128 hex digits.",
        "sha512(email)",
    ),
)
"""Every function the reference documents, in page order."""


def evaluate_example(function: Function) -> list[Any]:
    """The example's values over :func:`example_frame`, computed by the engine's evaluator."""
    return compile_expr(function.example, function.name).evaluate(example_frame()).to_list()


def _cell(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        shown = value if len(value) <= 24 else value[:21] + "…"
        return f"`{shown!r}`".replace("|", "\\|")
    return f"`{value}`"


_INTRO = """\
# Expressions

<!-- generated by `python -m tideflow.cli.expressions_doc`; edit the function list there -->

`filter.expr`, `with_columns.columns`, `route.routes`, a sink's `when` and an alert's `where`
take an SQL expression, evaluated over whole columns (Polars SQL, plus the functions marked
*tideflow* below). Names are columns; quote a name that is not a plain word with double
quotes (`"unit price"`), text with single quotes (`'it''s'`).

## Operators and literals

| Syntax | Meaning |
|---|---|
| `a = b`, `a != b`, `a <> b`, `<`, `<=`, `>`, `>=` | Comparison; a comparison with null is null |
| `and`, `or`, `not` | Logic; a condition that is null counts as false |
| `+`, `-`, `*`, `/`, `%` | Arithmetic |
| `x is null`, `x is not null` | Null tests |
| `x in (1, 2)`, `x not in ('a', 'b')` | Membership |
| `x between 1 and 10` | Inclusive range |
| `s like 'A%'`, `s ilike '%ada%'` | Pattern: `%` any text, `_` one character; ilike ignores case |
| `case when c then a else b end` | Conditional value |
| `cast(x as int)`, `x::varchar` | Conversion |
| `extract(hour from ts)` | A field of a date or time, like `date_part` |
| `DATE '2026-01-01'`, `TIMESTAMP '2026-01-01 09:30:00'` | Date and datetime literals |
| `ts + INTERVAL '1 day'` | Date arithmetic |

`a || b` joins text (`'id-' || id`).

## Types

Functions such as `date_trunc` need to know a column's type. At run time it is the batch's
type. When the pipeline is validated, the types declared upstream are used: a file source's
`schema_overrides`, a `cast` step, and the expressions of `with_columns`. So
`tideflow validate` reports `date_trunc('day', amount)` on a `float64` column before anything
runs; an expression over a column whose type is known only from the data is checked when the
first batch arrives.

## Functions

Each example is evaluated on this table (the result column is the engine's output; the test
suite checks every one against a value computed independently):

| name | email | amount | ordered_at | note |
|---|---|---|---|---|
| `' Ada Lovelace '` | `'ada@example.org'` | `12.345` | `2026-01-01 09:30:00` | null |
| `'grace HOPPER'` | `'grace@navy.mil'` | `-7.5` | `2026-03-15 18:05:00` | `'n/a'` |

Functions marked *tideflow* are added to Polars SQL by tideflow. The hashes run `hashlib` over
the column's values in one pass (Polars and Arrow have no cryptographic hash kernel); every
other function is a columnar Polars expression.
"""


def render() -> str:
    """The whole Markdown page."""
    lines = [_INTRO]
    category = ""
    for function in FUNCTIONS:
        if function.category != category:
            category = function.category
            lines += [f"### {category}", "", "| Function | Description | Example | Result |"]
            lines.append("|---|---|---|---|")
        values = evaluate_example(function)
        origin = " *tideflow*" if function.name in EXTENSIONS else ""
        # Python-Markdown (the site) and GitHub disagree on `\|` inside a table's code span.
        if "|" in function.example + function.description:
            raise ValueError(f"{function.name}: a table cell cannot hold '|'")
        example, described = function.example, function.description
        result = " / ".join(_cell(v) for v in values)
        lines.append(f"| `{function.signature}`{origin} | {described} | `{example}` | {result} |")
        if (
            function is FUNCTIONS[-1]
            or FUNCTIONS[FUNCTIONS.index(function) + 1].category != category
        ):
            lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(), end="")

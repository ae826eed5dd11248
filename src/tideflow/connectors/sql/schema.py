"""Target tables: created from a batch's schema or a declared model, and kept in line with it.

:func:`plan` compares what the batch needs with what the database has and returns the DDL
to run under the sink's policy — ``evolve`` adds columns and widens types, ``strict`` refuses
any difference, ``recreate`` drops and rebuilds. ``tideflow schema plan`` prints the same
statements without running them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal

import polars as pl
from pydantic import Field, field_validator

from tideflow.connectors.sql.dialects.base import Grammar
from tideflow.connectors.sql.types import base_kind, check_kind, fits, kind_of, widened
from tideflow.core.settings import Settings
from tideflow.errors import PipelineError

SchemaPolicy = Literal["evolve", "strict", "recreate"]


class ColumnModel(Settings):
    """A declared target column; it overrides the type inferred from the data."""

    type: str = Field(
        description="A kind (boolean, smallint, integer, bigint, real, double, decimal, text, "
        "date, time, timestamp, timestamptz, binary, json), decimal(p,s) or varchar(n)."
    )
    nullable: bool = Field(True, description="False adds NOT NULL.")

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        return check_kind(value)


class IndexModel(Settings):
    """A declared index, created with the table."""

    columns: list[str] = Field(min_length=1, description="Indexed columns, in order.")
    unique: bool = Field(False, description="A unique index.")


class SchemaDifferenceError(PipelineError):
    """The target table does not match the data and the policy forbids changing it."""


@dataclass
class TablePlan:
    """DDL to bring a target table in line with the data, and the resulting columns."""

    statements: list[str] = field(default_factory=list)
    sql_types: dict[str, str] = field(default_factory=dict)
    """Column -> its SQL type once the DDL has run."""
    kinds: dict[str, str] = field(default_factory=dict)
    """Column -> its kind once the DDL has run."""


def wanted_columns(
    schema: pl.Schema | dict[str, pl.DataType], declared: dict[str, ColumnModel]
) -> dict[str, str]:
    """Columns the batch needs, declared types overriding inferred ones."""
    wanted = {name: kind_of(dtype) for name, dtype in schema.items()}
    wanted.update({name: col.type for name, col in declared.items()})
    return wanted


def plan(
    grammar: Grammar,
    table: str,
    db_schema: str | None,
    existing: dict[str, str] | None,
    wanted: dict[str, str],
    keys: list[str],
    declared: dict[str, ColumnModel],
    indexes: list[IndexModel],
    policy: SchemaPolicy,
) -> TablePlan:
    """The DDL needed so that ``wanted`` columns load into the table."""
    target = grammar.table(table, db_schema)
    missing_keys = [k for k in keys if k not in wanted]
    if missing_keys:
        raise SchemaDifferenceError(
            f"sql sink {table!r}: key column(s) {missing_keys} are not in the data "
            f"(columns: {list(wanted)})"
        )
    if existing is None:
        return _created(grammar, table, db_schema, wanted, keys, declared, indexes)
    have = {name: grammar.kind_of_sql(sql) for name, sql in existing.items()}
    problems: list[str] = []
    statements: list[str] = []
    result = TablePlan([], dict(existing), dict(have))
    for name, want in wanted.items():
        kind = base_kind(want)
        if name not in have:
            problems.append(f"column {name!r} ({want}) is not in the table")
            sql_type = grammar.sql_type(want)
            statements.append(f"ALTER TABLE {target} ADD COLUMN {grammar.quote(name)} {sql_type}")
            result.sql_types[name], result.kinds[name] = sql_type, kind
        elif not fits(kind, have[name]):
            wider = widened(kind, have[name])
            problems.append(f"column {name!r} is {existing[name]} but the data is {want}")
            if wider is None:
                statements.append("")
                continue
            sql_type = grammar.sql_type(wider)
            alter = grammar.alter_type(target, name, sql_type)
            if alter:
                statements.append(alter)
            result.sql_types[name], result.kinds[name] = sql_type, wider
    if not problems:
        return result
    where = f"sql sink: table {target} differs from the data: " + "; ".join(problems)
    if policy == "recreate":
        created = _created(grammar, table, db_schema, wanted, keys, declared, indexes)
        created.statements.insert(0, f"DROP TABLE {target}")
        return created
    if policy == "strict":
        raise SchemaDifferenceError(
            where + " (schema_policy is strict: change the table, or use evolve or recreate)"
        )
    if "" in statements:
        raise SchemaDifferenceError(
            where + " (evolve only adds columns and widens types; cast the column in a step, "
            "or use schema_policy: recreate)"
        )
    result.statements = statements
    return result


def _created(
    grammar: Grammar,
    table: str,
    db_schema: str | None,
    wanted: dict[str, str],
    keys: list[str],
    declared: dict[str, ColumnModel],
    indexes: list[IndexModel],
) -> TablePlan:
    target = grammar.table(table, db_schema)
    lines = []
    result = TablePlan()
    for name, want in wanted.items():
        sql_type = grammar.key_type(want) if name in keys else grammar.sql_type(want)
        result.sql_types[name], result.kinds[name] = sql_type, base_kind(want)
        not_null = name in keys or (name in declared and not declared[name].nullable)
        lines.append(f"{grammar.quote(name)} {sql_type}{' NOT NULL' if not_null else ''}")
    if keys:
        lines.append("PRIMARY KEY (" + ", ".join(grammar.quote(k) for k in keys) + ")")
    result.statements = [f"CREATE TABLE {target} (" + ", ".join(lines) + ")"]
    for index in indexes:
        unknown = [c for c in index.columns if c not in wanted]
        if unknown:
            raise SchemaDifferenceError(f"sql sink {table!r}: index on unknown column(s) {unknown}")
        digest = hashlib.sha1(
            "\x00".join([table, *index.columns]).encode(), usedforsecurity=False
        ).hexdigest()[:10]
        cols = ", ".join(grammar.index_column(c, wanted[c]) for c in index.columns)
        unique = "UNIQUE " if index.unique else ""
        result.statements.append(
            f"CREATE {unique}INDEX {grammar.quote(f'tf_idx_{digest}')} ON {target} ({cols})"
        )
    return result

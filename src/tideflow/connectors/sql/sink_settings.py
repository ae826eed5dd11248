"""Settings of the ``sql`` sink, and the names of the tables it keeps beside its target:
the checkpoint table (``transactional: true``) and the new table of a ``replace`` load."""

from __future__ import annotations

import hashlib
from typing import Literal

from pydantic import Field, model_validator

from tideflow.connectors.sql.schema import ColumnModel, IndexModel, SchemaPolicy
from tideflow.connectors.sql.urls import DatabaseSettings

CHECKPOINT_TABLE = "tideflow_checkpoints"
"""Where a transactional sink keeps the pipeline's checkpoint, in the target database."""


class SqlSinkConfig(DatabaseSettings):
    """Settings of the ``sql`` sink."""

    table: str = Field(description="Target table (created when missing).")
    db_schema: str | None = Field(
        None, description="Database schema (namespace) of the table; the default if unset."
    )
    mode: Literal["append", "upsert", "replace"] = Field(
        "append",
        description="append rows; upsert (merge on `key`); replace the table's contents "
        "(load a new table, swap it in atomically at the end of the run).",
    )
    key: list[str] = Field(
        default_factory=list, description="Key columns: the primary key; required by upsert."
    )
    schema_policy: SchemaPolicy = Field(
        "evolve",
        description="When the table differs from the data: evolve (add columns, widen "
        "types), strict (fail), recreate (drop and rebuild the table).",
    )
    columns: dict[str, ColumnModel] = Field(
        default_factory=dict,
        description="Declared columns (type, nullable) overriding the types inferred "
        "from the data; declared columns missing from the data are created as well.",
    )
    indexes: list[IndexModel] = Field(
        default_factory=list, description="Indexes created with the table."
    )
    schema_lock_timeout: float = Field(
        300.0,
        gt=0,
        description="Seconds to wait for another worker's or pipeline's change of the "
        "table's schema (creating it, adding columns) before failing with a message naming "
        "the lock; schema changes of one table are serialized by a database lock.",
    )
    transactional: bool = Field(
        False,
        description="Exactly-once: commit rows and the pipeline checkpoint in one "
        "transaction per checkpoint (PostgreSQL, SQLite; not MySQL, whose DDL commits "
        "implicitly, nor DuckDB, which has no savepoints).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> SqlSinkConfig:
        if self.mode == "upsert" and not self.key:
            raise ValueError("mode upsert needs `key`: the columns to merge on")
        if self.transactional:
            scheme = self.url.split("://", 1)[0].split("+", 1)[0].lower()
            if scheme not in ("postgresql", "postgres", "sqlite"):
                raise ValueError(
                    "transactional: true works with PostgreSQL and SQLite targets only "
                    f"(got {scheme!r}): MySQL commits implicitly on DDL and DuckDB has "
                    "no savepoints for isolating rejected rows"
                )
        return self


def replace_table_name(table: str) -> str:
    """The table a ``replace`` load fills before it is swapped in."""
    digest = hashlib.sha1(table.encode(), usedforsecurity=False).hexdigest()[:8]
    return f"{table[:40]}__tf_new_{digest}"

"""The state database's tables, one DDL template for both backends.

Columns are typed through placeholders the backend fills in (:func:`schema`): ``{real}``,
``{blob}`` and ``{serial}`` (an auto-numbered primary key). Every statement is ``CREATE ...
IF NOT EXISTS``, so opening a store creates what is missing and leaves the rest.
"""

from __future__ import annotations

SCHEMA_TEMPLATE = """
CREATE TABLE IF NOT EXISTS checkpoints (
    pipeline TEXT PRIMARY KEY,
    id INTEGER NOT NULL,
    created_at {real} NOT NULL,
    positions {blob} NOT NULL,
    sink_tokens {blob} NOT NULL
);
CREATE TABLE IF NOT EXISTS step_state (
    pipeline TEXT NOT NULL,
    step TEXT NOT NULL,
    data {blob} NOT NULL,
    PRIMARY KEY (pipeline, step)
);
CREATE TABLE IF NOT EXISTS state_deltas (
    pipeline TEXT NOT NULL,
    scope TEXT NOT NULL,
    step TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    data {blob} NOT NULL,
    PRIMARY KEY (pipeline, scope, step, epoch, seq)
);
CREATE TABLE IF NOT EXISTS partition_state (
    pipeline TEXT NOT NULL,
    source TEXT NOT NULL,
    part TEXT NOT NULL,
    owner TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    position {blob},
    states {blob},
    PRIMARY KEY (pipeline, source, part)
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id {serial},
    pipeline TEXT NOT NULL,
    step TEXT NOT NULL,
    reason TEXT NOT NULL,
    record TEXT NOT NULL,
    created_at {real} NOT NULL,
    run_id TEXT NOT NULL,
    replayed_at {real}
);
CREATE INDEX IF NOT EXISTS dead_letters_by_pipeline ON dead_letters (pipeline, step, reason);
CREATE TABLE IF NOT EXISTS store_info (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoint_leases (
    pipeline TEXT PRIMARY KEY,
    epoch INTEGER NOT NULL,
    owner TEXT NOT NULL,
    claimed_at {real} NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    pipeline TEXT NOT NULL,
    sink TEXT NOT NULL,
    checkpoint INTEGER NOT NULL,
    chunk INTEGER NOT NULL,
    data {blob} NOT NULL,
    PRIMARY KEY (pipeline, sink, checkpoint, chunk)
);
CREATE TABLE IF NOT EXISTS source_origins (
    pipeline TEXT NOT NULL,
    source TEXT NOT NULL,
    identity TEXT NOT NULL,
    described TEXT NOT NULL,
    PRIMARY KEY (pipeline, source)
);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    pipeline TEXT NOT NULL,
    started_at {real} NOT NULL,
    ended_at {real},
    status TEXT NOT NULL,
    counts {blob},
    error TEXT
);
CREATE TABLE IF NOT EXISTS run_processes (
    run_id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL
);
"""
"""The DDL of every table and index, with the backend's column types left as placeholders."""

SQLITE_TYPES = {"real": "REAL", "blob": "BLOB", "serial": "INTEGER PRIMARY KEY AUTOINCREMENT"}
"""The column types of the SQLite store."""

POSTGRES_TYPES = {"real": "DOUBLE PRECISION", "blob": "BYTEA", "serial": "BIGSERIAL PRIMARY KEY"}
"""The column types of the PostgreSQL store."""


def schema(types: dict[str, str]) -> str:
    """The DDL script of the state database in a backend's column ``types``."""
    return SCHEMA_TEMPLATE.format(**types)

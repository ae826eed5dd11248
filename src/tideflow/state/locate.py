"""Which state store a pipeline uses: its ``state:``, else ``TIDEFLOW_STATE``, else the
SQLite file ``.tideflow/state.db`` beside the pipeline file."""

from __future__ import annotations

import os
from pathlib import Path

from tideflow.state.postgres import PostgresStateStore
from tideflow.state.store import StateStore

STATE_VARIABLE = "TIDEFLOW_STATE"
"""The environment variable naming the state store of pipelines whose file sets no
``state:`` (how a deployment points every pipeline at one PostgreSQL store, from a secret)."""


def state_location(location: str | None) -> str | None:
    """A pipeline's ``state:``, else ``TIDEFLOW_STATE`` from the environment, else None (the
    SQLite file beside the pipeline)."""
    return location or os.environ.get(STATE_VARIABLE) or None


def open_state_store(location: str | None, base_dir: Path) -> StateStore:
    """The store named by a pipeline's ``state:`` (or ``TIDEFLOW_STATE``): a PostgreSQL URL,
    or a SQLite file path (relative to the pipeline file); ``.tideflow/state.db`` beside the
    pipeline by default."""
    location = state_location(location)
    if location and location.startswith(("postgresql://", "postgres://")):
        return PostgresStateStore(location, base_dir / ".tideflow")
    return StateStore(state_path(location, base_dir))


def state_path(location: str | None, base_dir: Path) -> Path:
    """Where a SQLite state store lives (``location`` as :func:`state_location` gives it)."""
    if location:
        path = Path(location)
        return path if path.is_absolute() else base_dir / path
    return base_dir / ".tideflow" / "state.db"


def state_dir(location: str | None, base_dir: Path) -> Path:
    """The folder of a pipeline's local state files (the embedded log, spilled messages):
    the SQLite store's, or ``.tideflow`` beside the pipeline with a PostgreSQL store."""
    location = state_location(location)
    if location and location.startswith(("postgresql://", "postgres://")):
        return base_dir / ".tideflow"
    return state_path(location, base_dir).parent

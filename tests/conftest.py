"""Shared fixtures: a clean registry, helpers to write pipeline files."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture
def write_pipeline(tmp_path: Path) -> Callable[[str, str], Path]:
    """Write dedented YAML to a file in tmp_path and return its path."""

    def write(text: str, name: str = "pipeline.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
        return path

    return write

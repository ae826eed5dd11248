"""Helpers for system tests: run the real CLI in a subprocess, read Parquet output back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import polars as pl

ROOT = Path(__file__).parents[2]
EXAMPLES = ROOT / "examples"


def cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run ``tideflow ARGS`` as a user would, in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "tideflow.cli.main", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


def start_cli(*args: str, cwd: Path | None = None) -> subprocess.Popen[str]:
    """Start ``tideflow ARGS`` without waiting for it."""
    return subprocess.Popen(
        [sys.executable, "-m", "tideflow.cli.main", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_parquet_tree(folder: Path) -> pl.DataFrame:
    """Every committed Parquet file under ``folder``, Hive partitions restored as columns.

    Hidden names (staging folders, markers) are skipped, as every tideflow reader does.
    """
    files = sorted(str(p) for p in folder.rglob("*.parquet") if not _hidden(p, folder))
    if not files:
        return pl.DataFrame()
    return pl.read_parquet(files, hive_partitioning=True)


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith((".", "_")) for part in path.relative_to(root).parts)

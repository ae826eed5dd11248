"""Helpers for system tests: run the real CLI in a subprocess, read Parquet output back."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
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


def paced_rooms(
    folder: Path, kafka: bool, pause: float, batch_size: int, every_records: int
) -> Path:
    """A copy of the rooms example in ``folder`` whose reckoning consumer pauses ``pause``
    seconds per batch of ``batch_size`` (so a fault lands mid-run) and checkpoints every
    ``every_records``; on Kafka each copy gets a topic name of its own.
    Returns the reckoning pipeline's path."""
    shutil.copytree(EXAMPLES / "rooms", folder, ignore=shutil.ignore_patterns("out", ".*"))
    if kafka:
        topic = f"rooms-{uuid.uuid4().hex[:12]}"  # never a name an earlier test used
        for name in ("publish.yaml", "coldstorage.yaml", "reckoning.yaml"):
            path = folder / name
            path.write_text(path.read_text().replace("rooms-v1", topic))
    (folder / "pace.py").write_text(
        f"import time\n\ndef pace(batch):\n    time.sleep({pause})\n    return batch\n",
        encoding="utf-8",
    )
    reckoning = folder / "reckoning.yaml"
    reckoning.write_text(
        reckoning.read_text()
        .replace(
            "steps:\n",
            'steps:\n  - {type: python, name: pace, function: "pace.py:pace", mode: batch}\n',
            1,
        )
        .replace("every_records: 2000", f"every_records: {every_records}")
        .replace("group: reckoning\n", f"group: reckoning\n  batch_size: {batch_size}\n")
        + "\n",
        encoding="utf-8",
    )
    return reckoning

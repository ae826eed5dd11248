"""Pipeline templates for ``tideflow init``: one per example in ``examples/``.

In a wheel the examples are packaged as ``tideflow/templates``; in a source checkout they are
read from the repository's ``examples/`` folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tideflow.errors import ConfigError
from tideflow.registry import suggest

_SKIP = shutil.ignore_patterns(".tideflow", "out", "__pycache__", "*.pyc", "test_*.py")


def templates_dir() -> Path:
    """Where the templates live in this installation."""
    packaged = Path(__file__).parent / "templates"
    if packaged.is_dir():
        return packaged
    checkout = Path(__file__).resolve().parents[2] / "examples"
    if checkout.is_dir():
        return checkout
    raise ConfigError("no templates found in this installation of tideflow")


def list_templates() -> dict[str, str]:
    """Template name -> the description line of its pipeline."""
    found = {}
    for folder in sorted(templates_dir().iterdir()):
        pipeline = folder / "pipeline.yaml"
        if pipeline.is_file():
            summary = ""
            for line in pipeline.read_text(encoding="utf-8").splitlines():
                if line.startswith("description:"):
                    summary = line.partition(":")[2].strip().strip("\"'")
                    break
            found[folder.name] = summary
    return found


def copy_template(name: str, target: Path) -> Path:
    """Copy a template folder to ``target`` (which must not exist yet)."""
    available = list_templates()
    if name not in available:
        raise ConfigError(f"unknown template {name!r}; {suggest(name, available)}")
    if target.exists():
        raise ConfigError(f"{target} already exists; choose another folder")
    shutil.copytree(templates_dir() / name, target, ignore=_SKIP)
    return target

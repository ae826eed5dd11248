"""Pipeline templates for ``tideflow init``: one per example in ``examples/``.

In a wheel the examples are packaged as ``tideflow/templates``; in a source checkout they are
read from the repository's ``examples/`` folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tideflow.errors import ConfigError, suggest

_SKIP = shutil.ignore_patterns(".tideflow", "out", "__pycache__", "*.pyc", "test_*.py")


def templates_dir() -> Path:
    """Where the templates live in this installation."""
    package = Path(__file__).resolve().parents[1]  # tideflow/
    packaged = package / "templates"
    if packaged.is_dir():
        return packaged
    checkout = package.parents[1] / "examples"
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


# What a template needs before its pipeline runs: a seed, a demo API, services. `{d}` is the
# folder `tideflow init` created. Templates not listed run with `tideflow run` alone.
_SEQUENCES: dict[str, tuple[str, ...]] = {
    "sql-etl": (
        "tideflow run {d}/seed.yaml       # create and fill the source table (SQLite shop.db)",
        "tideflow run {d}/pipeline.yaml   # load the orders into analytics.duckdb",
    ),
    "api-to-sql": (
        "python -m tideflow.testing.fake_api --port 8765 --records 1000 &"
        "   # a local demo API (or set API_URL)",
        "tideflow run {d}/pipeline.yaml   # the records into api.db",
    ),
    "api-to-parquet": (
        "python -m tideflow.testing.fake_api --port 8765 &   # a local demo API (or set API_URL)",
        "tideflow run {d}/pipeline.yaml",
    ),
    "api-to-api": (
        "python {d}/run_example.py   # serves its own three demo APIs, runs both pipelines",
    ),
    "iot": (
        "# needs Mosquitto (:1883), InfluxDB 1.x (:8086, database iot) and Redis (:6379); "
        "see {d}/README.md",
        "tideflow run {d}/pipeline.yaml",
        "python {d}/simulator.py --count 2000",
        "tideflow run {d}/pipeline.yaml",
    ),
}


def run_sequence(name: str, target: Path) -> list[str]:
    """The commands that run a template copied to ``target``, in order."""
    steps = _SEQUENCES.get(name, ("tideflow run {d}/pipeline.yaml",))
    return [step.replace("{d}", target.as_posix()) for step in steps]


def copy_template(name: str, target: Path) -> Path:
    """Copy a template folder to ``target`` (which must not exist yet)."""
    available = list_templates()
    if name not in available:
        raise ConfigError(f"unknown template {name!r}; {suggest(name, available)}")
    if target.exists():
        raise ConfigError(f"{target} already exists; choose another folder")
    shutil.copytree(templates_dir() / name, target, ignore=_SKIP)
    point_editors_at_schema(target)
    return target


SCHEMA_FILE = "tideflow.schema.json"
SCHEMA_LINE = f"# yaml-language-server: $schema={SCHEMA_FILE}"


def point_editors_at_schema(folder: Path) -> list[Path]:
    """Write the JSON Schema (``tideflow schema``) into ``folder`` and start each pipeline file
    there with the ``yaml-language-server`` line that points editors at it (completion and
    checks as you type). The schema is this installation's, plugins included, so it matches
    what ``tideflow validate`` accepts; a relative path works offline. Returns the files."""
    import json

    from tideflow.cli.docs import pipeline_json_schema

    pointed = []
    for path in sorted(folder.glob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        if not _is_pipeline(text) or text.startswith(SCHEMA_LINE):
            continue
        path.write_text(f"{SCHEMA_LINE}\n{text}", encoding="utf-8")
        pointed.append(path)
    if pointed:
        schema = json.dumps(pipeline_json_schema(), indent=2)
        (folder / SCHEMA_FILE).write_text(schema + "\n", encoding="utf-8")
    return pointed


def _is_pipeline(text: str) -> bool:
    """A pipeline file has a top-level ``source`` or ``sources`` key (not a test file)."""
    return any(line.startswith(("source:", "sources:")) for line in text.splitlines())

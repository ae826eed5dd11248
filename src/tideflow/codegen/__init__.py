"""Generates :mod:`tideflow.api`, the typed Python API, from the config models.

::

    python -m tideflow.codegen            # rewrite src/tideflow/api.py (also: make docs)
    python -m tideflow.codegen --check    # exit 1 when the committed module is stale

The models are the single source of truth, as for the JSON Schema and docs/connectors.md:
every built-in source and sink gets a constructor function and every built-in step a
:class:`~tideflow.Pipeline` method, whose keyword arguments are the model's fields (types,
defaults and descriptions included), so an editor completes them and ``mypy --strict``
rejects a misspelt one. A test regenerates the module and fails when it differs from the
committed file, or when a registered built-in has no typed entry point.

Plugins registered through entry points are not generated into tideflow's own module; they
keep the dynamic forms ``tf.connector(type, ...)`` / ``Pipeline.step(type, ...)`` (and the
attribute shortcuts at run time).

The package, one job a module: ``common`` (the tables shaping the API, text wrapping),
``render_types`` (annotations and TypedDicts), ``render_functions`` (constructors, step
methods and their docstrings), ``render_module`` (the module around them); this module
formats the result and writes or checks ``api.py``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tideflow.codegen.common import HAND_WRITTEN_STEPS, TARGET
from tideflow.codegen.render_module import Generator
from tideflow.registry import Registry

__all__ = ["HAND_WRITTEN_STEPS", "TARGET", "Generator", "generate", "main"]


def generate(registry: Registry | None = None) -> str:
    """The formatted source of :mod:`tideflow.api`."""
    if registry is None:
        from tideflow.registry import default_registry

        registry = default_registry
    return _ruff_format(Generator(registry).module())


def _ruff_format(text: str) -> str:
    """The project's formatter, so the committed module passes ``ruff format --check``."""
    root = Path(__file__).resolve().parents[3]
    try:
        done = subprocess.run(
            [sys.executable, "-m", "ruff", "format", "--stdin-filename", str(TARGET), "-"],
            input=text,
            capture_output=True,
            text=True,
            check=False,
            cwd=root,
        )
    except OSError as exc:
        raise RuntimeError(f"cannot run ruff to format the generated module: {exc}") from exc
    if done.returncode != 0:
        raise RuntimeError(
            "ruff could not format the generated module (install the dev extra: "
            f'pip install -e ".[dev]"): {done.stderr.strip()}'
        )
    return done.stdout


def main(argv: list[str] | None = None) -> int:
    """Write the module, or with ``--check`` report whether it is stale."""
    args = sys.argv[1:] if argv is None else argv
    text = generate()
    if "--check" in args:
        if TARGET.read_text(encoding="utf-8") != text:
            print(f"{TARGET} is stale: run `python -m tideflow.codegen`", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET}")
    return 0

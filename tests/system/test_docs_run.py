"""Every snippet of the documentation does what it says (issue 25).

The fenced blocks of README.md, docs/*.md and examples/*/README.md are read as a reader
would copy them:

- ```` ```yaml ```` blocks are complete pipelines: each must validate;
- ```` ```python ```` blocks run, each in a fresh folder, and must succeed;
- ```` ```bash ```` blocks must say what they are, in an HTML comment on the line before the
  fence: ``<!-- runnable -->`` (run here, in order, from a fresh copy of the examples, with
  ``tideflow`` on PATH; every command must succeed), ``<!-- tested-by: PATH -->`` (a system
  test runs them with the services they need; PATH must exist) or
  ``<!-- illustrative: why -->`` (servers, containers, placeholders; not run).

``illustrative`` (in that comment, or after the fence's language) exempts a YAML or Python
block too. Other blocks (json, text) are output or data, not instructions.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tideflow.spec.loader import load_pipeline_text

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted(
    [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "examples").glob("*/README.md")]
)
SHELLS = {"bash", "sh", "shell", "console"}
_FENCE = re.compile(r"^(\s*)```\s*([\w-]*)\s*(.*)$")
_MARK = re.compile(r"^<!--\s*(runnable|illustrative|tested-by)\b:?\s*(.*?)\s*-->$")


@dataclass(frozen=True)
class Block:
    """One fenced block: where it is, its language, how it is marked, and its text."""

    doc: Path
    line: int
    lang: str
    mark: str  # runnable, illustrative, tested-by or "" (none)
    note: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"


def blocks(doc: Path) -> list[Block]:
    """The fenced blocks of a Markdown file, with the marker comment before each."""
    found = []
    lines = doc.read_text(encoding="utf-8").splitlines()
    n = 0
    while n < len(lines):
        opening = _FENCE.match(lines[n])
        if not opening:
            n += 1
            continue
        indent, lang, info = opening.groups()
        previous = next((ln.strip() for ln in reversed(lines[:n]) if ln.strip()), "")
        marked = _MARK.match(previous)
        mark, note = marked.groups() if marked else ("", "")
        if "illustrative" in info.split():
            mark = "illustrative"
        end = n + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        body = [ln[len(indent) :] if ln.startswith(indent) else ln for ln in lines[n + 1 : end]]
        found.append(Block(doc, n + 1, lang.lower(), mark, note, "\n".join(body) + "\n"))
        n = end + 1
    return found


ALL = [b for doc in DOCS for b in blocks(doc)]


def of(lang: set[str], mark: str | None = None) -> list[Any]:
    chosen = [
        b
        for b in ALL
        if b.lang in lang and (b.mark == mark if mark is not None else b.mark != "illustrative")
    ]
    return [pytest.param(b, id=b.where) for b in chosen]


def test_the_documents_have_snippets_of_each_kind() -> None:
    # The parser finds what is there (a broken parser would make every test below vacuous).
    langs = {b.lang for b in ALL}
    assert {"yaml", "python", "bash"} <= langs
    assert sum(b.mark == "runnable" for b in ALL) >= 4


def test_every_command_block_says_whether_it_runs() -> None:
    unmarked = [b.where for b in ALL if b.lang in SHELLS and not b.mark]
    assert not unmarked, (
        "shell blocks without <!-- runnable -->, <!-- tested-by: PATH --> or "
        f"<!-- illustrative: why -->: {unmarked}"
    )
    for block in ALL:
        if block.mark == "tested-by":
            assert (ROOT / block.note).is_file(), f"{block.where}: no test {block.note}"
        if block.mark == "illustrative" and block.lang in SHELLS:
            assert block.note, f"{block.where}: say why the block is not run"


@pytest.mark.parametrize("block", of({"yaml", "yml"}))
def test_yaml_snippets_are_pipelines_that_validate(block: Block) -> None:
    # Variables without a default stand for what the reader sets; any text validates there.
    names = re.findall(r"\$\{(\w+)\}", block.text)
    spec = load_pipeline_text(block.text, block.where, environ=dict.fromkeys(names, "x"))
    assert spec.name and spec.all_sources and spec.all_sinks


@pytest.mark.parametrize("block", of({"python"}))
def test_python_snippets_run(block: Block, tmp_path: Path) -> None:
    script = tmp_path / "snippet.py"
    script.write_text(block.text, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, f"{block.where}\n{done.stdout}\n{done.stderr}"


@pytest.mark.slow
@pytest.mark.parametrize("block", of(SHELLS, "runnable"))
def test_runnable_commands_succeed_from_a_fresh_copy(block: Block, tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    shutil.copytree(
        ROOT / "examples",
        clone / "examples",
        ignore=shutil.ignore_patterns("out", ".tideflow", "*.db", "*.duckdb", "__pycache__"),
    )
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.pop("KAFKA_BROKER", None)  # the documents' commands run on the embedded log
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block.text],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert done.returncode == 0, f"{block.where}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"


@pytest.mark.slow
def test_the_sequence_init_prints_runs(tmp_path: Path) -> None:
    # `tideflow init sql-etl` then what it prints, as a newcomer would (issue 25: the seed
    # step was missing, so the run failed on a table that did not exist).
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    made = subprocess.run(
        ["tideflow", "init", "sql-etl", "shop"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    commands = [line.strip() for line in made.stdout.splitlines()[1:] if line.strip()]
    assert len(commands) == 2 and "seed.yaml" in commands[0]
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", "\n".join(commands)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert "sql-etl: succeeded" in done.stdout

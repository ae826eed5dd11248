"""S2: static security checks — bandit over the source, pip-audit over the installed packages
(or, where PyPI answers only for projects, their latest releases' advisories)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

import pytest

SRC = Path(__file__).parents[2] / "src"


def _tool(name: str) -> str:
    path = shutil.which(name, path=str(Path(sys.executable).parent))
    assert path, f"{name} is part of the dev extra; reinstall with `pip install -e .[dev]`"
    return path


def test_s2_bandit_finds_no_medium_or_high_severity_issue() -> None:
    run = subprocess.run(
        [_tool("bandit"), "-r", str(SRC), "-f", "json", "-q"],
        capture_output=True,
        text=True,
        check=False,
    )
    report = json.loads(run.stdout)
    serious = [
        f"{r['filename']}:{r['line_number']} {r['test_id']} {r['issue_text']}"
        for r in report["results"]
        if r["issue_severity"] in ("MEDIUM", "HIGH")
    ]
    assert not serious, serious
    assert report["metrics"]["_totals"]["loc"] > 0, "bandit read no code"


def test_s2_pip_audit_finds_no_known_vulnerability() -> None:
    run = subprocess.run(
        [_tool("pip-audit"), "-f", "json", "--progress-spinner", "off"],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    report = json.loads(run.stdout)
    audited = [d for d in report["dependencies"] if "skip_reason" not in d]
    if audited:
        vulnerable = [f"{d['name']} {d['version']}: {d['vulns']}" for d in audited if d["vulns"]]
        assert not vulnerable, vulnerable
        return
    # pip-audit asks PyPI about each installed release; where only the project pages answer
    # (a partial mirror), audit what they can tell: the advisories of each project's latest
    # release, for every distribution installed at that release.
    latest = _latest_release_advisories()
    if not latest:
        pytest.skip("neither pip-audit nor PyPI's project pages could be reached")
    installed = {d.metadata["Name"].lower(): d.version for d in metadata.distributions()}
    audited_here = {n: v for n, v in installed.items() if n in latest and latest[n][0] == v}
    assert len(audited_here) >= len(installed) // 2, (
        f"only {len(audited_here)} of {len(installed)} installed releases could be audited"
    )
    vulnerable = [f"{n} {v}: {latest[n][1]}" for n, v in audited_here.items() if latest[n][1]]
    assert not vulnerable, vulnerable


def _latest_release_advisories() -> dict[str, tuple[str, list[str]]]:
    """Installed project name -> (PyPI's latest release, ids of its open advisories), from
    PyPI's JSON project pages; empty when PyPI cannot be reached."""

    def fetch(name: str) -> tuple[str, tuple[str, list[str]] | None]:
        url = f"https://pypi.org/pypi/{name}/json"
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                page = json.load(response)
        except (OSError, ValueError):
            return name, None
        vulns = [v["id"] for v in page.get("vulnerabilities") or [] if not v.get("withdrawn")]
        return name, (page["info"]["version"], vulns)

    names = sorted({d.metadata["Name"].lower() for d in metadata.distributions()})
    with ThreadPoolExecutor(8) as pool:
        return {name: found for name, found in pool.map(fetch, names) if found}

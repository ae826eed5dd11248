"""The documentation site builds with ``mkdocs build --strict``: no broken link, no page left out.

The site is README.md (the home page, through scripts/mkdocs_hooks.py), docs/*.md and the
generated reference docs/connectors.md. Any mkdocs warning (a link to a missing page or
anchor, a page not in the nav) fails the build and this test.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import yaml

ROOT = Path(__file__).resolve().parents[2]


def build(config: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )


def hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mkdocs_hooks", ROOT / "scripts/mkdocs_hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_site_builds_strictly_with_readme_as_home(tmp_path: Path) -> None:
    done = build(ROOT / "mkdocs.yml", tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "WARNING" not in done.stderr, done.stderr
    home = (tmp_path / "index.html").read_text(encoding="utf-8")
    # The README's first heading is the home page's title, and its docs/ links are page links.
    first_heading = next(
        ln for ln in (ROOT / "README.md").read_text(encoding="utf-8").splitlines() if ln[:2] == "# "
    )
    assert first_heading[2:].strip() in home
    assert 'href="operate/"' in home
    assert (tmp_path / "connectors" / "index.html").is_file()


def test_every_docs_page_is_in_the_nav() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    in_nav = {next(iter(item.values())) for item in config["nav"]}
    pages = {p.name for p in (ROOT / "docs").glob("*.md")} | {"index.md"}
    assert pages == in_nav, f"add to or remove from the nav of mkdocs.yml: {pages ^ in_nav}"


def test_a_broken_link_fails_the_strict_build(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    shutil.copytree(ROOT / "docs", docs)
    with (docs / "operate.md").open("a", encoding="utf-8") as f:
        f.write("\nSee [the missing page](missing.md).\n")
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    config = config.replace("docs_dir: docs", f"docs_dir: {docs}")
    config = config.replace("scripts/mkdocs_hooks.py", str(ROOT / "scripts/mkdocs_hooks.py"))
    (tmp_path / "mkdocs.yml").write_text(config, encoding="utf-8")
    done = build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert done.returncode != 0
    assert "missing.md" in done.stderr


def test_links_to_repository_files_become_paths_and_page_links_stay_links() -> None:
    site_links = hooks().site_links
    text = "[ops](docs/operate.md#serve) and [rooms](examples/rooms) and [web](https://x.org/a)"
    assert site_links(text, "README.md") == (
        "[ops](operate.md#serve) and rooms (`examples/rooms` in the repository)"
        " and [web](https://x.org/a)"
    )
    assert site_links("[k8s](../deploy/kubernetes)", "docs/deploy.md") == (
        "k8s (`deploy/kubernetes` in the repository)"
    )
    assert site_links("[g](guarantees.md)", "docs/operate.md") == "[g](guarantees.md)"

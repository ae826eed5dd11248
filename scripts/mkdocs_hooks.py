"""mkdocs hooks: README.md as the site's home page, and links into the repository kept honest.

README.md is the one source of the home page (no copy to keep in step): it is added to the
site as ``index.md``. The Markdown files link to each other by their repository paths
(``docs/operate.md`` from README, ``../examples/rooms`` from docs/); on the site, links to
other pages become page links, and links to repository files that are not pages (examples,
deploy files) become the path in code, so the strict build finds no broken link.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
_LINK = re.compile(r"(?<!!)\[([^\]]+)\]\(([^)\s]+)\)")


def on_files(files: Files, config: Any) -> Files:
    """Add README.md as index.md (the home page)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    files.append(File.generated(config, "index.md", content=readme))
    return files


def site_links(markdown: str, source: str) -> str:
    """Rewrite the relative links of a Markdown file at repository path ``source``."""
    here = posixpath.dirname(source)

    def rewrite(match: re.Match[str]) -> str:
        text, target = match.groups()
        if re.match(r"^[a-z][a-z0-9+.-]*:|^#", target):
            return match.group(0)  # a URL or an anchor on the same page
        path, _, anchor = target.partition("#")
        in_repo = posixpath.normpath(posixpath.join(here, path))
        if in_repo.startswith("docs/") and in_repo.endswith(".md"):
            page = posixpath.relpath(in_repo, "docs")
            return f"[{text}]({page}{'#' + anchor if anchor else ''})"
        # Not a page of the site: name the repository path instead of linking nowhere.
        return f"{text} (`{in_repo}` in the repository)"

    return _LINK.sub(rewrite, markdown)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    """Links as they resolve on the site (README's own paths start at the repository root)."""
    uri = page.file.src_uri
    source = "README.md" if uri == "index.md" else f"docs/{uri}"
    return site_links(markdown, source)

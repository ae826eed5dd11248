"""Paging styles as pure functions of (settings, paging state, response).

The paging state is a small JSON dict (``{"page": 3}``, ``{"offset": 200}``,
``{"cursor": "abc"}``, ``{"url": "https://..."}``) that names the *next* request. It is part
of the source's position, so a resumed run asks for exactly the page after the last one the
engine processed.
"""

from __future__ import annotations

import re
from typing import Any

from tideflow.connectors.http.client import dig
from tideflow.connectors.http.settings import PaginationConfig

_LINK = re.compile(r"<([^>]*)>\s*((?:;\s*[^;,]+)*)")


def first_state(cfg: PaginationConfig) -> dict[str, Any]:
    """The paging state of a sweep's first request."""
    if cfg.style == "page":
        return {"page": cfg.start_page}
    if cfg.style == "offset":
        return {"offset": 0}
    return {}


def size_param(cfg: PaginationConfig) -> str | None:
    """The parameter that carries the page size, if any."""
    if cfg.size_param:
        return cfg.size_param
    return "limit" if cfg.style == "offset" else None


def request_params(cfg: PaginationConfig, state: dict[str, Any]) -> dict[str, Any]:
    """Query parameters that select the page named by ``state``."""
    params: dict[str, Any] = {}
    size = size_param(cfg)
    if cfg.page_size is not None and size and "url" not in state:
        params[size] = cfg.page_size
    if cfg.style == "page":
        params[cfg.page_param] = state["page"]
    elif cfg.style == "offset":
        params[cfg.offset_param] = state["offset"]
    elif cfg.style == "cursor" and state.get("cursor") is not None:
        params[cfg.cursor_param] = state["cursor"]
    return params


def template_values(cfg: PaginationConfig, state: dict[str, Any]) -> dict[str, Any]:
    """Values for ``{{page}}``, ``{{offset}}``, ``{{limit}}`` and ``{{cursor}}`` in bodies."""
    return {
        "page": state.get("page"),
        "offset": state.get("offset"),
        "limit": cfg.page_size,
        "cursor": state.get("cursor"),
    }


def link_next(header: str | None) -> str | None:
    """The ``rel="next"`` target of an RFC 8288 ``Link`` header."""
    if not header:
        return None
    for match in _LINK.finditer(header):
        params = match.group(2)
        if re.search(r';\s*rel\s*=\s*"?([^";]*\s)?next(\s[^";]*)?"?', params, re.I):
            return match.group(1)
    return None


def next_state(
    cfg: PaginationConfig,
    state: dict[str, Any],
    body: Any,
    headers: dict[str, str],
    count: int,
    pages: int,
) -> dict[str, Any] | None:
    """The paging state of the next request, or None when this page was the last.

    ``count`` is the number of records on this page; ``pages`` how many pages this sweep has
    fetched so far, this one included.
    """
    if cfg.style == "none":
        return None
    if count == 0:
        return None
    if cfg.max_pages is not None and pages >= cfg.max_pages:
        return None
    if cfg.style in ("page", "offset"):
        if cfg.stop_on_short_page and cfg.page_size is not None and count < cfg.page_size:
            return None
        if cfg.style == "page":
            nxt = {"page": state["page"] + 1}
            seen = (state["page"] - cfg.start_page + 1) * (cfg.page_size or count)
        else:
            nxt = {"offset": state["offset"] + count}
            seen = nxt["offset"]
        if cfg.total_path is not None:
            total = dig(body, cfg.total_path)
            if isinstance(total, int | float) and seen >= total:
                return None
        return nxt
    if cfg.style == "cursor":
        cursor = dig(body, cfg.cursor_path)
        if cursor is None or cursor == "":
            return None  # a repeated cursor is caught by the source, which names the loop
        return {"cursor": cursor}
    if cfg.style == "next_url":
        url = dig(body, cfg.next_url_path)
        return {"url": url} if isinstance(url, str) and url else None
    url = link_next(headers.get("link"))
    return {"url": url} if url else None


def next_state_without_body(
    cfg: PaginationConfig, state: dict[str, Any], headers: dict[str, str], ok: bool, pages: int
) -> tuple[bool, dict[str, Any] | None]:
    """The paging state after a page whose body is unusable: ``(True, state)``, or ``(True,
    None)`` when that page was the last; ``(False, None)`` when it cannot be known.

    ``page`` and ``offset`` paging count on (offset by ``page_size``); ``link_header``
    paging follows the response's ``Link`` header, and a successful response without one was
    the last page (an error response without one says nothing). ``cursor`` and ``next_url``
    paging need the body. ``pages`` counts this sweep's pages, this one included.
    """
    if cfg.style == "none":
        return True, None
    if cfg.max_pages is not None and pages >= cfg.max_pages:
        return True, None
    if cfg.style == "page":
        return True, {"page": state["page"] + 1}
    if cfg.style == "offset":
        assert cfg.page_size is not None  # required for offset paging
        return True, {"offset": state["offset"] + cfg.page_size}
    if cfg.style == "link_header":
        url = link_next(headers.get("link"))
        if url:
            return True, {"url": url}
        return (True, None) if ok else (False, None)
    return False, None

"""The page of the web UI, the server's health and its Prometheus metrics."""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

from tideflow.observe.metrics import CONTENT_TYPE
from tideflow.service.runs import ACTIVE
from tideflow.service.server import Service
from tideflow.service.web import NONCE, STATIC, page_headers


def router(service: Service) -> APIRouter:
    """The routes of this resource, served by ``service``."""
    api = APIRouter()
    catalog, runs = service.catalog, service.runs

    @api.get("/", include_in_schema=False)
    def index() -> HTMLResponse:
        nonce = secrets.token_urlsafe(18)  # new for every page: guessing it is futile
        page = (STATIC / "index.html").read_text(encoding="utf-8").replace(NONCE, nonce)
        return HTMLResponse(page, headers=page_headers(nonce))

    @api.get("/api/health", tags=["server"])
    def health() -> dict[str, Any]:
        """The server is up; how many runs are active."""
        active = [r.id for r in runs.runs() if r.status in ACTIVE]
        return {"status": "ok", "active_runs": len(active), "folder": catalog.folder.name}

    @api.get("/metrics", tags=["server"], response_class=Response)
    def metrics() -> Response:
        """Prometheus metrics of every pipeline and step."""
        return Response(service.metrics.render(), media_type=CONTENT_TYPE)

    return api

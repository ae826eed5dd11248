"""Alerts firing now and the latest alert events."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from tideflow.service.server import Service


def router(service: Service) -> APIRouter:
    """The routes of this resource, served by ``service``."""
    api = APIRouter()

    @api.get("/api/alerts", tags=["alerts"])
    def alerts() -> dict[str, Any]:
        """Alerts firing now (with metric, value and threshold) and the latest alert events,
        each with the outcome of its notifications (`sent`, or `failed` with the reason)."""
        return {"firing": service.alerts.firing(), "events": service.alerts.recent(100)}

    return api

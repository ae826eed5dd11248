"""The API of `tideflow serve`, one router per resource."""

from __future__ import annotations

from fastapi import FastAPI

from tideflow.service.routes import alerts, deadletters, pipelines, runs, server
from tideflow.service.server import Service


def add_routes(app: FastAPI, service: Service) -> None:
    """Serve every resource's routes from ``app``."""
    for resource in (server, pipelines, runs, deadletters, alerts):
        app.include_router(resource.router(service))

"""Pipeline files: list, create, validate, read, replace, delete."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from tideflow.service.catalog import Conflict
from tideflow.service.server import Service
from tideflow.service.web import NewPipeline, PidPath, PipelineText, RedactedJSON


def router(service: Service) -> APIRouter:
    """The routes of this resource, served by ``service``."""
    api = APIRouter()
    catalog, runs = service.catalog, service.runs

    @api.get("/api/pipelines", tags=["pipelines"])
    def list_pipelines() -> list[dict[str, Any]]:
        """Every pipeline of the folder with its status and throughput."""
        return [service.pipeline_summary(e) for e in catalog.entries()]

    @api.post("/api/pipelines", tags=["pipelines"], status_code=201)
    def create_pipeline(body: NewPipeline) -> dict[str, Any]:
        """Create a pipeline file; invalid text is refused (422) with every issue."""
        spec, issues = catalog.validate(body.yaml, f"{body.id or 'new'}.yaml")
        if spec is None:
            return RedactedJSON(  # type: ignore[return-value]
                {"detail": "invalid pipeline", "issues": issues}, status_code=422
            )
        entry = catalog.save(body.id or spec.name, body.yaml, create=True)
        return service.pipeline_detail(entry)

    @api.post("/api/validate", tags=["pipelines"])
    def validate(body: PipelineText) -> dict[str, Any]:
        """Validate pipeline text without saving it: `issues` carry file, line and field."""
        spec, issues = catalog.validate(body.yaml, "pipeline.yaml")
        return {"valid": spec is not None, "name": spec.name if spec else None, "issues": issues}

    @api.get("/api/pipelines/{pid}", tags=["pipelines"])
    def get_pipeline(pid: PidPath) -> dict[str, Any]:
        """One pipeline: text, step graph, schedule and its latest run with live counts."""
        return service.pipeline_detail(catalog.get(pid))

    @api.put("/api/pipelines/{pid}", tags=["pipelines"])
    def update_pipeline(pid: PidPath, body: PipelineText) -> dict[str, Any]:
        """Replace a pipeline file; invalid text is refused (422) and the file kept."""
        return service.pipeline_detail(catalog.save(pid, body.yaml, create=False))

    @api.delete("/api/pipelines/{pid}", tags=["pipelines"])
    def delete_pipeline(pid: PidPath) -> dict[str, Any]:
        """Delete a pipeline file; refused while it runs. Its history stays in the store."""
        if runs.active(pid) is not None:
            raise Conflict(f"pipeline {pid!r} is running; stop it before deleting it")
        catalog.delete(pid)
        return {"deleted": pid}

    return api

"""The HTTP vocabulary of `tideflow serve`: response classes that redact, server-sent
events, the security headers of its pages, and the request bodies of its API."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import orjson
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from tideflow.secrets import redact
from tideflow.service.catalog import ID_PATTERN, MAX_PIPELINE_BYTES

STATIC = Path(__file__).parent / "static"
"""The web UI's files."""


NONCE = "{{nonce}}"
"""Where index.html takes the page's style nonce."""


def page_headers(nonce: str) -> dict[str, str]:
    """Headers of the UI page. Its scripts and style sheets are its own files, nothing
    remote, no inline script; the one inline style the page may hold is the YAML editor's
    (CodeMirror writes its theme into a <style> element), allowed by this response's nonce."""
    return {
        "Cache-Control": "no-store",
        "Content-Security-Policy": f"default-src 'self'; style-src 'self' 'nonce-{nonce}'; "
        "img-src 'self' data:; frame-ancestors 'none'",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }


DOCS_HEADERS = {
    "Cache-Control": "no-store",
    # Swagger UI and ReDoc come from the package fastapi-offline, served from /docs-assets;
    # the page's only inline script is FastAPI's call that starts Swagger UI.
    "Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; worker-src 'self' blob:; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
"""Headers of the API documentation pages (/docs, /redoc)."""
DOCS_ASSETS = "/docs-assets"
"""Where Swagger UI's and ReDoc's files are served from (no CDN)."""


def docs_assets() -> Path:
    """The folder of Swagger UI's and ReDoc's files, as the package fastapi-offline ships
    them (the `service` extra installs it)."""
    from importlib.resources import files

    from tideflow.errors import require

    return Path(str(files(require("fastapi_offline", "service", "fastapi-offline")) / "static"))


STREAM_INTERVAL = 0.5
"""Seconds between looks at a run for the event stream (the engine's progress interval)."""
STREAM_LIFETIME = 600.0
"""Seconds after which an event stream ends even while its run goes on; the browser's
EventSource reconnects at once, so no connection outlives proxies' idle limits by much."""
STREAM_RETRY_MS = 2000
"""How long a browser waits before reconnecting to a stream that ended (no run active)."""
STREAM_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
"""Stream headers: never cached, never buffered by a proxy."""


def sse(event: str, data: Any) -> bytes:
    """One server-sent event, its JSON data redacted like every other response."""
    text = redact(orjson.dumps(data, default=str).decode())
    return f"event: {event}\ndata: {text}\n\n".encode()


class RedactedJSON(JSONResponse):
    """JSON with every registered secret and URL password masked."""

    def render(self, content: Any) -> bytes:
        """Serialise, then redact the text."""
        return redact(orjson.dumps(content, default=str).decode()).encode()


class PipelineText(BaseModel):
    """A pipeline file's text."""

    yaml: str = Field(max_length=MAX_PIPELINE_BYTES, description="The pipeline file (YAML).")


class NewPipeline(PipelineText):
    """A pipeline to create; the id defaults to its `name:`."""

    id: str | None = Field(None, pattern=ID_PATTERN, max_length=100)


class ReplayRequest(BaseModel):
    """Dead letters to send through the pipeline again."""

    step: str = Field(max_length=200, description="The step where the records failed.")
    ids: list[int] = Field(
        default_factory=list,
        max_length=10_000,
        description="Ledger ids; all of the step's if empty.",
    )


PidPath = Annotated[str, Field(pattern=ID_PATTERN, max_length=100)]

"""The hand-written baseline of the webhook benchmark: a plain durable FastAPI endpoint.

Each post's body is appended to one file and fsync'd before the answer, which is what a
user would write to receive webhooks durably without tideflow:

    WEBHOOK_BASELINE_FILE=out.ndjson uvicorn benchmarks.webhook_baseline:app --port 8080
"""

from __future__ import annotations

import os

from fastapi import FastAPI, Request

app = FastAPI()
_fd = os.open(
    os.environ.get("WEBHOOK_BASELINE_FILE", "webhook-baseline.ndjson"),
    os.O_WRONLY | os.O_APPEND | os.O_CREAT,
    0o644,
)


@app.post("/in")
async def receive(request: Request) -> dict[str, int]:
    """Append the body (JSON or NDJSON) and fsync it; then answer."""
    body = await request.body()
    os.write(_fd, body if body.endswith(b"\n") else body + b"\n")
    os.fsync(_fd)
    return {"accepted": body.count(b"\n") or 1}

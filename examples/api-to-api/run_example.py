"""Run the api-to-api example with one command::

    python examples/api-to-api/run_example.py

It starts three local APIs on free ports (a paginated source that fails 10% of requests, a
lookup API, and a target that records what it receives), runs ``pipeline.yaml`` once, then
serves ``webhooks.yaml``, posts three signed events to it and prints what the target got.
Run it again: the incremental cursor fetches only records added since (none, here).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
import time
import urllib.request
from pathlib import Path

from tideflow.run.plan import engine_for
from tideflow.run.runner import run
from tideflow.spec.loader import load_pipeline
from tideflow.testing.fake_api import FakeApi

HERE = Path(__file__).resolve().parent
SECRET = "example-webhook-secret"


def post_event(url: str, event: dict[str, object]) -> int:
    """Post one signed webhook event; the answer comes once it is durable."""
    body = json.dumps(event).encode()
    signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"X-Signature-256": signature}
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        return int(reply.status)


def main() -> None:
    """Start the APIs, run both pipelines, print a summary (one JSON line at the end)."""
    with (
        FakeApi(records=1000, fail_rate=0.1) as source,
        FakeApi() as lookup,
        FakeApi() as target,
    ):
        os.environ.update(
            SOURCE_API=source.url(),
            LOOKUP_API=lookup.url(),
            TARGET_API=target.url(),
            WEBHOOK_PORT="0",
            WEBHOOK_SECRET=SECRET,
        )
        result = run(load_pipeline(HERE / "pipeline.yaml"), HERE)
        print(f"api-to-api: {result.status}; the target received {len(target.stats.posted)}")

        engine = engine_for(load_pipeline(HERE / "webhooks.yaml"), HERE)
        runner = threading.Thread(target=engine.run, daemon=True)
        runner.start()
        hook = engine.graph.sources[0].component
        while getattr(hook, "_server", None) is None and runner.is_alive():
            time.sleep(0.01)
        url = hook.url  # type: ignore[attr-defined]
        events = [
            {"event": "signup", "email": "new.user@example.com"},
            {"event": "call-back", "note": "ring +44 20 7946 0123 after 5"},
            {"event": "ping"},
        ]
        statuses = [post_event(url, e) for e in events]
        engine.stop()
        runner.join(timeout=30)
        relayed = [r for r in target.stats.posted if "event" in r]
        print(f"webhooks: {statuses.count(200)} of {len(events)} events acknowledged")
        for record in relayed:
            print("  relayed:", json.dumps(record))
        print(
            json.dumps(
                {
                    "pipeline": result.status,
                    "posted": len(target.stats.posted) - len(relayed),
                    "source_failures": source.stats.transient_failures,
                    "webhooks_acknowledged": statuses.count(200),
                    "relayed": relayed,
                }
            )
        )


if __name__ == "__main__":
    main()

"""API to API through a pipeline file: http source -> pii -> http_enrich -> http sink.

One loopback API serves the pages, the lookups and the receiving endpoint; it fails one
request in five of each path transiently (deterministically: which ones does not depend on
how the threads' requests interleave). Everything is asserted on what the server received.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tideflow.run.plan import engine_for
from tideflow.spec.loader import load_pipeline_text
from tideflow.state.store import StateStore
from tideflow.testing.fake_api import FakeApi

pytestmark = pytest.mark.timeout(120)


def pipeline(api: FakeApi) -> str:
    return f"""
name: api-to-api
vars: {{PII_SALT: test-salt-5150}}
checkpoint: {{every_records: 100}}
source:
  type: http
  url: {api.url("/page")}
  records_path: data.items
  pagination: {{style: page, size_param: per_page, page_size: 50}}
  incremental: {{field: updated_at, param: since}}
  retry: {{backoff: 0.01, max_backoff: 0.2, max_attempts: 10}}
steps:
  - type: pii
    columns: {{email: hash, name: mask}}
    detect: [phone]
    salt: ${{PII_SALT}}
  - type: http_enrich
    url: {api.url("/lookup/{{id}}")}
    keys: [id]
    fields: [score]
    not_found: dead_letter
    retry: {{backoff: 0.01, max_backoff: 0.2, max_attempts: 10}}
sink:
  type: http
  url: {api.url("/sink")}
  batch_size: 20
  idempotency_header: Idempotency-Key
  rate_limit: {{concurrency: 2}}
  retry: {{backoff: 0.01, max_backoff: 0.2, max_attempts: 10}}
"""


def test_api_to_api_pipeline_delivers_each_record_once_masked_and_enriched(
    tmp_path: Path,
) -> None:
    # One request in five of each path fails: /page is asked at least 7 times (6 full pages
    # and an empty one), so its failures are certain, not a matter of thread timing.
    with FakeApi(records=300, fail_rate=0.2, seed=3) as api:
        spec = load_pipeline_text(pipeline(api), str(tmp_path / "p.yaml"))
        result = engine_for(spec, tmp_path).run()
        expected = [i for i in range(1, 301) if i % 13]
        assert sorted(api.posted_ids()) == expected  # exactly once each, server-side
        assert all(api.stats.failed_paths[p] > 0 for p in ("/page", "/sink"))
        posted = {r["id"]: r for r in api.stats.posted}
        text = orjson.dumps(api.stats.posted).decode()
        assert "@example.com" not in text  # emails hashed
        assert all(r["note"].startswith("call [PHONE] about") for r in api.stats.posted)
        assert posted[7]["note"] == "call [PHONE] about order 7"
        assert posted[7]["name"] == "**er 7"  # masked, the last 4 characters kept
        assert posted[7]["score"] == 70
        assert len(posted[7]["email"]) == 64

        letters = StateStore(tmp_path / ".tideflow" / "state.db").ledger.letters("api-to-api")
        assert sorted(orjson.loads(x.record)["id"] for x in letters) == list(range(13, 301, 13))
        assert all(x.reason == f"not found: {orjson.loads(x.record)['id']}" for x in letters)
        assert result.counts["http_enrich"]["dead_lettered"] == len(letters)
        # the audit trail of the run: which PII rules changed how many values
        assert result.counts["pii"]["report"] == {
            "pii rules fired": {"email:hash": 300, "name:mask": 300, "note:phone": 300}
        }
        source = result.counts["http"]["report"]
        assert source["requests"] == api.stats.paths["/page"]
        assert source["retries"] == api.stats.failed_paths["/page"] > 0

        # second run: the incremental cursor sends `since`, so only the new records come
        api.add_records(30)
        before = len(api.stats.posted)
        engine_for(spec, tmp_path).run()
        new = [r["id"] for r in api.stats.posted[before:]]
        assert sorted(new) == [i for i in range(301, 331) if i % 13]

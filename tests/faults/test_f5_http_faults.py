"""F5: HTTP source and sink against an API that fails 10% of requests (500s, 429 with
Retry-After), with `kill -9` in the middle of paging. Every record must reach the receiving
API; a record posted twice (after a crash) carries the same idempotency key both times, so a
receiver that honours the key stores it once."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest
from tests.faults.harness import kill_randomly
from tests.faults.oracle import seeds
from tests.system.helpers import cli

from tideflow.testing.fake_api import FakeApi

RECORDS = 1500

PIPELINE = """
name: f5
source:
  type: http
  url: "URL/page"
  records_path: data.items
  pagination: {style: page, page_param: page, size_param: per_page, page_size: 50}
  retry: {max_attempts: 20, backoff: 0.05, max_backoff: 1.0}
steps:
  - {type: python, name: pace, function: "pace.py:pace", mode: batch}
sink:
  type: http
  url: "URL/sink"
  batch_size: 1
  idempotency_header: Idempotency-Key
  idempotency_columns: [id]
  retry: {max_attempts: 20, backoff: 0.05, max_backoff: 1.0}
checkpoint: {every_records: 100}
"""

PACE = """
import time

def pace(batch):
    time.sleep(0.15)
    return batch
"""


@pytest.mark.slow
@pytest.mark.parametrize("seed", seeds(1, 10, base=6000))
def test_f5_flaky_api_and_kill_9_mid_paging_deliver_every_record(tmp_path: Path, seed: int) -> None:
    with FakeApi(records=RECORDS, fail_rate=0.1, seed=seed, rate_limit=400) as api:
        (tmp_path / "p.yaml").write_text(PIPELINE.replace("URL", api.url()), encoding="utf-8")
        (tmp_path / "pace.py").write_text(PACE, encoding="utf-8")
        landed = kill_randomly(
            tmp_path / "p.yaml", tmp_path, seed, kills=2, env={}, window=(2.0, 3.5)
        )
        assert landed >= 1, "no kill landed mid-run"
        final = cli("run", "p.yaml", cwd=tmp_path)
        assert final.returncode == 0, final.stderr
        assert api.stats.transient_failures > 0, "the API never failed: the test proved nothing"
        posted = api.posted_ids()
        keys = api.stats.idempotency_keys
    assert set(posted) == set(range(1, RECORDS + 1)), "a record never reached the API"
    assert len(keys) == len(posted)
    seen: dict[object, set[str]] = defaultdict(set)
    for ident, key in zip(posted, keys, strict=True):
        seen[ident].add(key)
    assert all(len(k) == 1 for k in seen.values()), "a repeated post had a different key"

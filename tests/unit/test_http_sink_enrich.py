"""The ``http`` sink and the ``http_enrich`` step against a real HTTP server on loopback.

Everything is counted by the server (what arrived, how often, how many at once), never timed
by the test.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pytest

from tideflow.connectors.http.enrich import HttpEnrich
from tideflow.connectors.http.settings import HttpEnrichConfig, HttpSinkConfig
from tideflow.connectors.http.sink import HttpSink
from tideflow.core.contracts import Context
from tideflow.errors import TerminalError, TransientError
from tideflow.testing.fake_api import FakeApi

pytestmark = pytest.mark.timeout(60)

FAST_RETRY = {"backoff": 0.01, "max_backoff": 0.2, "max_attempts": 10}


def make_ctx(tmp: Path, name: str = "api") -> Context:
    return Context(
        pipeline="p",
        name=name,
        base_dir=tmp,
        state_dir=tmp / ".state",
        stop_event=threading.Event(),
    )


@pytest.fixture
def api() -> Iterator[FakeApi]:
    with FakeApi(records=10, fail_rate=0.2, seed=1) as server:
        yield server


def open_sink(config: dict[str, Any], tmp: Path) -> HttpSink:
    sink = HttpSink(HttpSinkConfig.model_validate(config))
    sink.open(make_ctx(tmp), None)
    return sink


def people(n: int, start: int = 1) -> pl.DataFrame:
    return pl.DataFrame(
        {"id": list(range(start, start + n)), "name": [f"p{i}" for i in range(start, start + n)]}
    )


# -- sink -------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 7, 50])
def test_sink_delivers_every_record_exactly_once_despite_transient_failures(
    api: FakeApi, tmp_path: Path, batch_size: int
) -> None:
    sink = open_sink(
        {
            "url": api.url("/sink"),
            "batch_size": batch_size,
            "retry": FAST_RETRY,
            "rate_limit": {"concurrency": 4},
            "idempotency_header": "Idempotency-Key",
        },
        tmp_path,
    )
    try:
        for start in (1, 101):
            assert sink.write_batch(people(100, start)) is None
        sink.commit(sink.flush())
    finally:
        sink.close()
    assert sorted(api.posted_ids()) == list(range(1, 201))  # once each, server-side
    assert api.stats.transient_failures > 0
    requests = -(-100 // batch_size) * 2
    assert api.stats.paths["/sink"] == requests + api.stats.transient_failures
    assert len(set(api.stats.idempotency_keys)) == requests
    assert api.stats.max_in_flight <= 4


def test_sink_sends_json_arrays_when_batched(api: FakeApi, tmp_path: Path) -> None:
    sink = open_sink({"url": api.url("/sink"), "batch_size": 3, "retry": FAST_RETRY}, tmp_path)
    try:
        sink.write_batch(people(3))
    finally:
        sink.close()
    assert api.stats.posted == [
        {"id": 1, "name": "p1"},
        {"id": 2, "name": "p2"},
        {"id": 3, "name": "p3"},
    ]


def test_sink_templates_url_and_body_per_record(api: FakeApi, tmp_path: Path) -> None:
    sink = open_sink(
        {
            "url": api.url("/sink?user={{id}}"),
            "body": {"user": "{{id}}", "label": "user {{name}}", "fixed": True},
            "retry": FAST_RETRY,
        },
        tmp_path,
    )
    try:
        sink.write_batch(people(2))
    finally:
        sink.close()
    assert sorted(api.stats.posted, key=lambda r: r["user"]) == [
        {"user": 1, "label": "user p1", "fixed": True},
        {"user": 2, "label": "user p2", "fixed": True},
    ]


def test_sink_url_placeholders_need_one_record_per_request(tmp_path: Path) -> None:
    sink = HttpSink(HttpSinkConfig.model_validate({"url": "http://x/{{id}}", "batch_size": 5}))
    with pytest.raises(TerminalError, match="batch_size: 1"):
        sink.open(make_ctx(tmp_path), None)


def test_sink_client_error_dead_letters_that_requests_rows_with_status_and_body(
    api: FakeApi, tmp_path: Path
) -> None:
    batch = people(12).with_columns(invalid=pl.col("id").is_in([5, 11]))
    sink = open_sink({"url": api.url("/sink"), "batch_size": 4, "retry": FAST_RETRY}, tmp_path)
    try:
        dead = sink.write_batch(batch)
    finally:
        sink.close()
    assert dead is not None
    # requests [1-4] ok, [5-8] and [9-12] rejected with 422: their rows, nothing else
    records = [orjson.loads(r)["id"] for r in dead["record"].to_list()]
    assert records == [5, 6, 7, 8, 9, 10, 11, 12]
    assert all(r.startswith("HTTP 422 from POST") for r in dead["reason"].to_list())
    assert all("invalid record" in r for r in dead["reason"].to_list())  # the body excerpt
    assert sorted(api.posted_ids()) == [1, 2, 3, 4]
    assert api.stats.paths["/sink"] - api.stats.transient_failures == 3  # 4xx not retried


def test_sink_server_errors_are_retried_then_fail_the_run(tmp_path: Path) -> None:
    with FakeApi(fail_rate=1.0) as api:
        sink = open_sink(
            {"url": api.url("/sink"), "retry": {"backoff": 0.01, "max_attempts": 3}}, tmp_path
        )
        try:
            with pytest.raises(TransientError, match=r"HTTP 503 .*after 3 attempts"):
                sink.write_batch(people(1))
        finally:
            sink.close()
        assert api.stats.paths["/sink"] == 3
        assert api.stats.posted == []


def test_sink_connection_refused_is_a_transient_error(tmp_path: Path) -> None:
    with FakeApi() as api:
        url = api.url("/sink")
    # the server is gone: nothing listens on that port any more
    sink = open_sink({"url": url, "retry": {"backoff": 0.01, "max_attempts": 2}}, tmp_path)
    try:
        with pytest.raises(TransientError, match="failed after 2 attempt"):
            sink.write_batch(people(1))
    finally:
        sink.close()


# -- enrich -----------------------------------------------------------------------------------


def open_enrich(config: dict[str, Any], tmp: Path) -> HttpEnrich:
    step = HttpEnrich(HttpEnrichConfig.model_validate(config))
    step.open(make_ctx(tmp, "enrich"), None)
    return step


def test_enrich_looks_up_each_distinct_key_once_and_joins_in_order(tmp_path: Path) -> None:
    with FakeApi(delay=0.01) as api:
        step = open_enrich(
            {
                "url": api.url("/lookup/{{id}}"),
                "keys": ["id"],
                "fields": ["score", "tier"],
                "rate_limit": {"concurrency": 3},
                "retry": FAST_RETRY,
            },
            tmp_path,
        )
        batch = pl.DataFrame({"id": [3, 1, 3, 26, 2, 1, 3, 5, 6, 7], "n": list(range(10))})
        try:
            result = step.process(batch)
        finally:
            step.close()
        lookups = sum(c for p, c in api.stats.paths.items() if p.startswith("/lookup/"))
        assert lookups == 7  # distinct ids, not rows
        assert api.stats.max_in_flight <= 3
    out = result.outputs["out"]
    assert out["n"].to_list() == list(range(10))  # the batch's order is kept
    assert out["score"].to_list() == [30, 10, 30, None, 20, 10, 30, 50, 60, 70]  # 26: 404
    assert out["tier"].null_count() == 1
    assert result.dead is None


def test_enrich_cache_serves_repeated_keys_across_batches(tmp_path: Path) -> None:
    with FakeApi() as api:
        step = open_enrich(
            {"url": api.url("/lookup/{{id}}"), "keys": ["id"], "retry": FAST_RETRY}, tmp_path
        )
        try:
            step.process(pl.DataFrame({"id": [1, 2, 13]}))
            second = step.process(pl.DataFrame({"id": [2, 1, 13, 4]}))
        finally:
            step.close()
        assert api.stats.requests == 4  # 1, 2, 13 (404, cached as not found too), then 4
    assert step.cache.hits == 3
    assert second.outputs["out"]["score"].to_list() == [20, 10, None, 40]


def test_enrich_without_cache_asks_again(tmp_path: Path) -> None:
    with FakeApi() as api:
        step = open_enrich(
            {"url": api.url("/lookup/{{id}}"), "keys": ["id"], "cache_ttl": 0}, tmp_path
        )
        try:
            step.process(pl.DataFrame({"id": [1, 2]}))
            step.process(pl.DataFrame({"id": [1, 2]}))
        finally:
            step.close()
        assert api.stats.requests == 4


def test_enrich_not_found_can_dead_letter(tmp_path: Path) -> None:
    with FakeApi() as api:
        step = open_enrich(
            {"url": api.url("/lookup/{{id}}"), "keys": ["id"], "not_found": "dead_letter"},
            tmp_path,
        )
        try:
            result = step.process(pl.DataFrame({"id": [1, 13, 2, 13]}))
        finally:
            step.close()
    assert result.outputs["out"]["id"].to_list() == [1, 2]
    assert result.dead is not None
    assert result.dead["reason"].to_list() == ["not found: 13", "not found: 13"]
    assert result.outputs["out"].height + result.dead.height == 4  # every record accounted


def test_enrich_failures_go_to_dead_letters_with_the_status(tmp_path: Path) -> None:
    with FakeApi(fail_rate=1.0) as api:
        step = open_enrich(
            {
                "url": api.url("/lookup/{{id}}"),
                "keys": ["id"],
                "retry": {"backoff": 0.01, "max_attempts": 2},
            },
            tmp_path,
        )
        try:
            result = step.process(pl.DataFrame({"id": [1, 2, 1], "x": ["a", "b", "c"]}))
        finally:
            step.close()
        assert api.stats.requests == 4  # 2 keys x 2 attempts
    assert result.outputs["out"].height == 0
    assert result.dead is not None
    assert [orjson.loads(r)["x"] for r in result.dead["record"].to_list()] == ["a", "b", "c"]
    assert all("HTTP 503" in r for r in result.dead["reason"].to_list())
    assert step.cache.hits == 0  # failures are not cached


def test_enrich_batched_lookup_posts_groups_of_keys(tmp_path: Path) -> None:
    with FakeApi() as api:
        step = open_enrich(
            {
                "url": api.url("/lookup"),
                "keys": ["id"],
                "batch_size": 10,
                "prefix": "ext_",
                "fields": ["score"],
            },
            tmp_path,
        )
        ids = list(range(1, 31))
        try:
            result = step.process(pl.DataFrame({"id": ids + ids}))
        finally:
            step.close()
        assert api.stats.paths["/lookup"] == 3  # 30 distinct keys in groups of 10
    out = result.outputs["out"]
    expected = [None if i % 13 == 0 else i * 10 for i in ids]
    assert out["ext_score"].to_list() == expected + expected


def test_enrich_missing_key_column_is_a_clear_error(tmp_path: Path) -> None:
    step = HttpEnrich(HttpEnrichConfig.model_validate({"url": "http://x/{{id}}", "keys": ["id"]}))
    with pytest.raises(Exception, match="key column"):
        step.process(pl.DataFrame({"other": [1]}))


def test_sink_rate_limit_is_respected_as_counted_by_the_server(tmp_path: Path) -> None:
    # the server refuses more than 3 requests in any 0.5 s; the sink asks for 2 per second
    with FakeApi(rate_limit=3, window=0.5) as api:
        sink = open_sink(
            {
                "url": api.url("/sink"),
                "rate_limit": {"requests_per_second": 2, "concurrency": 4},
                "retry": FAST_RETRY,
            },
            tmp_path,
        )
        try:
            assert sink.write_batch(people(6)) is None
        finally:
            sink.close()
        assert api.stats.rate_limited == 0
        assert api.stats.max_in_window <= 2
        assert sorted(api.posted_ids()) == [1, 2, 3, 4, 5, 6]


def test_sink_honours_retry_after_from_a_rate_limiting_receiver(tmp_path: Path) -> None:
    with FakeApi(rate_limit=2, window=0.3, retry_after=0.3) as api:
        sink = open_sink(
            {"url": api.url("/sink"), "rate_limit": {"concurrency": 4}, "retry": FAST_RETRY},
            tmp_path,
        )
        try:
            assert sink.write_batch(people(8)) is None
        finally:
            sink.close()
        assert api.stats.rate_limited > 0  # pushed back with 429 + Retry-After ...
        assert sorted(api.posted_ids()) == list(range(1, 9))  # ... and every record arrived
        assert sink.report() == {
            "requests": api.stats.requests,
            "retries": api.stats.rate_limited,
        }

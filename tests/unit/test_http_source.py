"""The ``http`` source against a real HTTP server on loopback (no mocks of HTTP)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from tideflow.connectors.http.settings import HttpSourceConfig
from tideflow.connectors.http.source import HttpSource
from tideflow.core.contracts import Context
from tideflow.errors import TerminalError
from tideflow.run.plan import engine_for
from tideflow.secrets import redact
from tideflow.spec.loader import load_pipeline_text
from tideflow.testing.fake_api import FakeApi

pytestmark = pytest.mark.timeout(60)

FAST_RETRY = {"backoff": 0.01, "max_backoff": 0.5, "max_attempts": 10}


def make_ctx(tmp: Path, stop: threading.Event | None = None) -> Context:
    return Context(
        pipeline="p",
        name="api",
        base_dir=tmp,
        state_dir=tmp / ".state",
        stop_event=stop or threading.Event(),
    )


@pytest.fixture
def api() -> Iterator[FakeApi]:
    with FakeApi(records=537, fail_rate=0.1, seed=11) as server:
        yield server


def read_all(
    config: dict[str, Any], tmp: Path, position: Any = None, max_batches: int | None = None
) -> tuple[pl.DataFrame, list[Any], HttpSource]:
    """Drive the source through its contract; stop after ``max_batches`` like a crash would."""
    source = HttpSource(HttpSourceConfig.model_validate(config))
    source.open(make_ctx(tmp), position)
    frames, positions = [], []
    try:
        while max_batches is None or len(positions) < max_batches:
            batch = source.read_batch()
            if batch is None:
                break
            frames.append(batch.data)
            positions.append(batch.position)
    finally:
        source.close()
    useful = [f for f in frames if f.height]
    data = pl.concat(useful, how="diagonal_relaxed") if useful else pl.DataFrame()
    return data, positions, source


STYLES: dict[str, dict[str, Any]] = {
    "page": {
        "path": "/page",
        "records_path": "data.items",
        "pagination": {"style": "page", "size_param": "per_page", "page_size": 25},
    },
    "page-total": {
        "path": "/page",
        "records_path": "data.items",
        "pagination": {
            "style": "page",
            "size_param": "per_page",
            "page_size": 50,
            "total_path": "total",
            "stop_on_short_page": False,
        },
    },
    "offset": {
        "path": "/offset",
        "records_path": "items",
        "pagination": {"style": "offset", "page_size": 20},
    },
    "cursor": {
        "path": "/cursor",
        "records_path": "items",
        "params": {"limit": 20},
        "pagination": {"style": "cursor", "cursor_path": "next_cursor"},
    },
    "next_url": {
        "path": "/next",
        "records_path": "items",
        "params": {"limit": 30},
        "pagination": {"style": "next_url", "next_url_path": "next"},
    },
    "link_header": {
        "path": "/link",
        "params": {"limit": 15},
        "pagination": {"style": "link_header"},
    },
}


def style_config(api: FakeApi, style: str, **extra: Any) -> dict[str, Any]:
    cfg = dict(STYLES[style])
    cfg["url"] = api.url(cfg.pop("path"))
    cfg["retry"] = FAST_RETRY
    cfg.update(extra)
    return cfg


@pytest.mark.parametrize("style", sorted(STYLES))
def test_every_paging_style_reads_every_record_once_despite_transient_failures(
    api: FakeApi, tmp_path: Path, style: str
) -> None:
    data, positions, _ = read_all(style_config(api, style), tmp_path)
    assert sorted(data["id"].to_list()) == list(range(1, 538))
    assert data["id"].n_unique() == 537
    assert api.stats.transient_failures > 0  # the server did fail, and retries covered it
    assert positions[-1]["next"] is None  # the sweep ended


def test_post_with_templated_body(api: FakeApi, tmp_path: Path) -> None:
    cfg = {
        "url": api.url("/search"),
        "method": "POST",
        "body": {"page": "{{page}}", "per_page": "{{limit}}", "label": "p{{page}}"},
        "records_path": "data.items",
        "pagination": {"style": "page", "page_size": 100},
        "retry": FAST_RETRY,
    }
    data, _, _ = read_all(cfg, tmp_path)
    assert sorted(data["id"].to_list()) == list(range(1, 538))


@pytest.mark.parametrize("style", ["page", "offset", "cursor", "next_url", "link_header"])
def test_crash_mid_paging_resumes_from_the_stored_position_without_loss(
    api: FakeApi, tmp_path: Path, style: str
) -> None:
    cfg = style_config(api, style)
    first, positions, _ = read_all(cfg, tmp_path, max_batches=3)
    assert positions[-1]["next"] is not None  # stopped in the middle of the sweep
    rest, _, _ = read_all(cfg, tmp_path, position=positions[-1])
    ids = first["id"].to_list() + rest["id"].to_list()
    assert sorted(ids) == list(range(1, 538))  # nothing lost, nothing read twice


def test_incremental_cursor_fetches_only_new_records_and_moves_only_after_a_full_sweep(
    api: FakeApi, tmp_path: Path
) -> None:
    cfg = style_config(
        api, "page", incremental={"field": "updated_at", "param": "since", "initial": 0}
    )
    partial, positions, _ = read_all(cfg, tmp_path, max_batches=2)
    # mid-sweep, the cursor sent is still the initial one; the max seen waits in `seen`
    assert positions[-1]["since"] == 0
    assert positions[-1]["seen"] == partial["updated_at"].max()
    rest, positions, _ = read_all(cfg, tmp_path, position=positions[-1])
    assert positions[-1] == {"since": 537, "seen": None, "next": None}
    assert partial.height + rest.height == 537
    api.add_records(25)
    new, positions, _ = read_all(cfg, tmp_path, position=positions[-1])
    assert sorted(new["id"].to_list()) == list(range(538, 563))
    assert positions[-1]["since"] == 562


def test_unbounded_source_polls_until_stopped(api: FakeApi, tmp_path: Path) -> None:
    stop = threading.Event()
    cfg = style_config(
        api,
        "cursor",
        poll_interval=0.05,
        incremental={"field": "updated_at", "param": "since"},
    )
    source = HttpSource(HttpSourceConfig.model_validate(cfg))
    source.open(make_ctx(tmp_path, stop), None)
    assert not source.bounded
    seen: list[int] = []
    added = False
    while True:
        batch = source.read_batch()
        assert batch is not None
        seen.extend(batch.data["id"].to_list() if batch.data.height else [])
        if len(seen) == 537 and not added:
            api.add_records(3)
            added = True
        if len(seen) == 540:
            stop.set()
            break
    source.close()
    assert sorted(seen) == list(range(1, 541))


@pytest.mark.parametrize(
    ("server_auth", "client_auth"),
    [
        (
            {"type": "bearer", "token": "s3cret-bearer"},
            {"type": "bearer", "token": "s3cret-bearer"},
        ),
        (
            {"type": "basic", "username": "ann", "password": "pw-1234"},
            {"type": "basic", "username": "ann", "password": "pw-1234"},
        ),
        (
            {"type": "api_key", "key": "key-abcdef", "name": "X-API-Key"},
            {"type": "api_key", "api_key": "key-abcdef"},
        ),
        (
            {"type": "api_key", "key": "key-qqqqqq", "name": "api_key"},
            {"type": "api_key", "api_key": "key-qqqqqq", "key_in": "query", "key_name": "api_key"},
        ),
    ],
)
def test_auth_styles(
    tmp_path: Path, server_auth: dict[str, str], client_auth: dict[str, str]
) -> None:
    with FakeApi(records=120, auth=server_auth) as api:
        cfg = style_config(api, "offset", auth=client_auth)
        data, _, _ = read_all(cfg, tmp_path)
        assert data.height == 120
        assert api.stats.unauthorized == 0


def test_oauth2_client_credentials_refreshes_the_token(tmp_path: Path) -> None:
    server_auth = {"type": "oauth2", "client_id": "app", "client_secret": "cs-98765"}
    # the server revokes each token after 4 requests: the client gets a 401, fetches a new
    # token and carries on (counted by the server, not timed)
    with FakeApi(records=300, auth=server_auth, token_uses=4) as api:
        cfg = style_config(
            api,
            "offset",
            auth={
                "type": "oauth2",
                "token_url": api.url("/oauth/token"),
                "client_id": "app",
                "client_secret": "cs-98765",
            },
        )
        data, _, _ = read_all(cfg, tmp_path)
        assert sorted(data["id"].to_list()) == list(range(1, 301))
        # 16 pages of 20 (the last one empty): 4 tokens, one 401 per revoked token
        assert api.stats.tokens_issued == 4
        assert api.stats.unauthorized == 3


def test_wrong_credentials_fail_with_an_actionable_error_without_the_secret(
    tmp_path: Path,
) -> None:
    with FakeApi(records=10, auth={"type": "bearer", "token": "right-token"}) as api:
        cfg = style_config(api, "offset", auth={"type": "bearer", "token": "wrong-token-xyz"})
        with pytest.raises(TerminalError) as err:
            read_all(cfg, tmp_path)
    message = redact(str(err.value))
    assert "401" in message and "check `auth`" in message
    assert "wrong-token-xyz" not in message


def test_retry_after_is_honoured_and_the_client_rate_limit_is_respected(tmp_path: Path) -> None:
    # The server allows 5 requests per 0.5 s window and answers 429 + Retry-After beyond.
    with FakeApi(records=400, rate_limit=5, window=0.5, retry_after=0.3) as api:
        cfg = style_config(api, "offset", pagination={"style": "offset", "page_size": 20})
        data, _, _ = read_all(cfg, tmp_path)  # no client limit: the server pushes back
        assert sorted(data["id"].to_list()) == list(range(1, 401))
        assert api.stats.rate_limited > 0
    with FakeApi(records=200, rate_limit=5, window=0.5, retry_after=0.3) as api:
        cfg = style_config(
            api,
            "offset",
            pagination={"style": "offset", "page_size": 20},
            rate_limit={"requests_per_second": 4},
        )
        data, _, source = read_all(cfg, tmp_path)  # 4/s is 2 per window: never refused
        assert data.height == 200
        assert api.stats.rate_limited == 0
        assert api.stats.max_in_window <= 3  # counted by the server
        assert source.client is None  # closed


def test_http_source_in_a_pipeline_resumes_after_a_stopped_run(
    api: FakeApi, tmp_path: Path
) -> None:
    text = f"""
name: http-resume
checkpoint: {{every_records: 1}}
source:
  type: http
  url: {api.url("/cursor")}
  params: {{limit: 25}}
  records_path: items
  pagination: {{style: cursor}}
  retry: {{backoff: 0.01, max_attempts: 10}}
sink: {{type: file, path: out, format: parquet}}
"""
    spec = load_pipeline_text(text, "p.yaml")
    engine = engine_for(spec, tmp_path)
    pages = 0

    def on_checkpoint(_: int) -> None:
        nonlocal pages
        pages += 1
        if pages == 4:
            engine.stop()

    engine.observer.on_checkpoint = on_checkpoint
    first = engine.run()
    assert first.stopped
    second = engine_for(spec, tmp_path).run()
    assert not second.stopped
    out = pl.read_parquet(str(tmp_path / "out" / "*.parquet"))
    assert sorted(out["id"].to_list()) == list(range(1, 538))


def test_a_next_url_keeps_its_own_query_string(tmp_path: Path) -> None:
    # regression: the follow-up URL's `after=` was dropped, so page 1 came back forever
    with FakeApi(records=40) as api:
        cfg = style_config(api, "next_url", params={"limit": 10})
        data, positions, _ = read_all(cfg, tmp_path)
        assert sorted(data["id"].to_list()) == list(range(1, 41))
        assert api.stats.paths["/next"] == 4
        assert [p["next"] for p in positions][-1] is None


def test_a_cursor_that_does_not_advance_is_a_terminal_error_not_a_loop(
    api: FakeApi, tmp_path: Path
) -> None:
    cfg = {
        "url": api.url("/page"),
        "records_path": "data.items",
        # `total` never changes, so taking it as the cursor names the same page again
        "pagination": {"style": "cursor", "cursor_path": "total"},
        "retry": FAST_RETRY,
    }
    with pytest.raises(TerminalError, match="paging would never end"):
        read_all(cfg, tmp_path)


def test_with_params_merges_into_the_query_string() -> None:
    from tideflow.connectors.http.client import with_params

    url = with_params("http://h/x?after=3&limit=5", {"limit": 10, "tag": ["a", "b"], "n": None})
    assert url == "http://h/x?after=3&limit=10&tag=a&tag=b"
    assert with_params("http://h/x?a=1", {}) == "http://h/x?a=1"


def test_stop_while_backing_off_returns_an_empty_batch_at_the_same_position(
    tmp_path: Path,
) -> None:
    stop = threading.Event()
    with FakeApi(records=10, fail_rate=1.0) as api:  # every request fails with 503
        cfg = style_config(api, "offset", retry={"backoff": 30, "max_attempts": 5})
        source = HttpSource(HttpSourceConfig.model_validate(cfg))
        source.open(make_ctx(tmp_path, stop), {"since": None, "seen": None, "next": {"offset": 0}})
        timer = threading.Timer(0.2, stop.set)
        timer.start()
        batch = source.read_batch()  # would wait 30 s before the 2nd attempt without the stop
        timer.join()
        source.close()
    assert batch is not None and batch.data.height == 0
    assert batch.position == {"since": None, "seen": None, "next": {"offset": 0}}
    assert api.stats.transient_failures == 1


def test_non_json_and_bad_records_path_are_terminal(api: FakeApi, tmp_path: Path) -> None:
    cfg = {"url": api.url("/page"), "records_path": "total", "retry": FAST_RETRY}
    with pytest.raises(TerminalError, match="not a list of records"):
        read_all(cfg, tmp_path)


def test_credentials_in_headers_and_params_are_registered_as_secrets(
    api: FakeApi, tmp_path: Path
) -> None:
    cfg = style_config(
        api,
        "offset",
        headers={"Authorization": "Token hdr-secret-7781", "X-Trace": "visible-trace"},
        params={"api_token": "qry-secret-5512"},
    )
    data, _, _ = read_all(cfg, tmp_path)
    assert data.height == 537
    text = redact("hdr-secret-7781 Token hdr-secret-7781 qry-secret-5512 visible-trace")
    assert text == "*** *** *** visible-trace"


def test_incremental_value_in_a_post_body_and_max_pages(api: FakeApi, tmp_path: Path) -> None:
    cfg = {
        "url": api.url("/search"),
        "method": "POST",
        "body": {"page": "{{page}}", "per_page": "{{limit}}"},
        "records_path": "data.items",
        "pagination": {"style": "page", "page_size": 10, "max_pages": 3},
        "incremental": {"field": "updated_at", "param": "since", "initial": 500, "send_in": "body"},
        "retry": FAST_RETRY,
    }
    data, positions, _ = read_all(cfg, tmp_path)
    assert data["id"].to_list() == list(range(501, 531))  # since=500 in the body, 3 pages
    assert positions[-1] == {"since": 530, "seen": None, "next": None}


def test_flatten_nested_objects(tmp_path: Path) -> None:
    with FakeApi(records=3) as api:
        cfg = {"url": api.url("/page"), "records_path": "data", "flatten": True}
        data, _, _ = read_all(cfg, tmp_path)
    assert data.height == 1
    assert "items" in data.columns  # `data` is one object: one record, `items` kept as a list


def test_retry_after_header_forms_and_backoff_bounds() -> None:
    import email.utils
    import time

    from tideflow.connectors.http.client import HttpClient, Response, retry_after
    from tideflow.connectors.http.settings import AuthConfig, RateLimitConfig, RetryConfig

    def response(value: str) -> Response:
        return Response(429, {"retry-after": value}, b"", "GET", "http://x")

    assert retry_after(response("2.5")) == 2.5
    assert retry_after(response("soon")) is None
    date = email.utils.formatdate(time.time() + 3600, usegmt=True)
    after = retry_after(response(date))
    assert after is not None and 3500 < after <= 3600
    client = HttpClient(
        AuthConfig(), RateLimitConfig(), RetryConfig(backoff=1, max_backoff=5, jitter=0.5), seed=1
    )
    waits = [client.backoff(attempt, None) for attempt in range(1, 7)]
    for attempt, wait in enumerate(waits, start=1):
        full = min(2 ** (attempt - 1), 5)
        assert full * 0.5 <= wait <= full  # jitter takes at most half
    assert client.backoff(1, 42.0) == 42.0  # Retry-After wins, even past max_backoff


def test_redirects_keep_credentials_only_within_the_same_origin(tmp_path: Path) -> None:
    from tideflow.connectors.http.client import HttpClient
    from tideflow.connectors.http.settings import AuthConfig, RateLimitConfig, RetryConfig

    auth = AuthConfig(type="bearer", token="redirect-secret-1")
    with FakeApi() as first, FakeApi() as other:
        client = HttpClient(auth, RateLimitConfig(), RetryConfig(), headers={"X-Api-Key": "k-9"})
        same = client.send(
            "GET", first.url("/redirect"), params={"to": first.url("/echo-headers")}
        ).json()
        cross = client.send(
            "GET", first.url("/redirect"), params={"to": other.url("/echo-headers")}
        ).json()
    assert same["authorization"] == "Bearer redirect-secret-1"
    assert same["x-api-key"] == "k-9"
    assert "authorization" not in cross and "x-api-key" not in cross  # another origin
    assert cross["user-agent"].startswith("tideflow")


def test_an_api_key_in_the_query_never_shows_in_errors(tmp_path: Path) -> None:
    with FakeApi(records=10, auth={"type": "api_key", "key": "right", "name": "key"}) as api:
        cfg = style_config(
            api,
            "offset",
            auth={
                "type": "api_key",
                "api_key": "wrong-query-key-3",
                "key_in": "query",
                "key_name": "key",
            },
        )
        with pytest.raises(TerminalError) as err:
            read_all(cfg, tmp_path)
    assert "401" in str(err.value)
    assert "wrong-query-key-3" not in str(err.value)  # masked in the error itself
    assert "key=" in str(err.value)  # the URL is shown, its key masked


def test_records_of_conflicting_shapes_are_a_clear_error() -> None:
    from tideflow.connectors.http.source import records_frame

    assert records_frame([{"a": 1}, {"a": 2.5}, 7], flatten=False).columns == ["a", "value"]
    with pytest.raises(TerminalError, match="do not share a schema"):
        records_frame([{"a": [1]}, {"a": "x"}], flatten=False)


def test_oauth2_wrong_client_secret_is_terminal_and_masked(tmp_path: Path) -> None:
    server_auth = {"type": "oauth2", "client_id": "app", "client_secret": "right-secret"}
    with FakeApi(records=10, auth=server_auth) as api:
        cfg = style_config(
            api,
            "offset",
            auth={
                "type": "oauth2",
                "token_url": api.url("/oauth/token"),
                "client_id": "app",
                "client_secret": "wrong-secret-4471",
            },
        )
        with pytest.raises(TerminalError, match="returned 401; check client_id") as err:
            read_all(cfg, tmp_path)
        assert api.stats.tokens_issued == 0
    assert "wrong-secret-4471" not in str(err.value)


def test_rate_limit_interval_takes_the_stricter_budget() -> None:
    from tideflow.connectors.http.settings import RateLimitConfig

    assert RateLimitConfig().interval == 0
    assert RateLimitConfig(requests_per_second=4).interval == 0.25
    assert RateLimitConfig(requests_per_second=4, requests_per_minute=60).interval == 1.0

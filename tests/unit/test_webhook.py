"""The ``webhook`` source: real HTTP posts on loopback, answered only once durable."""

from __future__ import annotations

import hashlib
import hmac
import threading
import urllib.error
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest

from tideflow.connectors.http.webhook import WebhookConfig, WebhookSource
from tideflow.connectors.memory import clear, collected
from tideflow.core.contracts import Context
from tideflow.core.engine import Engine
from tideflow.errors import StateError
from tideflow.spec.loader import load_pipeline_text

pytestmark = pytest.mark.timeout(60)


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=body, headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, orjson.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def open_source(tmp: Path, position: Any = None, **settings: Any) -> WebhookSource:
    source = WebhookSource(WebhookConfig.model_validate({"port": 0, **settings}))
    ctx = Context("p", "hook", tmp, tmp / ".state", threading.Event())
    source.open(ctx, position)
    return source


def wait_pending(source: WebhookSource, count: int) -> None:
    """Wait (bounded by the test timeout, not by a clock) until ``count`` records arrived."""
    while source.pending < count:
        threading.Event().wait(0.01)


def test_a_post_is_answered_only_after_the_checkpoint_covering_it(tmp_path: Path) -> None:
    source = open_source(tmp_path)
    pool = ThreadPoolExecutor(2)
    try:
        answer: Future[tuple[int, Any]] = pool.submit(
            post, source.url, orjson.dumps([{"id": 1}, {"id": 2}])
        )
        batch = source.read_batch()
        while batch is not None and batch.data.height == 0:
            batch = source.read_batch()
        assert batch is not None
        assert batch.data["id"].to_list() == [1, 2]
        assert batch.position == {"seq": 1}
        assert not answer.done()  # not durable yet: the sender still waits
        source.checkpointed({"seq": 0})
        assert not answer.done()
        source.checkpointed(batch.position)
        assert answer.result(timeout=10) == (200, {"accepted": 2})
        assert source.pending == 0
    finally:
        source.close()
        pool.shutdown()


def test_json_object_array_and_ndjson_bodies(tmp_path: Path) -> None:
    source = open_source(tmp_path, batch_size=100)
    pool = ThreadPoolExecutor(3)
    try:
        answers = [
            pool.submit(post, source.url, b'{"id": 1}'),
            pool.submit(post, source.url, b'[{"id": 2}, {"id": 3}]'),
            pool.submit(
                post, source.url, b'{"id": 4}\n\n{"id": 5}\n', {"Content-Type": "x-ndjson"}
            ),
        ]
        wait_pending(source, 5)
        batch = source.read_batch()
        assert batch is not None
        assert sorted(batch.data["id"].to_list()) == [1, 2, 3, 4, 5]
        source.checkpointed(batch.position)
        assert sorted(a.result(timeout=10)[1]["accepted"] for a in answers) == [1, 2, 2]
    finally:
        source.close()
        pool.shutdown()


def test_bad_bodies_and_paths_are_refused_at_once(tmp_path: Path) -> None:
    source = open_source(tmp_path, path="/hook")
    try:
        status, body = post(source.url, b"{not json")
        assert status == 400 and "not valid" in body["error"]
        assert post(source.url, b"[1, 2]")[0] == 400  # records must be objects
        assert post(source.url.replace("/hook", "/other"), b"{}")[0] == 404
        assert source.pending == 0
        assert source.report() == {"posts accepted": 0, "posts refused": 2}
    finally:
        source.close()


def test_shared_secret_and_hmac_signature(tmp_path: Path) -> None:
    source = open_source(tmp_path, secret="tok-82731", hmac_secret="key-11929")
    body = b'{"id": 7}'
    signature = "sha256=" + hmac.new(b"key-11929", body, hashlib.sha256).hexdigest()
    pool = ThreadPoolExecutor(1)
    try:
        assert post(source.url, body, {"X-Signature-256": signature})[0] == 401  # no token
        assert post(source.url, body, {"X-Webhook-Token": "tok-82731"})[0] == 401  # no sig
        bad = {"X-Webhook-Token": "tok-82731", "X-Signature-256": "sha256=00"}
        assert post(source.url, body, bad)[0] == 401
        good = {"X-Webhook-Token": "tok-82731", "X-Signature-256": signature}
        answer = pool.submit(post, source.url, body, good)
        wait_pending(source, 1)
        batch = source.read_batch()
        assert batch is not None and batch.data["id"].to_list() == [7]
        source.checkpointed(batch.position)
        assert answer.result(timeout=10)[0] == 200
    finally:
        source.close()
        pool.shutdown()


def test_back_pressure_answers_429_while_too_much_waits(tmp_path: Path) -> None:
    source = open_source(tmp_path, max_pending=5, retry_after=2)
    pool = ThreadPoolExecutor(1)
    try:
        first = pool.submit(post, source.url, orjson.dumps([{"i": i} for i in range(3)]))
        wait_pending(source, 3)
        request = urllib.request.Request(
            source.url, data=orjson.dumps([{"i": 9}] * 3), method="POST"
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 429
        assert refused.value.headers["Retry-After"] == "2"
        batch = source.read_batch()
        assert batch is not None
        source.checkpointed(batch.position)
        assert first.result(timeout=10)[0] == 200
        # room again
        second = pool.submit(post, source.url, orjson.dumps([{"i": 9}] * 3))
        wait_pending(source, 3)
        source.checkpointed(source.read_batch().position)  # type: ignore[union-attr]
        assert second.result(timeout=10)[0] == 200
    finally:
        source.close()
        pool.shutdown()


def test_closing_answers_waiting_senders_with_503_so_they_resend(tmp_path: Path) -> None:
    source = open_source(tmp_path)
    pool = ThreadPoolExecutor(1)
    try:
        answer = pool.submit(post, source.url, b'{"id": 1}')
        wait_pending(source, 1)
        source.read_batch()
    finally:
        source.close()
    assert answer.result(timeout=10)[0] == 503
    pool.shutdown()


def test_position_keeps_growing_across_restarts(tmp_path: Path) -> None:
    source = open_source(tmp_path, position={"seq": 41})
    pool = ThreadPoolExecutor(1)
    try:
        answer = pool.submit(post, source.url, b'{"id": 1}')
        wait_pending(source, 1)
        batch = source.read_batch()
        assert batch is not None and batch.position == {"seq": 42}
        source.checkpointed(batch.position)
        assert answer.result(timeout=10)[0] == 200
    finally:
        source.close()
        pool.shutdown()
    with pytest.raises(StateError, match="not a webhook position"):
        open_source(tmp_path, position={"offset": 3})


def test_webhook_pipeline_acknowledges_after_the_sink_committed(tmp_path: Path) -> None:
    clear("hook-out")
    text = """
name: hook
checkpoint: {every_records: 1000000, every_seconds: 0.05}
source: {type: webhook, port: 0, max_wait: 0.02}
sink: {type: memory, collector: hook-out}
"""
    engine = Engine(load_pipeline_text(text, "p.yaml"), tmp_path)
    result: list[Any] = []
    runner = threading.Thread(target=lambda: result.append(engine.run()), daemon=True)
    runner.start()
    source = engine.graph.sources[0].component
    assert isinstance(source, WebhookSource)
    while source._server is None:  # started by the engine's thread
        threading.Event().wait(0.01)

    def send(i: int) -> tuple[int, bool]:
        ids = [i * 10 + j for j in range(10)]
        status, _ = post(source.url, orjson.dumps([{"id": x} for x in ids]))
        visible = set(collected("hook-out")["id"].to_list()) if status == 200 else set()
        return status, set(ids) <= visible

    with ThreadPoolExecutor(4) as pool:
        answers = [a.result(timeout=30) for a in [pool.submit(send, i) for i in range(8)]]
    # each sender was answered only once its records were committed by the sink
    assert answers == [(200, True)] * 8
    assert sorted(collected("hook-out")["id"].to_list()) == list(range(80))
    engine.stop()
    runner.join(timeout=30)
    assert result and result[0].stopped
    assert result[0].counts["webhook"]["report"] == {"posts accepted": 8, "posts refused": 0}

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
import polars as pl
import pytest

from tideflow.connectors.http.webhook import WebhookConfig, WebhookSource
from tideflow.connectors.memory import MemorySink, clear, collected
from tideflow.core.contracts import Context
from tideflow.core.engine import Engine
from tideflow.core.settings import Settings
from tideflow.errors import StateError
from tideflow.registry import Registry
from tideflow.run.plan import engine_for
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
    engine = engine_for(load_pipeline_text(text, "p.yaml"), tmp_path)
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


# -- group commit, delivery ids, back-pressure -----------------------------------------------


def start(text: str, tmp_path: Path, registry: Registry | None = None) -> tuple[Engine, Any]:
    """Run the pipeline in a thread; returns the engine and a function that stops it and
    returns its result."""
    spec = load_pipeline_text(text, "p.yaml", registry=registry)
    engine = engine_for(spec, tmp_path, registry=registry)
    result: list[Any] = []
    runner = threading.Thread(target=lambda: result.append(engine.run()), daemon=True)
    runner.start()
    source = engine.graph.sources[0].component
    while source._server is None:  # started by the engine's thread
        assert runner.is_alive(), "the run ended before listening"
        threading.Event().wait(0.01)

    def stop() -> Any:
        engine.stop()
        runner.join(timeout=30)
        assert result, "the run did not end"
        return result[0]

    return engine, stop


def test_each_post_of_a_sequential_sender_gets_its_own_checkpoint(tmp_path: Path) -> None:
    """Thresholds an hour away: a waiting sender is answered by a group commit (the client's
    30 s timeout is only a safety bound), one checkpoint per post."""
    clear("hook-seq")
    engine, stop = start(
        """
name: hook-seq
checkpoint: {every_records: 1000000, every_seconds: 3600}
source: {type: webhook, port: 0}
sink: {type: memory, collector: hook-seq}
""",
        tmp_path,
    )
    url = engine.graph.sources[0].component.url
    for i in range(5):
        assert post(url, orjson.dumps({"id": i}))[0] == 200
        # answered only once visible
        assert collected("hook-seq")["id"].to_list() == list(range(i + 1))
    assert engine.checkpoints == 5
    assert stop().checkpoints == 6


def test_a_repeated_delivery_is_answered_without_taking_its_records_again(
    tmp_path: Path,
) -> None:
    source = open_source(tmp_path, idempotency_header="X-Delivery")
    pool = ThreadPoolExecutor(2)
    try:
        first = pool.submit(post, source.url, b'{"id": 1}', {"X-Delivery": "d-1"})
        wait_pending(source, 1)
        # The same delivery again while the first waits: it waits for the same checkpoint.
        again = pool.submit(post, source.url, b'{"id": 1}', {"X-Delivery": "d-1"})
        batch = source.read_batch()
        assert batch is not None and batch.data["id"].to_list() == [1]
        assert source.pending == 1
        source.checkpointed(batch.position)
        assert first.result(timeout=10) == (200, {"accepted": 1})
        assert again.result(timeout=10) == (200, {"accepted": 0, "duplicate": True})
        # Once durable, a repeat is answered at once and takes nothing.
        assert post(source.url, b'{"id": 1}', {"X-Delivery": "d-1"})[0] == 200
        assert source.pending == 0
        empty = source.read_batch()
        assert empty is not None and empty.data.height == 0
        # Another id is another delivery.
        other = pool.submit(post, source.url, b'{"id": 2}', {"X-Delivery": "d-2"})
        wait_pending(source, 1)
        batch = source.read_batch()
        assert batch is not None and batch.data["id"].to_list() == [2]
        source.checkpointed(batch.position)
        assert other.result(timeout=10) == (200, {"accepted": 1})
        assert source.report() == {
            "posts accepted": 2,
            "posts refused": 0,
            "repeated deliveries": 2,
        }
    finally:
        source.close()
        pool.shutdown()


def test_delivery_ids_count_only_once_a_checkpoint_covers_them(tmp_path: Path) -> None:
    """An id whose post no checkpoint covered (a crash before it) is forgotten on restart:
    the sender got no 200, and its repeat is taken."""
    settings = {"idempotency_header": "X-Delivery"}
    source = open_source(tmp_path, **settings)
    pool = ThreadPoolExecutor(1)
    try:
        lost = pool.submit(post, source.url, b'{"id": 1}', {"X-Delivery": "d-1"})
        wait_pending(source, 1)
        assert source.read_batch() is not None  # handed on (id stored), never checkpointed
    finally:
        source.close()  # the run ends without a checkpoint
    assert lost.result(timeout=10)[0] == 503
    source = open_source(tmp_path, None, **settings)  # resumes from no checkpoint
    try:
        answer = pool.submit(post, source.url, b'{"id": 1}', {"X-Delivery": "d-1"})
        wait_pending(source, 1)
        batch = source.read_batch()
        assert batch is not None and batch.data["id"].to_list() == [1]  # taken this time
        source.checkpointed(batch.position)
        assert answer.result(timeout=10) == (200, {"accepted": 1})
        position = batch.position
    finally:
        source.close()
    source = open_source(tmp_path, position, **settings)  # resumes from that checkpoint
    try:
        assert post(source.url, b'{"id": 1}', {"X-Delivery": "d-1"}) == (
            200,
            {"accepted": 0, "duplicate": True},
        )
        assert source.pending == 0
    finally:
        source.close()
        pool.shutdown()


def test_delivery_ids_are_forgotten_after_the_retention_window(tmp_path: Path) -> None:
    source = open_source(tmp_path, idempotency_header="X-Delivery", idempotency_retention=0.05)
    pool = ThreadPoolExecutor(1)
    try:
        for expected in (1, 1):  # the second time, the id has expired: taken again
            answer = pool.submit(post, source.url, b'{"id": 1}', {"X-Delivery": "d-1"})
            wait_pending(source, 1)
            batch = source.read_batch()
            assert batch is not None and batch.data.height == expected
            source.checkpointed(batch.position)
            assert answer.result(timeout=10)[0] == 200
            threading.Event().wait(0.1)  # longer than the retention (a lower bound only)
    finally:
        source.close()
        pool.shutdown()


class SlowConfig(Settings):
    """Settings of the slow test sink."""

    collector: str
    seconds: float


class SlowSink(MemorySink):
    """The memory sink, slowed down: every batch takes ``seconds`` to write."""

    config_model = SlowConfig  # type: ignore[assignment]

    def write_batch(self, batch: pl.DataFrame) -> None:
        threading.Event().wait(self.config.seconds)
        super().write_batch(batch)


def test_a_pipeline_slower_than_its_senders_answers_429_not_a_long_wait(
    tmp_path: Path,
) -> None:
    """Posts keep arriving while each batch takes 0.3 s to write: those that would wait
    longer than `max_pending_seconds` are refused at once with 429 + Retry-After; senders
    that come back are all taken in the end, exactly once, and nobody gets a 503."""
    clear("hook-slow")
    registry = Registry()
    registry.load_plugins()
    registry.register("sink", "slow")(SlowSink)
    engine, stop = start(
        """
name: hook-slow
source: {type: webhook, port: 0, max_pending_seconds: 0.1, retry_after: 3}
sink: {type: slow, collector: hook-slow, seconds: 0.3}
""",
        tmp_path,
        registry,
    )
    url = engine.graph.sources[0].component.url
    statuses: list[tuple[int, str | None]] = []
    lock = threading.Lock()

    def sender(i: int) -> None:
        threading.Event().wait(0.03 * i)  # arrivals spread over 0.6 s, whatever the answers
        body = orjson.dumps([{"id": i, "part": j} for j in range(5)])
        while True:
            request = urllib.request.Request(url, data=body, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=60) as reply:
                    status, retry = reply.status, None
            except urllib.error.HTTPError as exc:
                status, retry = exc.code, exc.headers["Retry-After"]
            with lock:
                statuses.append((status, retry))
            if status != 429:
                return
            threading.Event().wait(0.1)  # a test need not wait the whole Retry-After

    with ThreadPoolExecutor(20) as pool:
        list(pool.map(sender, range(20)))
    result = stop()
    refused = [s for s in statuses if s[0] == 429]
    assert {s for s, _ in statuses} <= {200, 429}, statuses
    assert refused, "no post was refused: back-pressure did not act"
    assert all(retry == "3" for _, retry in refused)
    assert len(statuses) - len(refused) == 20
    got = collected("hook-slow").sort("id", "part")
    assert got["id"].to_list() == [i for i in range(20) for _ in range(5)]
    assert result.counts["webhook"]["report"] == {
        "posts accepted": 20,
        "posts refused": len(refused),
    }


@pytest.mark.parametrize(
    ("body", "content_type"),
    [(b'{"id": 1,', "application/json"), (b'{"id": 1}\n{"id": ', "application/json")],
)
def test_a_malformed_json_body_is_reported_as_json(body: bytes, content_type: str) -> None:
    from tideflow.connectors.http.webhook import _Rejected, parse_records

    with pytest.raises(_Rejected) as caught:
        parse_records(body, content_type, "auto")
    message = str(caught.value)
    assert "not valid JSON" in message and "NDJSON" not in message


def test_ndjson_sent_as_application_json_is_still_read() -> None:
    from tideflow.connectors.http.webhook import parse_records

    items, long = parse_records(b'{"id": 1}\n{"id": 2}\n', "application/json", "auto")
    assert items == [{"id": 1}, {"id": 2}] and long == []

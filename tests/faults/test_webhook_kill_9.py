"""``kill -9`` a webhook -> file pipeline during a burst of posts (group commit on).

Senders post one record each and send again whatever was not answered ``200``, as webhook
senders do. Whatever the moment of the crash:

- every post answered ``200`` is in the output exactly once (the answer came after its
  checkpoint was durable and its file committed);
- every post is in the output at least once (unanswered ones were sent again);
- with a delivery id (``idempotency_header``) every post is in the output exactly once,
  even when the crash fell between a checkpoint and its answers (forced at named crash
  points, which a random kill hits only by luck).
"""

from __future__ import annotations

import http.client
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import orjson
import polars as pl
import pytest
from tests.faults.oracle import seeds

from tideflow.core.faults import CRASH_EXIT_CODE

POSTS = 300
SENDERS = 12
HEADER = "X-Delivery"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_pipeline(folder: Path, port: int, ids: bool) -> Path:
    idempotency = f", idempotency_header: {HEADER}" if ids else ""
    path = folder / "hook.yaml"
    path.write_text(
        f"""
name: hook-crash
source: {{type: webhook, port: {port}, path: /in{idempotency}}}
sink: {{type: file, path: out, format: ndjson}}
""",
        encoding="utf-8",
    )
    return path


@contextmanager
def running(
    pipeline: Path, port: int, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """The pipeline in a child process, listening; killed (-9) on the way out if alive."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tideflow.cli.main", "run", str(pipeline)],
        cwd=pipeline.parent,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120  # interpreter start-up on a loaded machine
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the pipeline never listened"
                time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stderr:
            proc.stderr.close()


class Senders:
    """Posts ``{"id": i}`` (with delivery id ``d-i``) from several threads and remembers
    which were answered 200."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.answered: set[int] = set()
        self.statuses: list[int] = []
        self.duplicates = 0
        self.lock = threading.Lock()
        self.local = threading.local()

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        return conn

    def send(self, i: int) -> bool:
        """One attempt; True when answered 200."""
        conn = self._connection()
        try:
            conn.request("POST", "/in", orjson.dumps({"id": i}), {HEADER: f"d-{i}"})
            reply = conn.getresponse()
            body = orjson.loads(reply.read())
        except (OSError, http.client.HTTPException):
            conn.close()
            self.local.conn = None
            return False  # the process died (or is dying): no answer
        with self.lock:
            self.statuses.append(reply.status)
            if reply.status == 200:
                self.answered.add(i)
                self.duplicates += bool(body.get("duplicate"))
        return reply.status == 200

    def burst(self, ids: list[int]) -> list[int]:
        """Send each id once; the ids not answered 200."""
        failed: list[int] = []

        def one(i: int) -> None:
            if not self.send(i):
                with self.lock:
                    failed.append(i)

        with ThreadPoolExecutor(SENDERS) as pool:
            list(pool.map(one, ids))
        return sorted(failed)

    def until_answered(self, ids: list[int]) -> None:
        """Send again until every id is answered 200 (429s included)."""
        left = ids
        for _ in range(50):
            left = self.burst(left)
            if not left:
                return
            time.sleep(0.2)
        raise AssertionError(f"{len(left)} posts never answered 200: {left[:10]}")


def output_ids(folder: Path) -> pl.Series:
    files = sorted(p for p in folder.glob("*.ndjson") if not p.name.startswith("."))
    if not files:
        return pl.Series("id", [], dtype=pl.Int64)
    return pl.concat([pl.read_ndjson(f) for f in files])["id"]


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0


def check(out: Path, answered_first: set[int], exactly_once: bool) -> None:
    counts = output_ids(out).value_counts()
    seen = dict(zip(counts["id"].to_list(), counts["count"].to_list(), strict=True))
    missing = [i for i in range(POSTS) if i not in seen]
    assert not missing, f"posts lost: {missing[:10]}"
    twice_answered = [i for i in answered_first if seen[i] != 1]
    assert not twice_answered, f"posts answered 200 but not once in the output: {twice_answered}"
    if exactly_once:
        repeated = {i: n for i, n in seen.items() if n != 1}
        assert not repeated, f"posts taken more than once despite their delivery id: {repeated}"
    leftovers = [p for p in out.iterdir() if p.is_file() and p.suffix != ".ndjson"]
    assert not leftovers, leftovers


@pytest.mark.slow
@pytest.mark.parametrize("ids", [True, False], ids=["delivery-ids", "no-ids"])
@pytest.mark.parametrize("seed", seeds(2, 6, base=2400))
def test_kill_9_during_a_burst_of_posts(tmp_path: Path, seed: int, ids: bool) -> None:
    rng = random.Random(seed)
    port = free_port()
    pipeline = write_pipeline(tmp_path, port, ids)
    senders = Senders(port)
    order = list(range(POSTS))
    rng.shuffle(order)
    kill_after = rng.randrange(20, POSTS // 2)
    with running(pipeline, port) as proc:
        # The kill lands when `kill_after` posts were answered, with SENDERS in flight.
        done = threading.Event()

        def killer() -> None:
            while len(senders.answered) < kill_after and not done.is_set():
                time.sleep(0.001)
            proc.send_signal(signal.SIGKILL)

        thread = threading.Thread(target=killer)
        thread.start()
        unanswered = senders.burst(order)
        done.set()
        thread.join()
        assert proc.wait() == -signal.SIGKILL
    answered_first = set(senders.answered)
    assert len(answered_first) < POSTS, "the kill landed after the burst: nothing proved"
    with running(pipeline, port) as proc:
        senders.until_answered(unanswered)
        stop(proc)
    check(tmp_path / "out", answered_first, exactly_once=ids)


@pytest.mark.slow
@pytest.mark.parametrize("ids", [True, False], ids=["delivery-ids", "no-ids"])
@pytest.mark.parametrize("point", ["checkpoint.after_state", "checkpoint.after_first_sink_commit"])
def test_crash_between_a_checkpoint_and_its_answers(tmp_path: Path, point: str, ids: bool) -> None:
    """The crash falls after the checkpoint is durable, before any of its posts is answered:
    their senders send again; the delivery id makes the repeats take nothing."""
    port = free_port()
    pipeline = write_pipeline(tmp_path, port, ids)
    senders = Senders(port)
    with running(pipeline, port, {"TIDEFLOW_CRASH_AT": f"{point}:5"}) as proc:
        unanswered = senders.burst(list(range(POSTS)))
        assert proc.wait() == CRASH_EXIT_CODE
    answered_first = set(senders.answered)
    assert unanswered, "every post was answered before the crash"
    with running(pipeline, port) as proc:
        senders.until_answered(unanswered)
        stop(proc)
    check(tmp_path / "out", answered_first, exactly_once=ids)
    if ids:
        # The crashed checkpoint's posts were durable: their repeats were recognised.
        assert senders.duplicates > 0


@pytest.mark.slow
@pytest.mark.parametrize("seed", seeds(2, 6, base=2500))
def test_a_200_means_the_record_survives_kill_9(tmp_path: Path, seed: int) -> None:
    """Kill the process right after a 200: the post is in the output after the restart."""
    rng = random.Random(seed)
    port = free_port()
    pipeline = write_pipeline(tmp_path, port, ids=False)
    senders = Senders(port)
    last = rng.randrange(1, 40)
    with running(pipeline, port) as proc:
        for i in range(last + 1):
            assert senders.send(i)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with running(pipeline, port) as proc:
        stop(proc)
    assert sorted(output_ids(tmp_path / "out").to_list()) == list(range(last + 1))

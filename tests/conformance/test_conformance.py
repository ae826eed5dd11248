"""Every source and sink keeps the same promises (see cases.py to add a connector).

Sources: N records in, the same N out; after a crash before the checkpoint exactly the
records the checkpoint did not cover come again; undecodable input is dead-lettered;
``close`` releases every connection. Sinks: N in, N visible after the commit; a replay of a
committed batch changes nothing (idempotent) or adds it again (documented at-least-once);
two-phase sinks show nothing that was not committed; rejected records are dead-lettered;
``close`` releases every connection.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import polars as pl
import psutil
import pytest
from tests.conformance.cases import SINKS, SOURCES, Env, SinkCase, SourceCase, prepare, quiet_after
from tests.messaging.conftest import drain

from tideflow.core.contracts import Sink, Source

N = 40
ROOT = Path(__file__).parents[2]
by_name = {"ids": lambda case: case.name}


def resources() -> int:
    """Sockets and files this process holds open."""
    proc = psutil.Process()
    return len(proc.net_connections(kind="inet")) + len(proc.open_files())


def open_source(case: SourceCase, env: Env, settings: dict[str, Any], position: Any) -> Source:
    source = case.component(case.component.config_model.model_validate(settings))
    source.open(env.ctx(case.name), position)
    return source


def open_sink(case: SinkCase, env: Env, settings: dict[str, Any], pending: Any = None) -> Sink:
    sink = case.component(case.component.config_model.model_validate(settings))
    sink.open(env.ctx(case.name), pending)
    return sink


def delivered_within(source: Source, seconds: float) -> pl.DataFrame:
    """What a source still delivers within ``seconds`` (acknowledging as it goes)."""
    frames: list[pl.DataFrame] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        batch = source.read_batch()
        if batch is None:
            break
        if batch.data.height:
            frames.append(batch.data)
        source.checkpointed(batch.position)
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


def ids(frame: pl.DataFrame) -> list[int]:
    return sorted(frame["i"].cast(pl.Int64).to_list()) if frame.height else []


# -- sources ----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", SOURCES, **by_name)
def test_source_delivers_every_record_once(case: SourceCase, env: Env) -> None:
    source = open_source(case, env, case.feed(env, N, False), None)
    try:
        frame, position = drain(source, N)
        source.checkpointed(position)
        assert quiet_after(source) == 0
    finally:
        source.close()
    assert ids(frame) == list(range(N))


CRASHING_READER = """
import json, os, sys, threading
from pathlib import Path
from tests.messaging.conftest import drain
from tideflow.core.contracts import Context
import importlib

module, cls, name, settings, base, first = json.loads(sys.argv[1])
component = getattr(importlib.import_module(module), cls)
source = component(component.config_model.model_validate(settings))
source.open(Context("conformance", name, Path(base), Path(base), threading.Event()), None)
head, checkpoint = drain(source, first)
source.checkpointed(checkpoint)
tail, _ = drain(source, int(sys.argv[2]) - head.height)
result = {"head": head["i"].to_list(), "tail": tail["i"].to_list(), "checkpoint": checkpoint}
print(json.dumps(result))
sys.stdout.flush()
os._exit(0)  # like kill -9: no close(), no goodbye to the broker
"""


@pytest.mark.parametrize("case", SOURCES, **by_name)
def test_source_crash_before_checkpoint_redelivers_exactly_the_rest(
    case: SourceCase, env: Env
) -> None:
    settings = case.feed(env, N, False)
    # The first reader runs in its own process and dies abruptly after its first checkpoint.
    module, cls = case.component.__module__, case.component.__name__
    args = [module, cls, case.name, settings, str(env.tmp), 10]
    crashed = subprocess.run(
        [sys.executable, "-c", CRASHING_READER, json.dumps(args), str(N)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(map(str, [ROOT / "src", ROOT]))},
    )
    assert crashed.returncode == 0, crashed.stderr
    first = json.loads(crashed.stdout)
    head, tail = first["head"], first["tail"]
    second = open_source(case, env, settings, first["checkpoint"])
    try:
        again, position = drain(second, len(tail))
        second.checkpointed(position)
        late = delivered_within(second, 0.4)
    finally:
        second.close()
    got = ids(again) + ids(late)
    if case.acks_lost_in_a_crash:
        covered_again = [i for i in got if i in set(head)]
        assert sorted(i for i in got if i not in set(head)) == sorted(tail), got
        assert len(set(covered_again)) == len(covered_again), f"delivered twice: {got}"
    else:
        assert sorted(got) == sorted(tail), f"after the redelivery: {ids(late)}"
    assert sorted(head + tail) == list(range(N))


@pytest.mark.parametrize("case", [c for c in SOURCES if c.bad_input], **by_name)
def test_source_dead_letters_undecodable_input(case: SourceCase, env: Env) -> None:
    source = open_source(case, env, case.feed(env, N, True), None)
    good: list[pl.DataFrame] = []
    dead = 0
    try:
        while sum(f.height for f in good) + dead < N + 1:
            batch = source.read_batch()
            assert batch is not None
            good.append(batch.data)
            dead += batch.dead.height if batch.dead is not None else 0
            source.checkpointed(batch.position)
    finally:
        source.close()
    assert dead == 1
    assert ids(pl.concat([f for f in good if f.height], how="diagonal_relaxed")) == list(range(N))


@pytest.mark.parametrize("case", SOURCES, **by_name)
def test_source_close_releases_connections(case: SourceCase, env: Env) -> None:
    settings = case.feed(env, N, False)
    gc.collect()
    before = resources()
    source = open_source(case, env, settings, None)
    drain(source, 5)
    source.close()
    gc.collect()
    assert resources() <= before


# -- sinks ------------------------------------------------------------------------------------


def batch(n: int = N) -> pl.DataFrame:
    return pl.DataFrame({"i": list(range(n)), "name": [f"r{i}" for i in range(n)]})


def checkpoint(sink: Sink) -> Any:
    token = sink.flush()
    sink.commit(token)
    return token


@pytest.mark.parametrize("case", SINKS, **by_name)
def test_sink_makes_every_record_visible_and_replays_as_promised(case: SinkCase, env: Env) -> None:
    settings, read = case.target(env)
    sink = open_sink(case, env, settings)
    try:
        dead = sink.write_batch(prepare(case, batch()))
        assert dead is None or dead.height == 0
        token = checkpoint(sink)
    finally:
        sink.close()
    assert sorted(read()) == list(range(N))
    # A replay of the committed batch, as after a crash between commit and the ack.
    sink = open_sink(case, env, settings, token)
    try:
        sink.write_batch(prepare(case, batch()))
        checkpoint(sink)
    finally:
        sink.close()
    expected = list(range(N)) if case.idempotent else sorted(list(range(N)) * 2)
    assert sorted(read()) == expected


@pytest.mark.parametrize("case", [c for c in SINKS if c.two_phase], **by_name)
def test_two_phase_sink_shows_nothing_uncommitted_after_a_crash(case: SinkCase, env: Env) -> None:
    settings, read = case.target(env)
    sink = open_sink(case, env, settings)
    sink.write_batch(prepare(case, batch()))
    sink.flush()
    sink.close()  # crash after flush, before the checkpoint is durable and commits
    sink = open_sink(case, env, settings, None)
    sink.close()
    assert read() == []


@pytest.mark.parametrize("case", [c for c in SINKS if c.bad_batch is not None], **by_name)
def test_sink_dead_letters_rejected_records(case: SinkCase, env: Env) -> None:
    assert case.bad_batch is not None
    settings, read = case.target(env)
    sink = open_sink(case, env, settings)
    try:
        dead = sink.write_batch(prepare(case, case.bad_batch))
        checkpoint(sink)
    finally:
        sink.close()
    assert dead is not None and dead.height == 1
    assert read() == [1001]


@pytest.mark.parametrize("case", SINKS, **by_name)
def test_sink_close_releases_connections(case: SinkCase, env: Env) -> None:
    settings, _ = case.target(env)
    gc.collect()
    before = resources()
    sink = open_sink(case, env, settings)
    sink.write_batch(prepare(case, batch(5)))
    checkpoint(sink)
    sink.close()
    gc.collect()
    assert resources() <= before

"""Incremental checkpoints of keyed state: a base snapshot plus the deltas stored after it.

The ``aggregate`` step is driven through many checkpoints — each stored as a delta or,
at random, whole (a compaction) — in a real state store (SQLite and PostgreSQL). After
every checkpoint, a step restored from the store must hold exactly the live step's state,
and its totals must equal a Polars ``group_by`` of every record so far.
"""

from __future__ import annotations

import random
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

import tideflow as tf
from tideflow.core.checkpoints import GroupCheckpoint, PartitionState
from tideflow.core.contracts import Context
from tideflow.core.delta import FrameDelta, StateDelta, apply_delta
from tideflow.core.observer import RunObserver
from tideflow.operators.timeseries.aggregate import CHANGED, Aggregate, AggregateConfig
from tideflow.operators.timeseries.dedupe import Dedupe, DedupeConfig
from tideflow.operators.timeseries.window import Window, WindowConfig
from tideflow.state.locate import open_state_store
from tideflow.state.store import StateStore


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    """Both backends; PostgreSQL gets a database of its own."""
    if request.param == "sqlite":
        opened = open_state_store(str(tmp_path / "s.db"), tmp_path)
    else:
        opened = open_state_store(request.getfixturevalue("postgres_database"), tmp_path)
    yield opened
    opened.close()


def _step(**settings: Any) -> Aggregate:
    config = AggregateConfig.model_validate(
        {"keys": ["k"], "aggregations": {"s": "sum(v)", "n": "count()"}, **settings}
    )
    return Aggregate(config)


def _open(step: Aggregate, state: Any) -> Aggregate:
    ctx = Context("p", "totals", Path("."), Path("."), threading.Event())
    step.open(ctx, state)
    return step


def _batch(rng: np.random.Generator, keys: int, size: int, t0: int) -> pl.DataFrame:
    # Nulls among the keys: one group of their own, which a restore must match too.
    k = rng.integers(0, keys, size).astype(object)
    k[rng.random(size) < 0.02] = None
    return pl.DataFrame(
        {
            "k": pl.Series(k.tolist(), dtype=pl.Int64),
            "v": rng.integers(-100, 100, size),
            "ts": pl.Series(np.arange(t0, t0 + size) * 1_000_000).cast(pl.Datetime("us")),
        }
    )


def _rows(state: pl.DataFrame | None) -> pl.DataFrame:
    assert state is not None
    return state.drop(CHANGED, strict=False).sort("k", nulls_last=True)


@pytest.mark.parametrize("emit", ["on_update", "on_end", "every"])
def test_restore_after_many_checkpoints_equals_the_live_state_and_a_group_by(
    store: StateStore, emit: str
) -> None:
    rng = np.random.default_rng(7)
    pick = random.Random(7)
    clock = 0.0
    live = _step(emit={"every": "1s"} if emit == "every" else emit)
    live.clock = lambda: clock  # set before open: it starts the period
    live = _open(live, None)
    emissions = 0
    seen: list[pl.DataFrame] = []
    deltas = 0
    for checkpoint in range(1, 41):
        for _ in range(pick.randrange(0, 3)):
            batch = _batch(rng, 500, pick.randrange(1, 200), len(seen) * 1000)
            seen.append(batch)
            live.process(batch)
            clock += 0.6
            emissions += live.idle(1.0).generated > 0  # with `every`: every other batch
        whole = checkpoint == 1 or pick.random() < 0.15
        state = live.snapshot() if whole else live.snapshot_changes()
        deltas += not whole
        store.commit_checkpoint("p", checkpoint, {}, {"totals": state}, {}, [], "r")
        stored = store.load_checkpoint("p")
        assert stored is not None
        restored = _open(_step(emit={"every": "1s"} if emit == "every" else emit), None)
        restored = _open(restored, stored.step_states["totals"])
        # Exactly the live state: partials, what is not emitted yet, and the counters.
        assert_frame_equal(_rows(restored.state), _rows(live.state))
        assert restored.arrivals == live.arrivals
    assert deltas > 20, "few checkpoints were deltas: the test proved little"
    if emit == "every":
        assert emissions > 10, "few emissions between checkpoints: the test proved little"
    oracle = (
        pl.concat(seen)
        .group_by("k")
        .agg(pl.col("v").sum().alias("s"), pl.len().cast(pl.Int64).alias("n"))
        .sort("k", nulls_last=True)
    )
    totals = restored._final(_rows(restored.state)).sort("k", nulls_last=True)
    assert_frame_equal(totals, oracle, check_dtypes=False)


def test_expired_keys_and_emissions_are_restored_exactly(store: StateStore) -> None:
    rng = np.random.default_rng(3)
    clock = 0.0
    live = _step(time_column="ts", expire_after="8s", emit={"every": "1s"})
    live.clock = lambda: clock
    live = _open(live, None)
    removed = emissions = 0
    for checkpoint in range(1, 31):
        # A window of 100 keys slides by 5 a second: keys unseen for 8 s expire, and some
        # come back after they expired; each batch changes about a third of the live ones.
        k = rng.integers(checkpoint * 5, checkpoint * 5 + 100, 40)
        k = np.where(rng.random(40) < 0.1, rng.integers(0, checkpoint * 5 + 1, 40), k)
        batch = pl.DataFrame(
            {
                "k": k,
                "v": rng.integers(-100, 100, 40),
                "ts": pl.Series([checkpoint * 1_000_000] * 40).cast(pl.Datetime("us")),
            }
        )
        live.process(batch)
        removed += sum(f.height for f in live.removed)
        clock += 0.7
        emissions += live.idle(1.0).generated > 0
        state = live.snapshot() if checkpoint % 9 == 1 else live.snapshot_changes()
        store.commit_checkpoint("p", checkpoint, {}, {"totals": state}, {}, [], "r")
        stored = store.load_checkpoint("p")
        assert stored is not None
        restored = _open(_step(time_column="ts", expire_after="8s"), stored.step_states["totals"])
        assert_frame_equal(_rows(restored.state), _rows(live.state))
        assert restored.max_seen == live.max_seen
    assert removed, "no key expired: the test proved nothing"
    assert emissions, "nothing was emitted between checkpoints: the test proved little"


def test_a_compaction_replaces_the_base_and_forgets_the_deltas(store: StateStore) -> None:
    live = _open(_step(), None)
    live.process(pl.DataFrame({"k": [1, 2], "v": [1, 1]}))
    store.commit_checkpoint("p", 1, {}, {"totals": live.snapshot()}, {}, [], "r")
    for checkpoint in (2, 3):
        live.process(pl.DataFrame({"k": [checkpoint], "v": [5]}))
        written: dict[tuple[str, str, str], int] = {}
        state = live.snapshot_changes()
        assert state.frames["partials"].upsert.height == 1  # only the key that changed
        store.commit_checkpoint(
            "p", checkpoint, {}, {"totals": state}, {}, [], "r", written=written
        )
        assert set(written) == {("totals", "", "")}
    assert _deltas(store) == 2
    store.commit_checkpoint("p", 4, {}, {"totals": live.snapshot()}, {}, [], "r")
    assert _deltas(store) == 0
    stored = store.load_checkpoint("p")
    assert stored is not None
    assert_frame_equal(_rows(stored.step_states["totals"]["partials"]), _rows(live.state))
    store.reset("p")
    assert _deltas(store) == 0 and store.load_checkpoint("p") is None


def _deltas(store: StateStore) -> int:
    with store.db.reading() as conn:
        row = store.db.execute(conn, "SELECT count(*) FROM state_deltas").fetchone()
    return int(row[0])


def test_partition_deltas_move_with_the_partition(store: StateStore) -> None:
    """A new owner of a partition restores its base and the deltas stored after it."""
    live = _open(_step(), None)
    [claim] = store.claim_partitions("g", "w1", "src", ["0"])
    frames = [pl.DataFrame({"k": [i % 7, i % 3], "v": [i, 1]}) for i in range(12)]
    for checkpoint, frame in enumerate(frames, start=1):
        live.process(frame)
        state = live.snapshot() if checkpoint in (1, 6) else live.snapshot_changes()
        part = PartitionState("src", "0", claim.epoch, {"offset": checkpoint}, {"totals": state})
        store.commit_checkpoint(
            "g#worker-w1", checkpoint, {}, {}, {}, [], "r", GroupCheckpoint("g", "w1", [part])
        )
    assert _deltas(store) == 6  # checkpoints 7..12 after the base of 6
    [taken] = store.claim_partitions("g", "w2", "src", ["0"])
    assert taken.position == {"offset": 12}
    assert_frame_equal(_rows(taken.step_states["totals"]["partials"]), _rows(live.state))
    oracle = pl.concat(frames).group_by("k").agg(pl.col("v").sum().alias("s")).sort("k")
    restored = _open(_step(), taken.step_states["totals"])
    assert_frame_equal(restored._final(_rows(restored.state)).select("k", "s"), oracle)


def test_a_delta_applies_resets_then_deletes_then_upserts() -> None:
    base = {"f": pl.DataFrame({"k": [1, 2, 3, None], "x": [1, 2, 3, 4], "d": [True] * 4}), "c": 1}
    delta = StateDelta(
        values={"c": 2},
        frames={
            "f": FrameDelta(
                keys=["k"],
                upsert=pl.DataFrame({"k": [3, 5], "x": [30, 50], "d": [True, True]}),
                delete=pl.DataFrame({"k": [2, 3, None]}),
                reset={"d": False},
            )
        },
    )
    from tideflow.core.codec import decode_state, encode_state

    out = apply_delta(base, decode_state(encode_state(delta.encodable())))
    assert out["c"] == 2
    assert out["f"].sort("k").to_dict(as_series=False) == {
        "k": [1, 3, 5],
        "x": [1, 30, 50],
        "d": [False, True, True],
    }


def test_a_pipeline_stores_deltas_and_resumes_exactly(tmp_path: Path) -> None:
    """A run checkpointing every 200 records stores deltas between compactions; a second
    run over more input resumes from base + deltas and ends with the exact totals."""
    rng = np.random.default_rng(1)
    data = pl.DataFrame({"k": rng.integers(0, 2000, 12_000), "v": rng.integers(-5, 50, 12_000)})
    (tmp_path / "in").mkdir()
    data.slice(0, 6000).write_parquet(tmp_path / "in" / "a.parquet")
    deltas: list[int] = []

    def count_deltas(_checkpoint: int) -> None:
        with sqlite3.connect(tmp_path / "state.db") as conn:
            deltas.append(conn.execute("SELECT count(*) FROM state_deltas").fetchone()[0])

    def run() -> None:
        sink = tf.sql(url=f"sqlite:///{tmp_path / 'out.db'}", table="t", mode="upsert", key=["k"])
        (
            tf.Pipeline(
                "inc",
                state=str(tmp_path / "state.db"),
                checkpoint={"every_records": 200, "compact_every": 6},
            )
            .source(tf.file(str(tmp_path / "in" / "*.parquet"), batch_size=200))
            .step("aggregate", keys=["k"], aggregations={"s": "sum(v)", "n": "count()"})
            .sink(sink)
            .run(tmp_path, observer=RunObserver(on_checkpoint=count_deltas))
        )

    run()
    # Deltas pile up, then a compaction takes them in (at most 5 after a base).
    assert max(deltas) == 5 and 0 in deltas[1:], deltas
    data.slice(6000).write_parquet(tmp_path / "in" / "b.parquet")
    run()
    with sqlite3.connect(tmp_path / "out.db") as conn:
        rows = conn.execute("SELECT k, s, n FROM t").fetchall()
    got = pl.DataFrame(rows, schema=["k", "s", "n"], orient="row").sort("k")
    oracle = data.group_by("k").agg(pl.col("v").sum().alias("s"), pl.len().alias("n")).sort("k")
    assert_frame_equal(got, oracle, check_dtypes=False)


def _events(rng: np.random.Generator, keys: int, size: int, t0: float) -> pl.DataFrame:
    """``size`` events over ``keys`` keys, up to 3 s out of order around ``t0`` seconds."""
    seconds = t0 + rng.random(size) * 4 - 3
    return pl.DataFrame(
        {
            "k": rng.integers(0, keys, size),
            "v": rng.integers(-100, 100, size),
            "ts": pl.Series((seconds * 1_000_000).astype(np.int64)).cast(pl.Datetime("us")),
        }
    )


@pytest.mark.parametrize("kind", ["tumbling", "sliding"])
def test_window_restored_from_deltas_equals_the_live_windows_and_emits_the_same(
    store: StateStore, kind: str
) -> None:
    settings: dict[str, Any] = {
        "kind": kind,
        "size": "10s",
        "keys": ["k"],
        "time_column": "ts",
        "max_out_of_orderness": "3s",
        "aggregations": {"s": "sum(v)", "n": "count()"},
    }
    if kind == "sliding":
        settings["slide"] = "5s"

    def make() -> Window:
        step = Window(WindowConfig.model_validate(settings))
        step.open(Context("p", "w", Path("."), Path("."), threading.Event()), None)
        return step

    rng = np.random.default_rng(5)
    live = make()
    emitted: list[pl.DataFrame] = []
    closed = deltas = 0
    for checkpoint in range(1, 41):
        out = live.process(_events(rng, 30, 50, checkpoint * 1.5))
        emitted.append(out.outputs["out"])
        closed += sum(f.height for f in live.closed)
        whole = checkpoint % 13 == 1
        state = live.snapshot() if whole else live.snapshot_changes()
        assert state is not None
        deltas += not whole
        store.commit_checkpoint("p", checkpoint, {}, {"w": state}, {}, [], "r")
        stored = store.load_checkpoint("p")
        assert stored is not None
        restored = make()
        restored.open(
            Context("p", "w", Path("."), Path("."), threading.Event()), stored.step_states["w"]
        )
        assert_frame_equal(
            restored.partials.sort("k", "__ws"), live.partials.sort("k", "__ws"), check_dtypes=False
        )
        assert restored.clock.snapshot() == live.clock.snapshot()
    assert closed > 50 and deltas > 30, "few windows closed between checkpoints"
    # The restored step closes the open windows exactly as the live one does.
    assert_frame_equal(restored.finish().outputs["out"], live.finish().outputs["out"])


def test_dedupe_restored_from_deltas_equals_the_live_state(store: StateStore) -> None:
    config = DedupeConfig.model_validate(
        {"keys": ["k"], "horizon": "5s", "time_column": "ts", "max_out_of_orderness": "3s"}
    )

    def make(state: Any) -> Dedupe:
        step = Dedupe(config)
        step.open(Context("p", "d", Path("."), Path("."), threading.Event()), state)
        return step

    rng = np.random.default_rng(9)
    live = make(None)
    forgotten = 0
    for checkpoint in range(1, 41):
        # Keys drift: old ones are forgotten past the horizon, some come back.
        batch = _events(rng, 40, 30, checkpoint * 1.0).with_columns(pl.col("k") + checkpoint)
        live.process(batch)
        forgotten += sum(f.height for f in live.forgotten)
        state = live.snapshot() if checkpoint % 11 == 1 else live.snapshot_changes()
        store.commit_checkpoint("p", checkpoint, {}, {"d": state}, {}, [], "r")
        stored = store.load_checkpoint("p")
        assert stored is not None
        restored = make(stored.step_states["d"])
        assert live.last is not None and restored.last is not None
        assert_frame_equal(restored.last.sort("k"), live.last.sort("k"))
        assert live.held is not None and restored.held is not None
        assert_frame_equal(restored.held, live.held)
    assert forgotten > 20, "few keys were forgotten between checkpoints"

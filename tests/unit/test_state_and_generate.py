"""The state store, its codec, and the generate source's determinism."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from tideflow.connectors.generate import Generate, GenerateConfig, generate_range
from tideflow.core.codec import decode_state, encode_state
from tideflow.core.contracts import Context, dead_letters
from tideflow.state.locate import open_state_store
from tideflow.state.store import StateStore


def test_codec_round_trips_frames_inside_json() -> None:
    frame = pl.DataFrame({"k": ["a", "b"], "sum": [1.5, None]})
    value = {"frames": [frame], "watermark": 12, "nested": {"x": [1, "y", None]}}
    back = decode_state(encode_state(value))
    assert back["watermark"] == 12 and back["nested"] == {"x": [1, "y", None]}
    assert back["frames"][0].equals(frame)
    with pytest.raises(ValueError, match="not a tideflow state blob"):
        decode_state(b"pickle?")


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    """The same tests against both backends; PostgreSQL gets a database of its own."""
    if request.param == "sqlite":
        opened = open_state_store(str(tmp_path / "s.db"), tmp_path)
    else:
        opened = open_state_store(request.getfixturevalue("postgres_database"), tmp_path)
    yield opened
    opened.close()


def test_checkpoint_is_stored_atomically_with_dead_letters(store: StateStore) -> None:
    dead = dead_letters(pl.DataFrame({"a": [1, 2]}), "bad")
    store.commit_checkpoint(
        "p", 1, {"src": {"row": 5}}, {"win": {"n": 3}}, {"out": ["t"]}, [("step", dead)], "run1"
    )
    cp = store.load_checkpoint("p")
    assert cp is not None
    assert (cp.id, cp.positions, cp.step_states, cp.sink_tokens) == (
        1,
        {"src": {"row": 5}},
        {"win": {"n": 3}},
        {"out": ["t"]},
    )
    assert [d.record for d in store.ledger.letters("p")] == ['{"a":1}', '{"a":2}']

    class Boom(Exception):
        pass

    # A failure inside the transaction leaves the previous checkpoint and ledger untouched.
    bad_frame = pl.DataFrame({"record": ["x"]})  # no reason column -> fails mid-transaction
    with pytest.raises(pl.exceptions.ColumnNotFoundError):
        store.commit_checkpoint("p", 2, {"src": {"row": 9}}, {}, {}, [("s", bad_frame)], "r")
    cp = store.load_checkpoint("p")
    assert cp is not None and cp.id == 1 and cp.positions == {"src": {"row": 5}}
    assert len(store.ledger.letters("p")) == 2
    store.reset("p")
    assert store.load_checkpoint("p") is None
    del Boom


def test_dead_letter_queries_and_replay_marks(store: StateStore) -> None:
    frame = pl.DataFrame({"record": ["1", "2", "3"], "reason": ["late", "cast x", "cast y"]})
    store.commit_checkpoint("p", 1, {}, {}, {}, [("cast", frame)], "r")
    assert [d.record for d in store.ledger.letters("p", reason="cast")] == ["2", "3"]
    ids = [d.id for d in store.ledger.letters("p", reason="late")]
    store.ledger.mark_replayed(ids)
    assert [d.record for d in store.ledger.letters("p", include_replayed=False)] == ["2", "3"]
    assert store.ledger.summary("p") == [("cast", "cast x", 1), ("cast", "cast y", 1)]


@pytest.mark.parametrize("shape", ["sensors", "rooms", "orders", "sequence"])
def test_generate_is_deterministic_whatever_the_batch_boundaries(shape: str) -> None:
    cfg = GenerateConfig(shape=shape, seed=7, keys=5)
    whole = generate_range(cfg, 0, 10_000)
    pieces = pl.concat(
        [generate_range(cfg, a, min(a + 977, 10_000)) for a in range(0, 10_000, 977)]
    )
    assert whole.equals(pieces)
    if shape != "sequence":  # a sequence has no random part
        other = generate_range(GenerateConfig(shape=shape, seed=8, keys=5), 0, 10_000)
        assert not whole.equals(other)


def test_generate_sensors_have_gaps_and_spikes() -> None:
    frame = generate_range(GenerateConfig(shape="sensors", keys=4), 0, 50_000)
    nulls = frame["temperature_c"].null_count() / frame.height
    assert 0.01 < nulls < 0.03
    median = frame["temperature_c"].median()
    assert median is not None
    spikes = (frame["temperature_c"] - median).abs() > 20
    assert 0.002 < spikes.sum() / frame.height < 0.01
    assert frame["sensor_id"].n_unique() == 4


def test_generate_source_resumes_at_its_position(tmp_path: Path) -> None:
    ctx = Context("p", "g", tmp_path, tmp_path, threading.Event())
    src = Generate(GenerateConfig(shape="sequence", count=25, batch_size=10))
    src.open(ctx, {"index": 12})
    seen = []
    while (batch := src.read_batch()) is not None:
        seen += batch.data["id"].to_list()
    assert seen == list(range(12, 25))


def test_runs_are_recorded_in_both_backends(store: StateStore) -> None:
    store.start_run("r1", "p")
    store.end_run("r1", "succeeded", {"src": {"in": 3}})
    store.start_run("r2", "p")
    runs = store.history.runs("p")
    assert [r["id"] for r in runs] == ["r2", "r1"]
    assert runs[1]["status"] == "succeeded" and runs[1]["counts"] == {"src": {"in": 3}}
    assert runs[0]["status"] == "running" and runs[0]["ended_at"] is None

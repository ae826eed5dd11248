"""The state store's side of exactly-once into brokers: a lease that fences the checkpoints of
an older run of the same pipeline (a paused-then-resumed process), and an outbox whose
entries are stored in the checkpoint's own transaction, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import polars as pl
import pytest

from tideflow.connectors.memory import MemorySinkConfig, clear, collected
from tideflow.core.checkpoints import FencedError
from tideflow.core.contracts import Context, Sink, Staged
from tideflow.registry import Registry
from tideflow.run.plan import engine_for
from tideflow.spec.loader import load_pipeline_text
from tideflow.state.locate import open_state_store
from tideflow.state.store import StateStore


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> StateStore:
    """A state store of each backend."""
    if request.param == "sqlite":
        return StateStore(tmp_path / "state.db")
    return open_state_store(request.getfixturevalue("postgres_database"), tmp_path)


def test_a_newer_lease_fences_the_older_runs_checkpoints(store: StateStore) -> None:
    old = store.claim_lease("p", "run-a")
    store.commit_checkpoint("p", 1, {"src": 10}, {}, {}, [], "run-a", lease=old)
    new = store.claim_lease("p", "run-b")
    assert new.epoch == old.epoch + 1
    with pytest.raises(FencedError, match=r"another run \(run-b\) took the checkpoints"):
        store.commit_checkpoint(
            "p", 2, {"src": 20}, {}, {}, [], "run-a", lease=old, outbox={"k": [b"x"]}
        )
    # Nothing of the refused checkpoint is stored: neither the row nor its outbox.
    checkpoint = store.load_checkpoint("p")
    assert checkpoint is not None and (checkpoint.id, checkpoint.positions) == (1, {"src": 10})
    assert store.outbox_checkpoints("p", "k") == []
    store.commit_checkpoint("p", 2, {"src": 30}, {}, {}, [], "run-b", lease=new)
    assert store.load_checkpoint("p").positions == {"src": 30}  # type: ignore[union-attr]
    # Leases are per pipeline key: a group worker's own key is fenced on its own.
    other = store.claim_lease("p#worker-w1", "run-c")
    store.commit_checkpoint("p#worker-w1", 1, {}, {}, {}, [], "run-c", lease=other)
    # `tideflow state reset` while a run goes on: its next checkpoint is refused too.
    store.reset("p")
    with pytest.raises(FencedError, match="was reset while this run"):
        store.commit_checkpoint("p", 3, {}, {}, {}, [], "run-b", lease=new)
    store.close()


def test_outbox_entries_are_part_of_the_checkpoint(store: StateStore) -> None:
    lease = store.claim_lease("p", "run")
    entries = [b"manifest", b"\x00" * 100_000, b"chunk-2"]
    store.commit_checkpoint(
        "p", 1, {}, {}, {"k": {"t": 1}}, [], "run", lease=lease, outbox={"k": iter(entries)}
    )
    store.commit_checkpoint(
        "p", 2, {}, {}, {"k": {"t": 2}}, [], "run", lease=lease, outbox={"k": [b"second"]}
    )
    assert store.outbox_checkpoints("p", "k") == [1, 2]
    assert store.outbox_checkpoints("p", "other-sink") == []
    assert list(store.outbox_entries("p", "k", 1)) == entries
    store.outbox_delivered("p", "k", 1)
    assert store.outbox_checkpoints("p", "k") == [2]
    worker = store.claim_lease("p#worker-w1", "run-w")
    store.commit_checkpoint(
        "p#worker-w1", 1, {}, {}, {}, [], "run-w", lease=worker, outbox={"k": [b"w"]}
    )
    assert store.outbox_summary("p") == [("p", "k", 2), ("p#worker-w1", "k", 1)]
    # Entries stored ahead of a checkpoint that then never committed are dropped at start.
    store.store_outbox("p", 3, {"k": [b"undecided"]}, lease)
    assert store.drop_outbox_after("p", 2) == 1
    assert store.outbox_checkpoints("p", "k") == [2]
    store.reset("p")
    assert store.outbox_checkpoints("p", "k") == []
    store.close()


def test_the_store_identity_is_fixed_for_the_life_of_the_store(tmp_path: Path) -> None:
    first = StateStore(tmp_path / "state.db")
    identity = first.identity()
    first.close()
    again = StateStore(tmp_path / "state.db")
    assert again.identity() == identity
    assert StateStore(tmp_path / "other.db").identity() != identity
    again.close()


# -- the engine -----------------------------------------------------------------------------


class StagingSink(Sink):
    """Stages each checkpoint's ids in the outbox and 'delivers' them to a collector at
    commit; the first commit of the first run starts a whole replacement run on the same
    state store meanwhile, as a paused process's replacement would."""

    config_model = MemorySinkConfig
    config: MemorySinkConfig

    replaced: ClassVar[bool] = False
    seen_pending: ClassVar[list[tuple[int, list[bytes]]]] = []

    def open(self, ctx: Context, pending: Any) -> None:
        self.ctx = ctx
        self.rows: list[pl.DataFrame] = []
        self.staged: Staged | None = None
        assert ctx.outbox is not None
        for checkpoint in ctx.outbox.checkpoints():
            StagingSink.seen_pending.append((checkpoint, list(ctx.outbox.entries(checkpoint))))

    def write_batch(self, batch: pl.DataFrame) -> None:
        self.rows.append(batch)

    def flush(self) -> Any:
        frame = pl.concat(self.rows) if self.rows else pl.DataFrame({"id": []})
        self.rows = []
        ids = ",".join(str(i) for i in frame["id"].to_list()).encode()
        self.staged = Staged(token=None, entries=[ids])
        return self.staged

    def commit(self, token: Any) -> None:
        assert self.staged is not None and self.staged.checkpoint is not None
        if self.config.collector == "fail-commit":
            raise RuntimeError("the target went away")
        from tideflow.connectors import memory

        ids = [int(i) for i in next(iter(self.staged.entries)).decode().split(",") if i]
        with memory._lock:
            memory._collected.setdefault(self.config.collector, []).append(
                pl.DataFrame({"id": ids}, schema={"id": pl.Int64})
            )
        assert self.ctx.outbox is not None
        self.ctx.outbox.delivered(self.staged.checkpoint)
        if not StagingSink.replaced and self.config.collector == "zombie":
            StagingSink.replaced = True
            run(PIPELINE.replace("zombie", "replacement"), self.ctx.base_dir)


PIPELINE = """
name: fenced
source: {type: generate, shape: sequence, count: 3000, batch_size: 500}
sink: {type: staging, collector: zombie}
checkpoint: {every_records: 1000}
"""


def registry() -> Registry:
    reg = Registry()
    reg.load_plugins()
    reg.register("sink", "staging")(StagingSink)
    return reg


def run(text: str, folder: Path) -> Any:
    reg = registry()
    spec = load_pipeline_text(text, "p.yaml", registry=reg)
    return engine_for(spec, folder, registry=reg).run()


def test_a_run_replaced_while_paused_fails_at_its_next_checkpoint(tmp_path: Path) -> None:
    clear("zombie")
    clear("replacement")
    StagingSink.replaced = False
    with pytest.raises(FencedError, match="took the checkpoints of 'fenced' over"):
        run(PIPELINE, tmp_path)
    # The replacement started from the zombie's first checkpoint and delivered the rest;
    # the zombie stored nothing after the replacement began.
    assert collected("zombie")["id"].to_list() == list(range(1000))
    assert collected("replacement")["id"].to_list() == list(range(1000, 3000))
    store = StateStore(tmp_path / ".tideflow" / "state.db")
    checkpoint = store.load_checkpoint("fenced")
    assert checkpoint is not None and checkpoint.positions == {"generate": {"index": 3000}}
    store.close()


def test_an_outbox_not_marked_delivered_is_handed_to_the_next_run(tmp_path: Path) -> None:
    StagingSink.seen_pending = []
    with pytest.raises(Exception, match="the target went away"):
        run(PIPELINE.replace("zombie", "fail-commit"), tmp_path)
    # The first checkpoint is stored with its staged ids; the sink gets them back at open.
    clear("after")
    run(PIPELINE.replace("zombie", "after"), tmp_path)
    assert StagingSink.seen_pending == [(1, [",".join(map(str, range(1000))).encode()])]

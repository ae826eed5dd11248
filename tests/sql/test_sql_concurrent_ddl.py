"""Schema changes from several processes at once (issue 15 item 2).

Four pipelines, each in its own process, are released by one barrier at the same moment
against a database without the target table. Each creates the table or evolves it (an
added column two of them share, a widened type), so their DDL races; none may fail, and
the table must end with every column and every row, as computed here from what each
process wrote.
"""

from __future__ import annotations

import functools
import multiprocessing
import queue
import sqlite3
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from tests.faults.oracle import trials
from tests.sql.conftest import Database

WORKERS = 4
TRIALS = trials(20, 60)
WAIT = 120.0
"""Seconds any barrier may wait before the test gives up (a hung worker)."""


def worker_rows(worker: int, trial: int) -> pl.DataFrame:
    """What worker ``worker`` writes in ``trial``: its own ids, a column shared with one
    other worker (``extra_0`` or ``extra_1``), and ``n`` as 64-bit values for worker 3 (a
    column the others create as 32-bit, so whoever comes second widens it)."""
    base = trial * 1000 + worker * 10
    wide = worker == 3
    return pl.DataFrame(
        {
            "id": [base + k for k in range(3)],
            "room": [f"room-{worker}-{k}" for k in range(3)],
            "n": [2**40 + k if wide else k for k in range(3)],
            f"extra_{worker % 2}": [worker * 100 + k for k in range(3)],
        },
        schema={
            "id": pl.Int64,
            "room": pl.String,
            "n": pl.Int64 if wide else pl.Int32,
            f"extra_{worker % 2}": pl.Int64,
        },
    )


def pipeline(worker: int, trial: int, kind: str) -> str:
    """A file (Parquet) -> sql pipeline of its own (its own name and checkpoints); workers 1 and 3
    are transactional where the database allows it (their checkpoint table races too)."""
    path = f"trial{trial}/w{worker}.parquet"
    transactional = worker % 2 == 1 and kind != "mysql"
    return (
        f"name: ddl-{worker}\n"
        f"source: {{type: file, path: '{path}'}}\n"
        "sinks:\n"
        "  - type: sql\n"
        "    url: ${DB_URL}\n"
        f"    table: t{trial}\n"
        "    mode: upsert\n"
        "    key: [id]\n"
        "    indexes: [{columns: [room]}]\n"
        f"    transactional: {'true' if transactional else 'false'}\n"
    )


def run_worker(
    worker: int,
    kind: str,
    urls: list[str],
    folder: str,
    start: Any,
    done: Any,
    results: Any,
) -> None:
    """One process: for each trial, wait for the start, run its pipeline, report."""
    from tests.sql.helpers import run_yaml

    for trial, url in enumerate(urls):
        base = Path(folder) / f"w{worker}" / f"t{trial}"
        base.mkdir(parents=True)
        (base / f"trial{trial}").mkdir()
        worker_rows(worker, trial).write_parquet(base / f"trial{trial}" / f"w{worker}.parquet")
        text = pipeline(worker, trial, kind)
        start.wait(WAIT)
        try:
            result = run_yaml(base, text, {"DB_URL": url})
            outcome = f"ok {result.counts['sql']['out']}"
        except BaseException as exc:  # noqa: BLE001 - reported to the test, which fails
            outcome = f"failed: {type(exc).__name__}: {exc}"
        results.put((trial, worker, outcome))
        done.wait(WAIT)


def expected(trial: int) -> pl.DataFrame:
    """The table every trial must end with: every worker's rows, each column it lacks null."""
    frames = [worker_rows(w, trial).cast({"n": pl.Int64}) for w in range(WORKERS)]
    return pl.concat(frames, how="diagonal").select("id", "room", "n", "extra_0", "extra_1")


def sqlite_urls(folder: Path) -> list[str]:
    """A new SQLite file per trial (the table is missing in each)."""
    return [f"sqlite:///{folder}/t{trial}.db" for trial in range(TRIALS)]


@pytest.mark.parametrize("kind", ["postgresql", "mysql", "sqlite"])
def test_concurrent_first_runs_create_and_evolve_the_table(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    db: Database = request.getfixturevalue(
        {"postgresql": "postgres_db", "mysql": "mysql_db", "sqlite": "sqlite_db"}[kind]
    )
    urls = sqlite_urls(tmp_path) if kind == "sqlite" else [db.url] * TRIALS
    context = multiprocessing.get_context("spawn")
    start, done = context.Barrier(WORKERS + 1), context.Barrier(WORKERS + 1)
    results = context.Queue()
    procs = [
        context.Process(
            target=run_worker,
            args=(w, kind, urls, str(tmp_path / "work"), start, done, results),
            daemon=True,
        )
        for w in range(WORKERS)
    ]
    for proc in procs:
        proc.start()
    failures: list[str] = []
    try:
        for trial in range(TRIALS):
            start.wait(WAIT)  # every worker is ready: release them together
            outcomes = []
            for _ in range(WORKERS):
                try:
                    outcomes.append(results.get(timeout=WAIT))
                except queue.Empty:
                    pytest.fail(f"trial {trial}: a worker reported nothing in {WAIT:.0f} s")
            done.wait(WAIT)
            failures += [f"trial {t} worker {w}: {o}" for t, w, o in outcomes if o != "ok 3"]
            if kind == "sqlite":
                path = urls[trial].removeprefix("sqlite:///")
                check = Database("sqlite", urls[trial], functools.partial(sqlite3.connect, path))
            else:
                check = db
            if not failures:
                assert_table(check, trial)
    finally:
        for proc in procs:
            proc.join(timeout=WAIT if not failures else 5)
            if proc.is_alive():
                proc.kill()
    assert not failures, f"{len(failures)} of {TRIALS * WORKERS} runs failed:\n" + "\n".join(
        failures[:10]
    )
    assert all(proc.exitcode == 0 for proc in procs), [proc.exitcode for proc in procs]


def assert_table(db: Database, trial: int) -> None:
    """The trial's table holds exactly the expected rows and columns."""
    want = expected(trial)
    got = db.query(f"SELECT * FROM {db.quote(f't{trial}')} ORDER BY {db.quote('id')}")
    assert sorted(got.columns) == sorted(want.columns), (trial, got.columns)
    got = got.select(want.columns).cast({c: t for c, t in want.schema.items()})
    assert got.to_dicts() == want.to_dicts(), trial

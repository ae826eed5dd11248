"""Exactly-once into PostgreSQL: crashes at every checkpoint step, and 20 random `kill -9`s.

The transactional ``sql`` sink commits rows and the pipeline's checkpoint in one PostgreSQL
transaction; whatever moment the process dies, the restarted run must leave the table holding
exactly the input — no row lost, none doubled.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import psycopg
import pytest
from tests.faults.harness import kill_randomly
from tests.faults.oracle import compare, records, trials
from tests.system.helpers import cli

from tideflow.core.faults import CRASH_EXIT_CODE

PIPELINE = """
name: exactly-once
source: {type: file, path: "in/*.csv", batch_size: BATCH}
steps:
  - {type: python, name: pace, function: "pace.py:pace", mode: batch}
sink: {type: sql, url: "${DB_URL}", table: events, transactional: true}
checkpoint: {every_records: EVERY}
"""

PACE = """
import os, time

def pace(batch):
    time.sleep(float(os.environ.get("PACE", "0")))
    return batch
"""

POINTS = (
    "checkpoint.after_flush",
    "sql_sink.before_commit",
    "checkpoint.after_keeper_commit",
    "checkpoint.in_state_transaction",
    "checkpoint.after_state",
)


def prepare(tmp_path: Path, n: int, batch: int, every: int) -> tuple[Path, pl.DataFrame]:
    """CSV input from the seeded generator, and the pipeline around it."""
    data = records(11, n)
    (tmp_path / "in").mkdir()
    for i, part in enumerate(data.iter_slices(max(1, n // 4))):
        part.write_csv(tmp_path / "in" / f"part-{i}.csv")
    (tmp_path / "pace.py").write_text(PACE, encoding="utf-8")
    pipeline = tmp_path / "p.yaml"
    text = PIPELINE.replace("BATCH", str(batch)).replace("EVERY", str(every))
    pipeline.write_text(text, encoding="utf-8")
    return pipeline, data


def table(url: str) -> pl.DataFrame:
    """The target table, read with psycopg (not tideflow)."""
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT id, key, value FROM events").fetchall()
    return pl.DataFrame(rows, schema=["id", "key", "value"], orient="row")


@pytest.mark.parametrize("point", POINTS)
def test_crash_at_each_step_of_a_transactional_checkpoint(
    tmp_path: Path, postgres_database: str, point: str
) -> None:
    pipeline, expected = prepare(tmp_path, 6000, batch=250, every=700)
    env = {"DB_URL": postgres_database}
    crashed = 0
    for nth in range(1, trials(2, 5) + 1):
        run = cli(
            "run", str(pipeline), cwd=tmp_path, env={**env, "TIDEFLOW_CRASH_AT": f"{point}:{nth}"}
        )
        assert run.returncode in (CRASH_EXIT_CODE, 0), run.stderr
        crashed += run.returncode == CRASH_EXIT_CODE
        if run.returncode == 0:
            break
    assert crashed, f"{point} was never reached: the test proved nothing"
    final = cli("run", str(pipeline), cwd=tmp_path, env=env)
    assert final.returncode == 0, final.stderr
    diff = compare(expected, table(postgres_database))
    assert diff.exact, f"crash at {point}: {diff}"


@pytest.mark.slow
def test_kill_9_at_20_random_points_of_a_200k_record_load(
    tmp_path: Path, postgres_database: str
) -> None:
    pipeline, expected = prepare(tmp_path, 200_000, batch=1000, every=2000)
    # Paced at 0.5 s a batch, the 20 runs (at most 4.5 s each) cannot read more than 180,000
    # records however fast the machine starts them: every kill lands mid-load.
    env = {"DB_URL": postgres_database, "PACE": "0.5"}
    landed = kill_randomly(pipeline, tmp_path, seed=2026, kills=20, env=env, window=(1.5, 4.5))
    assert landed == 20, f"only {landed} of 20 kills landed mid-run"
    partial = table(postgres_database)
    assert partial.height < expected.height, "the load finished before the kills: proved nothing"
    final = cli("run", str(pipeline), cwd=tmp_path, env={**env, "PACE": "0"})
    assert final.returncode == 0, final.stderr
    diff = compare(expected, table(postgres_database))
    assert diff.exact, str(diff)

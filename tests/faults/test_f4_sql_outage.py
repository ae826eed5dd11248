"""F4 for the sql sink: the target PostgreSQL server stops mid-run and comes back.

The run must wait it out (backoff with jitter), say so in its log, resume when the server
returns, and leave exactly the input in the table — in both delivery modes: per-batch commits
(upsert) and transactional (append, where the open transaction's batches are replayed).
"""

from __future__ import annotations

import time
from pathlib import Path

import polars as pl
import psycopg
import pytest
from tests.faults.oracle import FULL, compare, records
from tests.faults.private_postgres import PrivatePostgres
from tests.system.helpers import start_cli

OUTAGE_SECONDS = 30 if FULL else 8

PIPELINE = """
name: outage
source: {type: file, path: "in/*.csv", batch_size: 500}
steps:
  - {type: python, name: pace, function: "pace.py:pace", mode: batch}
sink: {type: sql, url: "URL", table: events, SINK}
checkpoint: {every_records: 2000}
"""

PACE = """
import time

def pace(batch):
    time.sleep(0.1)
    return batch
"""


def rows_in_table(url: str) -> int:
    """Rows committed so far, or -1 while the table does not exist or the server is down."""
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            row = conn.execute("SELECT count(*) FROM events").fetchone()
    except psycopg.Error:
        return -1
    return int(row[0]) if row else -1


@pytest.mark.slow
@pytest.mark.parametrize(
    "sink", ["mode: upsert, key: [id]", "transactional: true"], ids=["upsert", "transactional"]
)
def test_the_sink_waits_out_an_outage_and_loses_nothing(
    tmp_path: Path, private_postgres: PrivatePostgres, sink: str
) -> None:
    data = records(5, 20_000)
    (tmp_path / "in").mkdir()
    data.write_csv(tmp_path / "in" / "part-0.csv")
    (tmp_path / "pace.py").write_text(PACE, encoding="utf-8")
    text = PIPELINE.replace("URL", private_postgres.url).replace("SINK", sink)
    (tmp_path / "p.yaml").write_text(text, encoding="utf-8")

    proc = start_cli("run", "p.yaml", cwd=tmp_path)
    deadline = time.monotonic() + 60
    while rows_in_table(private_postgres.url) < 2000 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended before the outage: the test proved nothing"
    private_postgres.stop()
    time.sleep(OUTAGE_SECONDS)
    assert proc.poll() is None, "the run gave up during the outage: " + proc.communicate()[1]
    private_postgres.start()
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert "retrying with backoff" in stderr and "recovered after" in stderr, stderr

    with psycopg.connect(private_postgres.url) as conn:
        rows = conn.execute("SELECT id, key, value FROM events").fetchall()
    diff = compare(data, pl.DataFrame(rows, schema=["id", "key", "value"], orient="row"))
    assert diff.exact, str(diff)


@pytest.mark.slow
def test_the_source_resumes_reading_after_an_outage(
    tmp_path: Path, private_postgres: PrivatePostgres
) -> None:
    data = records(6, 20_000)
    with psycopg.connect(private_postgres.url) as conn:
        conn.execute("CREATE TABLE events (id BIGINT PRIMARY KEY, key TEXT, value BIGINT)")
        with conn.cursor().copy("COPY events FROM STDIN (FORMAT csv)") as copy:
            copy.write(data.write_csv(include_header=False).encode())
    text = (
        "name: outage-read\n"
        f"source: {{type: sql, url: '{private_postgres.url}', table: events, cursor: id, "
        "batch_size: 500}\n"
        "steps:\n"
        '  - {type: python, name: pace, function: "pace.py:pace", mode: batch}\n'
        "sink: {type: file, path: out, format: parquet}\n"
        "checkpoint: {every_records: 2000}\n"
    )
    (tmp_path / "pace.py").write_text(PACE, encoding="utf-8")
    (tmp_path / "p.yaml").write_text(text, encoding="utf-8")
    proc = start_cli("run", "p.yaml", cwd=tmp_path)
    time.sleep(3)
    assert proc.poll() is None, "the run ended before the outage: the test proved nothing"
    private_postgres.stop()
    time.sleep(OUTAGE_SECONDS)
    assert proc.poll() is None, "the run gave up during the outage: " + proc.communicate()[1]
    private_postgres.start()
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert "retrying with backoff" in stderr and "recovered after" in stderr, stderr
    out = pl.read_parquet(tmp_path / "out" / "**" / "*.parquet")
    diff = compare(data, out)
    assert diff.exact, str(diff)

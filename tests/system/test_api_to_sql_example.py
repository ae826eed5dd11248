"""The "api-to-sql" example: a paginated API into SQLite, incrementally, PII hashed."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from tests.system.helpers import EXAMPLES, cli

from tideflow.state.store import StateStore
from tideflow.testing.fake_api import FakeApi


def test_api_to_sql_example_loads_every_record_then_only_new_ones(tmp_path: Path) -> None:
    example = tmp_path / "api-to-sql"
    shutil.copytree(EXAMPLES / "api-to-sql", example, ignore=shutil.ignore_patterns(".*", "*.db"))
    with FakeApi(records=1000, fail_rate=0.1, seed=4) as api:
        env = {"API_URL": api.url(), "PII_SALT": "s3cret"}
        first = cli("run", "pipeline.yaml", cwd=example, env=env)
        assert first.returncode == 0, first.stderr
        api.add_records(50)
        second = cli("run", "pipeline.yaml", cwd=example, env=env)
        assert second.returncode == 0, second.stderr
    with sqlite3.connect(example / "api.db") as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM users ORDER BY id")]
        emails = [r[0] for r in conn.execute("SELECT email FROM users")]
    assert ids == list(range(1, 1051))
    assert not any("@" in e for e in emails), "an e-mail address reached the database"
    store = StateStore(example / ".tideflow" / "state.db")
    try:
        reads = [r["counts"]["http"]["in"] for r in reversed(store.history.runs("api-to-sql"))]
    finally:
        store.close()
    assert reads == [1000, 50]

"""Hostile identifiers and values: each is stored exactly or refused clearly, nothing is
executed, and database passwords never reach the output."""

from __future__ import annotations

import secrets
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from tests.sql.conftest import Database
from tests.sql.helpers import NASTY_TEXT, run_yaml, sql_sink_pipeline, write_parquet_input
from tests.system.helpers import cli

from tideflow.errors import TideflowError

HOSTILE_TABLES = [
    't"; DROP TABLE canary;--',
    "t`; DROP TABLE canary;--",
    "Robert'); DROP TABLE canary;--",
    "select",
    "ünïcödé 表",
    "with space",
]
HOSTILE_COLUMNS = ['c"; DROP TABLE canary;--', "from", "x`y", "ü 列", "'quoted'"]


@pytest.fixture
def canary(db: Database) -> Database:
    """A table that must survive every test untouched."""
    db.run(
        "CREATE TABLE canary (id INTEGER PRIMARY KEY, v VARCHAR(20))",
        "INSERT INTO canary VALUES (1, 'alive')",
        "INSERT INTO canary VALUES (2, 'still alive')",
    )
    return db


def assert_canary_intact(db: Database) -> None:
    assert db.table("canary")["v"].to_list() == ["alive", "still alive"]


@pytest.mark.parametrize("table", HOSTILE_TABLES)
def test_hostile_names_and_values_are_stored_exactly(
    canary: Database, tmp_path: Path, table: str
) -> None:
    frame = pl.DataFrame(
        {"id": list(range(len(NASTY_TEXT)))}
        | {col: [f"{v}{i}" for i, v in enumerate(NASTY_TEXT)] for col in HOSTILE_COLUMNS}
    )
    write_parquet_input(tmp_path, frame, parts=2)
    sink = {"table": table, "mode": "upsert", "key": ["id"]}
    run_yaml(tmp_path, sql_sink_pipeline("hostile", sink), {"DB_URL": canary.url})
    got = canary.table(table).select(frame.columns)
    assert_frame_equal(got.cast(dict(frame.schema)), frame)
    assert_canary_intact(canary)


@pytest.mark.parametrize(
    ("name", "limits"),
    [
        ("n" * 100, {"postgresql", "mysql"}),
        ("n" * 300, {"postgresql", "mysql", "duckdb"}),
        ("nul\x00byte", {"postgresql", "mysql", "duckdb", "sqlite"}),
    ],
)
def test_names_a_database_cannot_hold_are_refused_clearly(
    canary: Database, tmp_path: Path, name: str, limits: set[str]
) -> None:
    write_parquet_input(tmp_path, pl.DataFrame({"id": [1, 2]}), parts=1)
    pipeline = sql_sink_pipeline("long", {"table": name})
    if canary.kind in limits:
        with pytest.raises(TideflowError, match="identifier"):
            run_yaml(tmp_path, pipeline, {"DB_URL": canary.url})
    else:
        run_yaml(tmp_path, pipeline, {"DB_URL": canary.url})
        assert canary.table(name)["id"].to_list() == [1, 2]
    assert_canary_intact(canary)


def test_passwords_never_appear_in_errors_or_logs(tmp_path: Path) -> None:
    password = "canary-" + secrets.token_hex(8)
    write_parquet_input(tmp_path, pl.DataFrame({"id": [1]}), parts=1)
    (tmp_path / "p.yaml").write_text(sql_sink_pipeline("pw", {"table": "t"}), encoding="utf-8")
    urls = [
        f"postgresql://postgres:{password}@127.0.0.1:5432/no_such_database_here",
        f"mysql://nobody:{password}@127.0.0.1:3306/test",
    ]
    for url in urls:
        out = cli("-vv", "run", "p.yaml", cwd=tmp_path, env={"DB_URL": url})
        assert out.returncode != 0, "the connection should have failed"
        assert "cannot connect" in out.stderr
        assert password not in out.stdout + out.stderr
        assert "Traceback" not in out.stderr

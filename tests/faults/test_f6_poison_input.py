"""F6: poison input among good records; the sink gets exactly the valid rows and the ledger
exactly the bad ones, each with a reason and its origin.

Poison: 1% malformed JSON lines, 0.5% CSV rows with a wrong column count, CSV rows with invalid
UTF-8, one valid record with a 10 MB field and — into a PostgreSQL sink — 0.1% rows the
database refuses (a CHECK constraint, NOT NULL, a unique constraint), which the sink isolates by
bisection and dead-letters with the database's message. 100,000 records in CI, 1,000,000 under
`make faults`.
"""

from __future__ import annotations

import json
import random
import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import psycopg
from tests.faults.oracle import compare, read_output, trials
from tests.system.helpers import cli

PIPELINE = """
name: poison
source:
  type: file
  path: "in/*"
  batch_size: 5000
  schema_overrides: {id: int64, text: string, code: string}
sink: {type: file, path: out, format: parquet}
checkpoint: {every_records: 20000}
"""

SQL_PIPELINE = """
name: poison-sql
source:
  type: file
  path: "in/*"
  batch_size: 5000
  schema_overrides: {id: int64, text: string, code: string}
  include_path_column: source_file
sink: {type: sql, url: "URL", table: poison}
checkpoint: {every_records: 20000}
"""

TABLE = """
CREATE TABLE poison (
    id BIGINT PRIMARY KEY,
    text TEXT NOT NULL CONSTRAINT text_not_forbidden CHECK (text NOT LIKE 'forbidden%'),
    code TEXT CONSTRAINT code_unique UNIQUE,
    source_file TEXT
)
"""

REFUSALS = {
    "check": "violates check constraint",
    "not_null": "null value in column",
    "unique": "duplicate key value violates unique constraint",
}
"""What PostgreSQL says about each kind of refused row."""


@dataclass
class Poisoned:
    """The input as the oracle sees it, built beside the files."""

    valid: pl.DataFrame
    """Records that belong in the sink (``id``, ``text``, ``code``)."""
    bad_lines: set[tuple[str, int]]
    """(file, line) of every record no decoder can read."""
    refused: dict[int, tuple[str, str]] = field(default_factory=dict)
    """id -> (file, kind) of every readable record the database must refuse."""


def write_poisoned(folder: Path, n: int, seed: int, refusals: float = 0.0) -> Poisoned:
    """Half the records as NDJSON, half as CSV, with poison; ``refusals`` is the share of
    readable records that break a constraint of the ``poison`` table (``TABLE``)."""
    rng = random.Random(seed)
    folder.mkdir()
    good: dict[str, list[object]] = {"id": [], "text": [], "code": []}
    out = Poisoned(pl.DataFrame(), set())
    big_id = n // 3
    # Each file cycles through the kinds (in CSV, an empty unquoted field is a null).
    kinds = ["check", "not_null", "unique"]
    last_good = -1  # a unique code already loaded: a copy of it must be refused

    def refuse(i: int, file: str, kinds: list[str]) -> str:
        kind = kinds[len([k for k in out.refused.values() if k[0] == file]) % len(kinds)]
        if kind == "unique" and last_good < 0:
            kind = "check"
        out.refused[i] = (file, kind)
        return kind

    ndjson = bytearray()
    for i in range(n // 2):
        line = i + 1
        if rng.random() < 0.01:
            ndjson += b'{"id": %d, "text": "unterminated\n' % i
            out.bad_lines.add(("a.ndjson", line))
            continue
        text, code = ("x" * (10 << 20) if i == big_id else f"t{i}"), f"c{i}"
        record: dict[str, object] = {"id": i, "text": text, "code": code}
        if i != big_id and rng.random() < refusals:
            kind = refuse(i, "a.ndjson", kinds)
            if kind == "check":
                record["text"] = f"forbidden-{i}"
            elif kind == "not_null":
                record["text"] = None
            else:
                record["code"] = f"c{last_good}"
        else:
            last_good = i
            for column, value in (("id", i), ("text", text), ("code", code)):
                good[column].append(value)
        ndjson += json.dumps(record).encode() + b"\n"
    (folder / "a.ndjson").write_bytes(bytes(ndjson))
    csv = bytearray(b"id,text,code\n")
    for i in range(n // 2, n):
        line = i - n // 2 + 2  # the header is line 1
        roll = rng.random()
        if roll < 0.005:
            csv += b"%d,too,many,fields\n" % i
            out.bad_lines.add(("b.csv", line))
        elif roll < 0.007:
            csv += b"%d,bad\xff\xfebytes,c%d\n" % (i, i)
            out.bad_lines.add(("b.csv", line))
        elif roll < 0.007 + refusals:
            kind = refuse(i, "b.csv", kinds)
            if kind == "check":
                csv += b"%d,forbidden-%d,c%d\n" % (i, i, i)
            elif kind == "not_null":
                csv += b"%d,,c%d\n" % (i, i)
            else:
                csv += b"%d,c%d,c%d\n" % (i, i, last_good)
        else:
            csv += b"%d,c%d,c%d\n" % (i, i, i)
            last_good = i
            for column, value in (("id", i), ("text", f"c{i}"), ("code", f"c{i}")):
                good[column].append(value)
    (folder / "b.csv").write_bytes(bytes(csv))
    out.valid = pl.DataFrame(good, schema={"id": pl.Int64, "text": pl.String, "code": pl.String})
    return out


def located_bad_lines(reasons: list[str]) -> set[tuple[str, int]]:
    """The (file, line) each decoder dead letter names; fails on one without its origin."""
    located = set()
    for reason in reasons:
        match = re.search(r"/(a\.ndjson|b\.csv): (?:line|row) (\d+)", reason)
        assert match, f"a dead letter without its origin: {reason}"
        located.add((match.group(1), int(match.group(2))))
    assert len(reasons) == len(located), "a bad row was dead-lettered twice"
    return located


def test_f6_poison_goes_to_the_ledger_exactly_and_the_rest_loads(tmp_path: Path) -> None:
    n = trials(100_000, 1_000_000)
    poisoned = write_poisoned(tmp_path / "in", n, seed=6)
    (tmp_path / "p.yaml").write_text(PIPELINE, encoding="utf-8")
    run = cli("run", str(tmp_path / "p.yaml"), "--json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr

    diff = compare(poisoned.valid, read_output(tmp_path / "out"))
    assert diff.exact, str(diff)

    with sqlite3.connect(tmp_path / ".tideflow" / "state.db") as db:
        reasons = [r for (r,) in db.execute("SELECT reason FROM dead_letters")]
    located = located_bad_lines(reasons)
    bad = poisoned.bad_lines
    assert located == bad, f"missing {sorted(bad - located)[:5]}, extra {sorted(located - bad)[:5]}"


def test_f6_rows_the_database_refuses_are_dead_lettered_exactly(
    tmp_path: Path, postgres_database: str
) -> None:
    n = trials(100_000, 1_000_000)
    poisoned = write_poisoned(tmp_path / "in", n, seed=7, refusals=0.001)
    kinds = {kind for _, kind in poisoned.refused.values()}
    assert kinds == set(REFUSALS), f"the input lacks some kinds of refusal: {kinds}"
    with psycopg.connect(postgres_database) as conn:
        conn.execute(TABLE)
    pipeline = SQL_PIPELINE.replace("URL", postgres_database)
    (tmp_path / "p.yaml").write_text(pipeline, encoding="utf-8")
    run = cli("run", str(tmp_path / "p.yaml"), "--json", cwd=tmp_path, timeout=1800)
    assert run.returncode == 0, run.stderr

    with psycopg.connect(postgres_database) as conn:
        rows = conn.execute("SELECT id, text, code FROM poison").fetchall()
    loaded = pl.DataFrame(rows, schema=["id", "text", "code"], orient="row")
    diff = compare(poisoned.valid, loaded)
    assert diff.exact, str(diff)

    with sqlite3.connect(tmp_path / ".tideflow" / "state.db") as db:
        letters = db.execute("SELECT step, reason, record FROM dead_letters").fetchall()
    decoder = [reason for step, reason, _ in letters if step == "file"]
    located = located_bad_lines(decoder)
    bad = poisoned.bad_lines
    assert located == bad, f"missing {sorted(bad - located)[:5]}, extra {sorted(located - bad)[:5]}"

    refused: dict[int, tuple[str, str]] = {}
    for step, reason, record in letters:
        if step == "file":
            continue
        assert step == "sql", f"a dead letter from an unexpected step {step!r}: {reason}"
        row = json.loads(record)
        assert row["id"] not in refused, f"record {row['id']} was dead-lettered twice"
        assert reason.startswith("postgresql rejected the row: "), reason
        kind = next((k for k, said in REFUSALS.items() if said in reason), "unknown")
        # The origin: the file the record came from (the source's path column).
        refused[row["id"]] = (Path(row["source_file"]).name, kind)
    expected = poisoned.refused
    assert refused.keys() == expected.keys(), (
        f"missing {sorted(expected.keys() - refused.keys())[:5]}, "
        f"extra {sorted(refused.keys() - expected.keys())[:5]}"
    )
    wrong = {i: (refused[i], expected[i]) for i in expected if refused[i] != expected[i]}
    assert not wrong, f"refused for another reason or from another file: {list(wrong.items())[:5]}"

    counts = json.loads(run.stdout)["counts"]
    assert counts["sql"]["dead_lettered"] == len(expected), counts["sql"]


def test_f6_a_dead_letter_sink_that_cannot_write_stops_the_run(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("id,v\n1,1\n2,oops\n3,3\n", encoding="utf-8")
    (tmp_path / "blocker").write_text("a file where the sink wants a folder", encoding="utf-8")
    (tmp_path / "p.yaml").write_text(
        """
name: ledger-down
source: {type: file, path: in.csv, schema_overrides: {v: int64}}
sink: {type: file, path: out}
on_error:
  action: dead_letter
  sink: {type: file, path: blocker/dead, format: ndjson}
""",
        encoding="utf-8",
    )
    run = cli("run", str(tmp_path / "p.yaml"), cwd=tmp_path)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "blocker" in run.stderr
    # Nothing was committed past what the ledger could hold: no output became visible.
    assert not list(tmp_path.glob("out/**/*.parquet"))

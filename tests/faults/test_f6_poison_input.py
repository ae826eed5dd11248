"""F6 (files): poison input among good records; the sink gets exactly the valid rows and the
ledger exactly the bad ones, each with a reason naming its file and line.

Poison: 1% malformed JSON lines, 0.5% CSV rows with a wrong column count, CSV rows with invalid
UTF-8, and one valid record with a 10 MB field.
"""

from __future__ import annotations

import random
import re
import sqlite3
from pathlib import Path

import polars as pl
from tests.faults.oracle import compare, read_output, trials
from tests.system.helpers import cli

PIPELINE = """
name: poison
source: {type: file, path: "in/*", batch_size: 5000, schema_overrides: {id: int64, text: string}}
sink: {type: file, path: out, format: parquet}
checkpoint: {every_records: 20000}
"""


def write_poisoned(folder: Path, n: int, seed: int) -> tuple[pl.DataFrame, set[tuple[str, int]]]:
    """Half the records as NDJSON, half as CSV, with poison; returns the valid records and
    the (file, line) of every bad one."""
    rng = random.Random(seed)
    folder.mkdir()
    good_ids: list[int] = []
    texts: list[str] = []
    bad: set[tuple[str, int]] = set()
    big_id = n // 3
    ndjson = bytearray()
    for i in range(n // 2):
        line = i + 1
        if rng.random() < 0.01:
            ndjson += b'{"id": %d, "text": "unterminated\n' % i
            bad.add(("a.ndjson", line))
            continue
        text = "x" * (10 << 20) if i == big_id else f"t{i}"
        ndjson += b'{"id": %d, "text": "%s"}\n' % (i, text.encode())
        good_ids.append(i)
        texts.append(text)
    (folder / "a.ndjson").write_bytes(bytes(ndjson))
    csv = bytearray(b"id,text\n")
    for i in range(n // 2, n):
        line = i - n // 2 + 2  # the header is line 1
        roll = rng.random()
        if roll < 0.005:
            csv += b"%d,too,many\n" % i
            bad.add(("b.csv", line))
        elif roll < 0.007:
            csv += b"%d,bad\xff\xfebytes\n" % i
            bad.add(("b.csv", line))
        else:
            csv += b"%d,c%d\n" % (i, i)
            good_ids.append(i)
            texts.append(f"c{i}")
    (folder / "b.csv").write_bytes(bytes(csv))
    return pl.DataFrame({"id": good_ids, "text": texts}), bad


def test_f6_poison_goes_to_the_ledger_exactly_and_the_rest_loads(tmp_path: Path) -> None:
    n = trials(100_000, 1_000_000)
    expected, bad = write_poisoned(tmp_path / "in", n, seed=6)
    (tmp_path / "p.yaml").write_text(PIPELINE, encoding="utf-8")
    run = cli("run", str(tmp_path / "p.yaml"), "--json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr

    diff = compare(expected, read_output(tmp_path / "out"))
    assert diff.exact, str(diff)

    with sqlite3.connect(tmp_path / ".tideflow" / "state.db") as db:
        reasons = [r for (r,) in db.execute("SELECT reason FROM dead_letters")]
    located = set()
    for reason in reasons:
        match = re.search(r"/(a\.ndjson|b\.csv): (?:line|row) (\d+)", reason)
        assert match, f"a dead letter without its origin: {reason}"
        located.add((match.group(1), int(match.group(2))))
    assert len(reasons) == len(located), "a bad row was dead-lettered twice"
    assert located == bad, f"missing {sorted(bad - located)[:5]}, extra {sorted(located - bad)[:5]}"


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

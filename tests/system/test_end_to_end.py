"""Whole pipelines, N records in, every one accounted for, output checked independently."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
from tests.system.helpers import cli, read_parquet_tree

from tideflow.testing import collected

PIPELINE = """
name: orders-e2e
source: {type: generate, shape: orders, count: 1000, batch_size: 128, seed: 7}
steps:
  - {type: filter, name: paid, expr: "amount > 0 AND country != 'US'"}
  - {type: python, name: enrich, function: "enrich.py:enrich"}
sinks:
  - {type: file, name: out, path: out, format: parquet}
  - {type: memory, name: input, input: generate, collector: e2e-input}
checkpoint: {every_records: 300}
"""

ENRICH = """
def enrich(record):
    if record["amount"] > 80:
        return None
    record["amount_cents"] = int(round(record["amount"] * 100))
    return record
"""


def expected_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pipeline's logic written again as a plain loop over the input."""
    out = []
    for r in records:
        if r["amount"] is None or r["amount"] <= 0 or r["country"] == "US" or r["amount"] > 80:
            continue
        out.append({**r, "amount_cents": round(r["amount"] * 100)})
    return out


def test_1000_generated_records_through_filter_and_map_to_parquet(tmp_path: Path) -> None:
    (tmp_path / "enrich.py").write_text(ENRICH, encoding="utf-8")
    (tmp_path / "p.yaml").write_text(PIPELINE, encoding="utf-8")
    from tideflow import Pipeline

    result = Pipeline.from_yaml(tmp_path / "p.yaml").run(tmp_path)
    assert result.status == "succeeded" and not result.unbalanced

    source = collected("e2e-input")
    assert source.height == 1000
    want = pl.DataFrame(expected_rows(source.to_dicts()), schema_overrides=source.schema)
    got = read_parquet_tree(tmp_path / "out")
    assert got.height == want.height > 0
    assert got.select(want.columns).sort("order_id").equals(want.sort("order_id"))

    counts = result.counts
    assert counts["generate"]["out"] == 1000
    assert counts["paid"]["in"] == counts["paid"]["out"] + counts["paid"]["filtered"]
    assert counts["enrich"]["out"] == want.height
    assert counts["out"]["in"] == want.height


def test_bad_records_go_to_the_ledger_and_the_run_goes_on(tmp_path: Path) -> None:
    rows = ["id,amount", "1,10", "2,oops", "3,30", "4,", "5,x5"]
    (tmp_path / "in.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (tmp_path / "p.yaml").write_text(
        """
name: ledger-e2e
source: {type: file, path: in.csv, schema_overrides: {amount: string}}
steps:
  - {type: cast, name: typed, columns: {amount: float64}}
sink: {type: file, path: out, format: parquet}
on_error: dead_letter
""",
        encoding="utf-8",
    )
    result = cli("run", str(tmp_path / "p.yaml"))
    assert result.returncode == 0, result.stderr
    got = read_parquet_tree(tmp_path / "out").sort("id")
    # Independent reading of the CSV: which values parse as numbers, which are empty.
    parsed = [(int(i), a) for i, a in (r.split(",") for r in rows[1:])]
    good = [i for i, a in parsed if a == "" or a.replace(".", "", 1).isdigit()]
    bad = [i for i, _ in parsed if i not in good]
    assert got["id"].to_list() == good
    listing = cli("deadletters", "list", str(tmp_path / "p.yaml"))
    assert listing.returncode == 0, listing.stderr
    for i in bad:
        assert f'"id":{i}' in listing.stdout.replace(" ", "")
    assert "typed" in listing.stdout

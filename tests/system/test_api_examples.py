"""The API examples, run through the CLI against the loopback API they document."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from tests.system.helpers import EXAMPLES, cli, read_parquet_tree

from tideflow.testing.fake_api import FakeApi

pytestmark = pytest.mark.timeout(300)


def test_api_to_parquet_example_reads_every_page_once_masks_pii_and_is_incremental(
    tmp_path: Path,
) -> None:
    example = tmp_path / "api-to-parquet"
    shutil.copytree(
        EXAMPLES / "api-to-parquet", example, ignore=shutil.ignore_patterns("out", ".*")
    )
    env = {"PII_SALT": "salt-for-the-test"}
    with FakeApi(records=1000, fail_rate=0.1, seed=2) as api:
        env["API_URL"] = api.url()
        first = cli("run", str(example / "pipeline.yaml"), env=env)
        assert first.returncode == 0, first.stdout + first.stderr
        assert "api-to-parquet: succeeded" in first.stdout
        assert "pii: pii rules fired: email:hash=1,000, name:mask=1,000" in first.stdout
        assert api.stats.transient_failures > 0
        written = read_parquet_tree(example / "out" / "records")
        assert sorted(written["id"].to_list()) == list(range(1, 1001))
        row = written.filter(id=42).row(0, named=True)
        expected = hashlib.sha256(b"salt-for-the-testuser42@example.com").hexdigest()
        assert row["email"] == expected
        assert row["name"] == "***r 42"
        assert row["note"] == "call [PHONE] about order 42"

        api.add_records(50)
        second = cli("run", str(example / "pipeline.yaml"), env=env)
        assert second.returncode == 0, second.stdout + second.stderr
        written = read_parquet_tree(example / "out" / "records")
        assert sorted(written["id"].to_list()) == list(range(1, 1051))  # only the new ones


def test_api_to_api_example_runs_with_one_command_and_is_incremental(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    example = tmp_path / "api-to-api"
    shutil.copytree(EXAMPLES / "api-to-api", example, ignore=shutil.ignore_patterns(".*"))

    def run_example() -> dict[str, object]:
        proc = subprocess.run(
            [sys.executable, str(example / "run_example.py")],
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        summary: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
        return summary

    first = run_example()
    assert first["pipeline"] == "succeeded"
    assert first["posted"] == 1000 - 1000 // 13  # ids the lookup API lacks are dead-lettered
    assert first["source_failures"] > 0  # type: ignore[operator]
    assert first["webhooks_acknowledged"] == 3
    assert first["relayed"] == [
        {"event": "signup", "email": "[EMAIL]"},
        {"event": "call-back", "note": "ring [PHONE] after 5"},
        {"event": "ping"},
    ]
    second = run_example()  # the same source data: the incremental cursor fetches nothing
    assert second["posted"] == 0

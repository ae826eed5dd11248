"""S1: canary secrets never appear in logs, errors, dead letters, state, output or dumps.

Random canary strings are placed where secrets live — an S3 secret from the environment, a
literal `password` passed to a user function, a password inside a URL — and the pipeline is
run through every path that prints or stores text: success, failure, DEBUG logging, validate,
dry run, preview, state and dead-letter listings. Each canary must appear nowhere.
"""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path

import pytest
from tests.system.helpers import cli

USER_FUNCTION = """
def leaky(record, password):
    if record["id"] % 3 == 0:
        # A careless function that puts the secret into its exception and into the record.
        record["token_echo"] = password
        raise RuntimeError(f"refused with password={password}")
    return record
"""

PIPELINE = """
name: canary
source: {type: file, path: in.csv}
steps:
  - type: python
    name: leaky
    function: "leaky.py:leaky"
    kwargs:
      password: ${CANARY_LITERAL}
sink: {type: file, name: out, path: out, format: ndjson}
"""

S3_PIPELINE = """
name: canary-s3
source: {type: file, path: in.csv}
sink:
  type: file
  path: "s3://tideflow-test/canary"
  storage_options:
    key: testing
    secret: ${AWS_SECRET_ACCESS_KEY}
    endpoint_url: "http://127.0.0.1:9/"
"""

BROKEN_URL_PIPELINE = """
name: canary-url
source: {type: file, path: "https://reader:${URL_PASSWORD}@127.0.0.1:9/data.csv"}
sink: {type: stdout}
"""


@pytest.fixture
def canaries() -> dict[str, str]:
    return {
        name: f"canary{secrets.token_hex(8)}"
        for name in ("CANARY_LITERAL", "AWS_SECRET_ACCESS_KEY", "URL_PASSWORD")
    }


def everything_written(root: Path) -> bytes:
    """Every byte under ``root`` except the inputs the test wrote itself."""
    return b"".join(
        p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in ("in.csv", "leaky.py", "p.yaml", "url.yaml", "s3.yaml")
    )


def test_s1_canaries_appear_nowhere(tmp_path: Path, canaries: dict[str, str]) -> None:
    (tmp_path / "in.csv").write_text("id,v\n" + "".join(f"{i},{i}\n" for i in range(30)))
    (tmp_path / "leaky.py").write_text(USER_FUNCTION)
    (tmp_path / "p.yaml").write_text(PIPELINE)
    (tmp_path / "url.yaml").write_text(BROKEN_URL_PIPELINE)
    (tmp_path / "s3.yaml").write_text(S3_PIPELINE)
    p, url, s3 = (str(tmp_path / f"{n}.yaml") for n in ("p", "url", "s3"))
    runs: list[subprocess.CompletedProcess[str]] = [
        cli("validate", p, env=canaries),
        cli("run", p, "--dry-run", env=canaries),
        cli("-vv", "run", p, "--preview", "5", env=canaries),
        cli("-vv", "run", p, env=canaries),
        cli("state", "show", p, env=canaries),
        cli("deadletters", "list", p, env=canaries),
        cli("deadletters", "show", p, "1", env=canaries),
        cli("-vv", "run", url, env=canaries),
        cli("-vv", "run", s3, env=canaries),  # the S3 endpoint is unreachable
    ]
    printed = "\n".join(r.stdout + r.stderr for r in runs)
    # The runs did what the test needs: dead letters exist, the unreachable targets failed.
    assert runs[3].returncode == 0, runs[3].stderr
    assert "refused with password=***" in printed  # reached the ledger, masked
    assert runs[7].returncode == 1 and runs[8].returncode == 1, printed[-2000:]
    stored = everything_written(tmp_path)
    assert stored, "the runs wrote nothing: the test proved nothing"
    for name, canary in canaries.items():
        assert canary not in printed, f"{name} leaked into output:\n{printed}"
        assert canary.encode() not in stored, f"{name} leaked into a file under {tmp_path}"

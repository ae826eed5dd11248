"""The `tideflow` command: exit codes, messages, and each subcommand."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from tideflow.cli.main import cli
from tideflow.connectors.memory import clear, collected

Write = Callable[..., Path]

PIPELINE = """
name: cli-demo
source:
  type: memory
  records: [{v: "1"}, {v: "2"}, {v: "x"}, {v: "40"}]
steps:
  - {type: cast, name: typed, columns: {v: int}}
  - {type: filter, name: small, expr: "v < 10"}
sink: {type: memory, name: out, collector: cli-demo}
"""


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_run_prints_a_summary_and_dead_letters_can_be_listed(write_pipeline: Write) -> None:
    clear("cli-demo")
    path = write_pipeline(PIPELINE)
    code, output = invoke("run", str(path))
    assert code == 0, output
    assert "every record accounted for" in output
    assert "1 record(s) dead-lettered" in output
    assert sorted(collected("cli-demo")["v"]) == [1, 2]
    code, output = invoke("deadletters", "list", str(path))
    assert code == 0
    assert "typed: cannot cast v value x to Int64" in output


def test_run_json_summary_counts(write_pipeline: Write) -> None:
    path = write_pipeline(PIPELINE)
    result = CliRunner().invoke(cli, ["run", str(path), "--json"], catch_exceptions=False)
    assert result.exit_code == 0
    # stdout holds only the JSON document; progress lines go to stderr.
    counts = json.loads(result.stdout)["counts"]
    assert counts["typed"]["dead_lettered"] == 1
    assert counts["small"]["filtered"] == 1
    assert counts["small"]["out"] == 2


def test_dead_letter_replay_after_fixing_the_pipeline(write_pipeline: Write) -> None:
    clear("cli-demo")
    path = write_pipeline(PIPELINE)
    assert invoke("run", str(path))[0] == 0
    # Replay through a cast that tolerates the bad value: the record now passes (as null)
    code, output = invoke(
        "deadletters",
        "replay",
        str(path),
        "--step",
        "typed",
        "--set",
        "steps.typed.strict=false",
        "--set",
        "steps.small.expr=v IS NULL OR v < 10",
    )
    assert code == 0, output
    replayed = collected("cli-demo")
    assert replayed.height == 3 and replayed["v"].null_count() == 1
    code, output = invoke("deadletters", "list", str(path))
    assert "(replayed)" not in output  # replayed rows are hidden by default
    code, output = invoke("deadletters", "list", str(path), "--all")
    assert "(replayed)" in output


def test_state_show_and_reset(write_pipeline: Write) -> None:
    path = write_pipeline(PIPELINE)
    invoke("run", str(path))
    code, output = invoke("state", "show", str(path))
    assert code == 0 and "checkpoint 1" in output
    code, output = invoke("state", "reset", str(path), "--yes")
    assert code == 0
    assert "no checkpoint yet" in invoke("state", "show", str(path))[1]


def test_dry_run_prints_the_plan_and_reads_nothing(write_pipeline: Write) -> None:
    clear("cli-demo")
    path = write_pipeline(PIPELINE)
    code, output = invoke("run", str(path), "--dry-run")
    assert code == 0
    assert "step   small (filter)  <- typed" in output
    assert collected("cli-demo").height == 0


def test_preview_shows_records_after_each_step_and_writes_nothing(write_pipeline: Write) -> None:
    clear("cli-demo")
    path = write_pipeline(PIPELINE)
    code, output = invoke("run", str(path), "--preview", "2")
    assert code == 0
    assert "typed (first 2)" in output and "small (first 2)" in output
    assert collected("cli-demo").height == 0
    assert not (path.parent / ".tideflow").exists()


def test_validate_reports_errors_with_exit_code_2(write_pipeline: Write) -> None:
    good = write_pipeline(PIPELINE, "good.yaml")
    bad = write_pipeline(PIPELINE.replace("type: filter", "type: fliter"), "bad.yaml")
    assert invoke("validate", str(good)) == (0, f"{good}: ok\n")
    result = CliRunner().invoke(cli, ["validate", str(bad)])
    assert result.exit_code == 2
    assert "bad.yaml:7: steps[1].type: unknown step type 'fliter'; did you mean 'filter'" in (
        result.output
    )


def test_connectors_list_and_describe() -> None:
    code, output = invoke("connectors")
    assert code == 0 and "generate" in output and "with_columns" in output
    code, output = invoke("connectors", "describe", "filter")
    assert code == 0 and "expr: str = required" in output
    result = CliRunner().invoke(cli, ["connectors", "describe", "filtr"])
    assert result.exit_code == 2 and "did you mean 'filter'" in result.output


def test_schema_is_json_schema() -> None:
    code, output = invoke("schema")
    schema = json.loads(output)
    assert code == 0 and schema["title"] == "tideflow pipeline"
    assert "steps" in schema["properties"]


def test_init_copies_a_template(tmp_path: Path) -> None:
    code, output = invoke("init")
    assert "quickstart" in output
    target = tmp_path / "qs"
    code, output = invoke("init", "quickstart", str(target))
    assert code == 0 and (target / "pipeline.yaml").is_file()
    result = CliRunner().invoke(cli, ["init", "quikstart", str(tmp_path / "x")])
    assert result.exit_code == 2 and "did you mean 'quickstart'" in result.output


def test_yaml_pipeline_tests_pass_and_fail(write_pipeline: Write) -> None:
    write_pipeline(PIPELINE)
    passing = write_pipeline(
        """
pipeline: pipeline.yaml
tests:
  - name: casts and filters
    input: [{v: "3"}, {v: "12"}, {v: "no"}]
    expect:
      - at: small
        records: [{v: 3}]
      - at: out
        count: 1
""",
        "ok_test.yaml",
    )
    assert invoke("test", str(passing))[0] == 0
    failing = write_pipeline(
        """
pipeline: pipeline.yaml
tests:
  - name: wrong expectation
    input: [{v: "3"}]
    expect:
      - at: small
        records: [{v: 4}]
""",
        "bad_test.yaml",
    )
    result = CliRunner().invoke(cli, ["test", str(failing)])
    assert result.exit_code == 1
    assert "FAIL" in result.output and '"v":4' in result.output


def _tideflow(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tideflow.cli.main", *args],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_process_exit_codes_and_no_traceback(write_pipeline: Write) -> None:
    bad = write_pipeline("name: p\nsource: {type: generate, count: x}\nsink: {type: stdout}\n")
    proc = _tideflow("run", str(bad))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "source.count" in proc.stderr
    failing = write_pipeline(
        "name: p\nsource: {type: memory, records: [{v: 1}]}\n"
        "steps: [{type: select, columns: [nope]}]\nsink: {type: stdout}\n",
        "f.yaml",
    )
    proc = _tideflow("run", str(failing))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and "column(s) not in the batch" in proc.stderr


def test_secrets_from_the_environment_never_reach_the_output(write_pipeline: Write) -> None:
    path = write_pipeline(
        "name: p\nsource:\n  type: memory\n  records: [{v: 1}]\n"
        "steps: [{type: filter, expr: \"v = '${API_TOKEN}'\"}]\nsink: {type: stdout}\n"
        "description: ${API_TOKEN}\n",
        "s.yaml",
    )
    env = {**os.environ, "API_TOKEN": "tok-very-secret-123"}
    for args in (("run", str(path), "--dry-run"), ("run", str(path), "--set", "source.x=1")):
        proc = _tideflow(*args, env=env)
        assert "tok-very-secret-123" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("bad_set", ["novalue", "=1"])
def test_malformed_set_is_a_config_error(write_pipeline: Write, bad_set: str) -> None:
    path = write_pipeline(PIPELINE)
    result = CliRunner().invoke(cli, ["run", str(path), "--set", bad_set])
    assert result.exit_code == 2 and "--set expects key=value" in result.output


@pytest.mark.parametrize("flags", [("--workers", "2"), ("--worker-id", "w0")])
def test_workers_need_a_source_split_by_partition(
    write_pipeline: Write, flags: tuple[str, str]
) -> None:
    path = write_pipeline(PIPELINE)
    code, output = invoke("run", str(path), *flags)
    assert code == 2
    assert "source 'memory' (memory) cannot be split between workers" in output
    assert "Traceback" not in output
    assert "no checkpoint yet" in invoke("state", "show", str(path))[1]


def test_workers_refuse_a_sink_that_keeps_the_checkpoint(write_pipeline: Write) -> None:
    path = write_pipeline(
        """
name: cli-group
source: {type: topic, topic: t, group: g, broker: embedded}
sink: {type: sql, url: "sqlite:///out.db", table: t, transactional: true}
"""
    )
    code, output = invoke("run", str(path), "--worker-id", "w0")
    assert code == 2
    assert "keeps the checkpoint with its data" in output

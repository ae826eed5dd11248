"""Commands as the README and the examples write them (issue 25): a pipeline given by name
from another folder, ``--state-dir`` after a subcommand, ``tideflow test`` of a missing file,
``tideflow init``'s full sequence, and a crashed run shown as interrupted."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from tests.system.helpers import cli as cli_process

from tideflow.cli.main import cli
from tideflow.state.store import StateStore

PIPELINE = """
name: by-name
source:
  type: memory
  records: [{v: "1"}, {v: "x"}, {v: "3"}]
steps:
  - {type: cast, name: typed, columns: {v: int}}
sink: {type: memory, name: out, collector: by-name}
"""


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_a_pipeline_by_name_from_another_folder_with_state_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "example"
    folder.mkdir()
    (folder / "pipeline.yaml").write_text(PIPELINE, encoding="utf-8")
    code, output = invoke("run", str(folder / "pipeline.yaml"))
    assert code == 0, output
    monkeypatch.chdir(tmp_path)
    # From the parent folder the name is unknown, and the error says how to point at it.
    code, output = invoke("deadletters", "list", "by-name")
    assert code == 2 and "--state-dir" in output
    state_dir = str(folder / ".tideflow")
    code, output = invoke("deadletters", "list", "by-name", "--state-dir", state_dir)
    assert code == 0, output
    assert "typed: cannot cast v value x to Int64" in output
    code, output = invoke("state", "show", "by-name", "--state-dir", state_dir)
    assert code == 0 and "by-name: checkpoint" in output and "succeeded" in output
    code, output = invoke("deadletters", "show", "by-name", "1", "--state-dir", state_dir)
    assert code == 0 and '"reason"' in output
    code, output = invoke("state", "show", "by-name", "--state-dir", str(tmp_path / "nowhere"))
    assert code == 2 and "no such folder" in output


def test_state_dir_after_the_topics_subcommand(tmp_path: Path) -> None:
    log = str(tmp_path / "elsewhere" / ".tideflow")
    code, output = invoke("topics", "--state-dir", log, "create", "t-after", "--partitions", "2")
    assert code == 0, output
    code, output = invoke("topics", "describe", "t-after", "--state-dir", log)
    assert code == 0, output
    assert "t-after: 2 partition(s), 0 message(s) written" in output
    code, output = invoke("topics", "lag", "t-after", "nobody", "--state-dir", log)
    assert code == 0 and "total lag 0" in output
    # Without it, the default folder (here: none of that topic) is what is asked.
    result = cli_process("topics", "describe", "t-after", cwd=tmp_path)
    assert result.returncode == 1 and "does not exist" in result.stderr


def test_tideflow_test_of_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    result = cli_process("test", "pipeline_test.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert "pipeline_test.yaml: cannot read the test file: No such file" in result.stderr
    assert "Traceback" not in result.stderr
    (tmp_path / "t2.yaml").write_text(
        "pipeline: gone.yaml\ntests:\n  - {name: a, input: [], expect: [{at: x, count: 0}]}\n",
        encoding="utf-8",
    )
    result = cli_process("test", "t2.yaml", cwd=tmp_path)
    assert result.returncode == 2 and "cannot read the pipeline file" in result.stderr


@pytest.mark.parametrize(
    ("template", "first"),
    [
        ("sql-etl", "tideflow run {d}/seed.yaml"),
        ("api-to-sql", "python -m tideflow.testing.fake_api --port 8765"),
        ("quickstart", "tideflow run {d}/pipeline.yaml"),
    ],
)
def test_init_prints_every_step_the_template_needs(
    tmp_path: Path, template: str, first: str
) -> None:
    target = tmp_path / "t"
    code, output = invoke("init", template, str(target))
    assert code == 0, output
    lines = [line.strip() for line in output.splitlines()[1:]]
    assert lines[0].startswith(first.replace("{d}", target.as_posix()))
    assert lines[-1].startswith(f"tideflow run {target.as_posix()}/pipeline.yaml")


def test_a_crashed_run_shows_as_interrupted_once_another_starts(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(
        "name: crashy\nsource: {type: generate, count: 3000, batch_size: 500}\n"
        "sink: {type: file, path: out, format: ndjson}\ncheckpoint: {every_records: 1000}\n",
        encoding="utf-8",
    )
    crashed = cli_process(
        "run", "p.yaml", cwd=tmp_path, env={"TIDEFLOW_CRASH_AT": "checkpoint.after_flush:2"}
    )
    assert crashed.returncode not in (0, 1, 2), crashed.stderr
    # Its process is gone: shown as interrupted at once, though the store still says running.
    shown = cli_process("state", "show", "p.yaml", cwd=tmp_path)
    assert statuses(shown.stdout) == ["interrupted"], shown.stdout
    assert recorded(tmp_path) == ["running"]
    final = cli_process("run", "p.yaml", cwd=tmp_path)
    assert final.returncode == 0, final.stderr
    shown = cli_process("state", "show", "p.yaml", cwd=tmp_path)
    assert statuses(shown.stdout) == ["succeeded", "interrupted"], shown.stdout
    # The later run, having taken the pipeline over, recorded it as interrupted.
    assert recorded(tmp_path) == ["succeeded", "interrupted"]


def statuses(output: str) -> list[str]:
    return [line.split(": ", 1)[1] for line in output.splitlines() if line.startswith("  run ")]


def recorded(folder: Path) -> list[str]:
    """The statuses the store holds, newest first (not as ``runs()`` shows them)."""
    store = StateStore(folder / ".tideflow" / "state.db")
    try:
        rows = store.db.conn.execute(
            "SELECT status FROM runs WHERE pipeline='crashy' ORDER BY started_at DESC"
        ).fetchall()
    finally:
        store.close()
    return [row[0] for row in rows]

"""An unbounded run (a watched folder) stops on SIGTERM or SIGINT: drains, checkpoints, exits 0."""

from __future__ import annotations

import re
import signal
import subprocess
import threading
from pathlib import Path

import polars as pl
import pytest
from tests.system.helpers import read_parquet_tree, start_cli

PIPELINE = """
name: watcher
source: {type: file, path: inbox, format: csv, watch: true, poll_interval: 0.1}
sink: {type: file, path: out, format: parquet}
checkpoint: {every_records: 1000000, every_seconds: 3600}
"""


def drop_file(inbox: Path, name: str, ids: range) -> None:
    """Write a CSV atomically (temporary name, then rename), as producers should."""
    tmp = inbox / f".{name}.tmp"
    pl.DataFrame({"id": list(ids)}).write_csv(tmp)
    tmp.rename(inbox / name)


class ProgressWatcher:
    """Reads a running CLI's progress lines (stderr) on a thread; waits for a record count."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()

    def wait_for_records(self, n: int, timeout: float = 60) -> None:
        """Block until a progress line reports at least ``n`` records read."""
        pattern = re.compile(r"progress:.*?([\d,]+) records")

        def reached() -> bool:
            counts = [
                int(m.group(1).replace(",", "")) for m in map(pattern.search, self.lines) if m
            ]
            return bool(counts) and max(counts) >= n

        with self._changed:
            if not self._changed.wait_for(reached, timeout):
                raise AssertionError(f"never read {n} records:\n{''.join(self.lines)}")

    def stop(self, signum: int) -> str:
        """Send ``signum``, wait for the exit, return stdout."""
        self.proc.send_signal(signum)
        stdout, _ = self.proc.communicate(timeout=60)
        return stdout


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_watched_folder_stops_cleanly_and_resumes_with_new_files_only(
    tmp_path: Path, signum: signal.Signals
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    pipeline = str(tmp_path / "p.yaml")
    (tmp_path / "p.yaml").write_text(PIPELINE, encoding="utf-8")
    drop_file(inbox, "a.csv", range(0, 500))

    run = ProgressWatcher(start_cli("run", pipeline, "--log-progress", "0.1", cwd=tmp_path))
    run.wait_for_records(500)
    drop_file(inbox, "b.csv", range(500, 800))  # appears while the stream runs
    run.wait_for_records(800)
    # The checkpoint interval is an hour: output can only appear through the stop's drain.
    assert read_parquet_tree(tmp_path / "out").height == 0
    stdout = run.stop(signum)
    assert run.proc.returncode == 0, "".join(run.lines)
    assert "watcher: stopped" in stdout, stdout
    assert sorted(read_parquet_tree(tmp_path / "out")["id"].to_list()) == list(range(800))

    drop_file(inbox, "c.csv", range(800, 900))
    run = ProgressWatcher(start_cli("run", pipeline, "--log-progress", "0.1", cwd=tmp_path))
    run.wait_for_records(100)
    assert run.stop(signal.SIGTERM) and run.proc.returncode == 0, "".join(run.lines)
    ids = read_parquet_tree(tmp_path / "out")["id"].to_list()
    assert sorted(ids) == list(range(900)), "finished files must never be read again"

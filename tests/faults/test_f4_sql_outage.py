"""F4: the PostgreSQL server under a run stops mid-run and comes back.

The run must wait it out (backoff with jitter), say so in its log, resume within
``RESUME_BOUND`` seconds of the server's return, keep its memory bounded while blocked
(back-pressure holds the source back) and leave exactly the input in the target — for the
sink in both delivery modes (per-batch commits with upsert; transactional, where the open
transaction's batches are replayed) and for the source.

CI stops the server once for 8 s; `make faults` stops it for 30 s and then, later in the same
run, for 3 minutes. The resume time is measured from the server's own log line "ready to
accept connections" to the run's own "recovered after" log line (both stamped when they
happened, not when the test looked).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import polars as pl
import psutil
import psycopg
import pytest
from tests.faults.oracle import FULL, compare, records
from tests.faults.private_postgres import PrivatePostgres
from tests.system.helpers import start_cli

OUTAGES = (30.0, 180.0) if FULL else (8.0,)
"""Seconds the server stays down, one outage after the other in the same run."""

RESUME_BOUND = 10.0
"""The issue's bound: seconds from the server accepting connections to the run's first
successful operation after it."""

MEMORY_BOUND_MB = 64.0
"""How far the run's RSS may rise above its peak before the outage while it is blocked. A
source read ahead without back-pressure grows by hundreds of MB a second here; this margin
only absorbs the allocator's and the reconnect attempts' noise."""

PIPELINE = """
name: outage
source: {type: file, path: "in/*.csv", batch_size: 500}
steps:
  - {type: python, name: pace, function: "pace.py:pace", mode: batch}
sink: {type: sql, url: "URL", table: events, SINK}
checkpoint: {every_records: 2000}
"""

PACE = """
import time

def pace(batch):
    time.sleep(float(PACE_SECONDS))
    return batch
"""

SINKS = pytest.mark.parametrize(
    "sink", ["mode: upsert, key: [id]", "transactional: true"], ids=["upsert", "transactional"]
)


@dataclass
class RunLog:
    """The stderr of a running pipeline, read as it comes so the pipe never fills."""

    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def text(self) -> str:
        """Everything logged so far."""
        return "".join(self.lines)

    def recoveries(self) -> list[float]:
        """When each "recovered after" line was logged (Unix times, from the log's stamps)."""
        stamps = []
        for line in list(self.lines):
            if "recovered after" not in line:
                continue
            match = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ", line)
            assert match, f"a log line without its time: {line!r}"
            # The CLI's log stamps are local time, like datetime.strptime's naive result.
            moment = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S")
            stamps.append(moment.timestamp() + int(match.group(2)) / 1000)
        return stamps

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc: object) -> None:
        # A failed assertion must not leave the run behind (it would outlive the server).
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def finish(self, timeout: float = 300) -> str:
        """Wait for the run to end; everything it logged."""
        self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return self.text()


@dataclass
class Outage:
    """One stop of the server as the test saw it and the server logged it."""

    seconds: float
    stopped_at: float = 0.0
    ready_at: float = 0.0
    rss_before_mb: float = 0.0
    rss_during_mb: list[float] = field(default_factory=list)
    resumed_after: float | None = None


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (a worker the CLI might start)."""
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
        return sum(p.memory_info().rss for p in procs) / (1 << 20)
    except psutil.NoSuchProcess:
        return 0.0


def sample_rss(pid: int, seconds: float, every: float = 0.25) -> list[float]:
    """RSS samples of ``pid`` over ``seconds``."""
    samples = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        samples.append(rss_mb(pid))
        time.sleep(every)
    return samples


def wait_until(condition: Callable[[], bool], what: str, log: RunLog, timeout: float = 120) -> None:
    """Poll ``condition`` until true; fail if the run ends or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert log.proc.poll() is None, f"the run ended before {what}:\n{log.text()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{log.text()}"
        time.sleep(0.1)


def go_through_outages(
    server: PrivatePostgres,
    log: RunLog,
    under_way: Callable[[], bool],
    durations: tuple[float, ...],
) -> list[Outage]:
    """Stop the server for each duration in turn, once the run is ``under_way``
    and, after the first outage, once it resumed from the last one and made progress."""
    outages = []
    for seconds in durations:
        if outages:
            wait_until(lambda: len(log.recoveries()) >= len(outages), "resuming", log)
            time.sleep(1.0)  # some batches after the resume, before the next stop
        else:
            wait_until(under_way, "the first outage", log)
        outage = Outage(seconds)
        outage.rss_before_mb = max(sample_rss(log.proc.pid, 1.0))
        outage.stopped_at = time.time()
        server.stop()
        outage.rss_during_mb = sample_rss(log.proc.pid, seconds)
        assert log.proc.poll() is None, "the run gave up during the outage:\n" + log.text()
        server.start()
        outage.ready_at = server.ready_at()
        outages.append(outage)
    return outages


def check_resumes(outages: list[Outage], log: RunLog) -> None:
    """Each outage ended with a "recovered after" line within RESUME_BOUND of the server's
    return, and the log said when it started."""
    text = log.text()
    assert text.count("retrying with backoff") >= len(outages), text
    recoveries = log.recoveries()
    for outage in outages:
        after = [t for t in recoveries if t >= outage.stopped_at]
        assert after, f"no recovery logged after the {outage.seconds:.0f} s outage:\n{text}"
        outage.resumed_after = after[0] - outage.ready_at
        print(f"outage {outage.seconds:.0f} s: resumed {outage.resumed_after:.2f} s after return")
        assert outage.resumed_after <= RESUME_BOUND, (
            f"resumed {outage.resumed_after:.1f} s after the server's return "
            f"(bound {RESUME_BOUND:.0f} s) from a {outage.seconds:.0f} s outage:\n{text}"
        )


def check_memory(outages: list[Outage]) -> None:
    """RSS while blocked stayed within MEMORY_BOUND_MB of the peak just before the outage."""
    for outage in outages:
        peak = max(outage.rss_during_mb)
        print(
            f"outage {outage.seconds:.0f} s: RSS {outage.rss_before_mb:.0f} MB before, "
            f"at most {peak:.0f} MB during"
        )
        assert peak <= outage.rss_before_mb + MEMORY_BOUND_MB, (
            f"RSS grew from {outage.rss_before_mb:.0f} MB to {peak:.0f} MB during a "
            f"{outage.seconds:.0f} s outage (samples {outage.rss_during_mb[::8]})"
        )


def rows_in_table(url: str) -> int:
    """Rows committed so far, or -1 while the table does not exist or the server is down."""
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            row = conn.execute("SELECT count(*) FROM events").fetchone()
    except psycopg.Error:
        return -1
    return int(row[0]) if row else -1


def write_pipeline(tmp_path: Path, text: str, pace: float = 0.1) -> None:
    """The pipeline file and its pacing step, which spreads the run over the outages."""
    (tmp_path / "pace.py").write_text(PACE.replace("PACE_SECONDS", str(pace)), encoding="utf-8")
    (tmp_path / "p.yaml").write_text(text, encoding="utf-8")


@pytest.mark.slow
@SINKS
def test_the_sink_waits_out_an_outage_resumes_promptly_and_loses_nothing(
    tmp_path: Path, private_postgres: PrivatePostgres, sink: str
) -> None:
    # Enough input to still be running when the last outage starts (500 rows per 0.1 s).
    data = records(5, 20_000 * len(OUTAGES))
    (tmp_path / "in").mkdir()
    data.write_csv(tmp_path / "in" / "part-0.csv")
    write_pipeline(tmp_path, PIPELINE.replace("URL", private_postgres.url).replace("SINK", sink))

    with RunLog(start_cli("run", "p.yaml", cwd=tmp_path)) as log:
        outages = go_through_outages(
            private_postgres, log, lambda: rows_in_table(private_postgres.url) >= 2000, OUTAGES
        )
        text = log.finish()
    assert log.proc.returncode == 0, text
    check_resumes(outages, log)

    with psycopg.connect(private_postgres.url) as conn:
        rows = conn.execute("SELECT id, key, value FROM events").fetchall()
    diff = compare(data, pl.DataFrame(rows, schema=["id", "key", "value"], orient="row"))
    assert diff.exact, str(diff)


@pytest.mark.slow
def test_the_source_resumes_reading_after_an_outage(
    tmp_path: Path, private_postgres: PrivatePostgres
) -> None:
    data = records(6, 20_000 * len(OUTAGES))
    with psycopg.connect(private_postgres.url) as conn:
        conn.execute("CREATE TABLE events (id BIGINT PRIMARY KEY, key TEXT, value BIGINT)")
        with conn.cursor().copy("COPY events FROM STDIN (FORMAT csv)") as copy:
            copy.write(data.write_csv(include_header=False).encode())
    write_pipeline(
        tmp_path,
        "name: outage-read\n"
        f"source: {{type: sql, url: '{private_postgres.url}', table: events, cursor: id, "
        "batch_size: 500}\n"
        "steps:\n"
        '  - {type: python, name: pace, function: "pace.py:pace", mode: batch}\n'
        "sink: {type: file, path: out, format: parquet}\n"
        "checkpoint: {every_records: 2000}\n",
    )
    with RunLog(start_cli("run", "p.yaml", cwd=tmp_path)) as log:
        outages = go_through_outages(private_postgres, log, (tmp_path / "out").exists, OUTAGES)
        text = log.finish()
    assert log.proc.returncode == 0, text
    check_resumes(outages, log)
    out = pl.read_parquet(tmp_path / "out" / "**" / "*.parquet")
    diff = compare(data, out)
    assert diff.exact, str(diff)


@pytest.mark.slow
def test_memory_stays_bounded_while_the_sink_is_blocked(
    tmp_path: Path, private_postgres: PrivatePostgres
) -> None:
    """An endless source that could read far ahead of a blocked sink: back-pressure must
    hold it back for the whole (longest) outage, and the run must resume exactly."""
    write_pipeline(
        tmp_path,
        "name: outage-memory\n"
        "source: {type: generate, shape: sequence, batch_size: 10000}\n"
        "steps:\n"
        '  - {type: python, name: pace, function: "pace.py:pace", mode: batch}\n'
        f"sink: {{type: sql, url: '{private_postgres.url}', table: events, "
        "transactional: true}\n"
        "checkpoint: {every_records: 50000}\n",
        pace=0.05,
    )
    with RunLog(start_cli("run", "p.yaml", "--json", cwd=tmp_path)) as log:
        outages = go_through_outages(
            private_postgres,
            log,
            lambda: rows_in_table(private_postgres.url) >= 50_000,
            OUTAGES[-1:],
        )
        check_memory(outages)
        # Stop the endless run once it has resumed and committed past the outage.
        before = max(rows_in_table(private_postgres.url), 0)
        wait_until(lambda: rows_in_table(private_postgres.url) > before, "a commit after", log)
        log.proc.send_signal(signal.SIGTERM)
        text = log.finish(timeout=60)
    assert log.proc.returncode == 0, text
    check_resumes(outages, log)

    assert log.proc.stdout is not None
    summary = json.loads(log.proc.stdout.read())
    delivered = summary["counts"]["generate"]["out"]
    with psycopg.connect(private_postgres.url) as conn:
        ids = [i for (i,) in conn.execute("SELECT id FROM events").fetchall()]
    expected = pl.DataFrame({"id": list(range(delivered))})
    diff = compare(expected, pl.DataFrame({"id": ids}, schema={"id": pl.Int64}))
    assert diff.exact, str(diff)

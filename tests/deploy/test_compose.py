"""The rooms topology in real containers: deploy/compose/rooms/compose.yaml with the
compose.local.yaml override (images built here by scripts/containers.sh), run by podman-compose.

The stack is brought up; the producer publishes 1,000 counts to Kafka (tansu); the test checks
1,000 Parquet rows on S3 (moto) and totals in PostgreSQL equal to a batch computation of the
generator's records, that Prometheus scrapes every pipeline, that the UI and the image's
HEALTHCHECK answer and the logs are JSON lines. Then one `reckoning` worker is killed with
SIGKILL while 1,000 more counts are published; podman restarts it, and the archive and the
totals must again be exact. The stack is torn down whatever happens.

In CI (CI=true) a machine where podman cannot run fails this test; elsewhere it is skipped.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import polars as pl
import psycopg
import pytest
from tests.service.conftest import free_port

ROOT = Path(__file__).parents[2]
STACK = ROOT / "deploy" / "compose" / "rooms"
COMPOSE_FILES = [STACK / "compose.yaml", STACK / "compose.local.yaml"]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
SERVICES = [
    "broker",
    "postgres",
    "s3",
    "s3-bucket",
    "prometheus",
    "producer",
    "coldstorage-0",
    "reckoning-0",
    "reckoning-1",
    "ui",
]
"""Everything but Grafana, for which no package is reachable here."""
PIPELINES = ["producer", "coldstorage-0", "reckoning-0", "reckoning-1"]
FIRST, SECOND = 1000, 2000
"""Counts published: the producer's first run, then in all after its second."""
TIMEOUT = 600.0
"""A safety bound for each wait (images are cached; the stack settles in about a minute)."""


def fail_or_skip(why: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"the container test must run in CI: {why}")
    pytest.skip(why)


pytestmark = pytest.mark.timeout(3600)  # the first build of the images takes minutes


@pytest.fixture(scope="module")
def podman_env() -> dict[str, str]:
    """Build (or reuse) the stack's images; the environment podman runs with."""
    if shutil.which("bash") is None:
        fail_or_skip("no bash")
    started = time.monotonic()
    built = subprocess.run(
        ["bash", "scripts/containers.sh", "images"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=3600,
    )
    if built.returncode != 0:
        fail_or_skip(f"scripts/containers.sh images failed:\n{built.stdout}\n{built.stderr}")
    print(f"images ready in {time.monotonic() - started:.0f} s")
    return {**os.environ, "CONTAINERS_CONF": str(ROOT / "scripts" / "containers.conf")}


@dataclass
class Stack:
    """A running compose project and how to reach it from the host."""

    name: str
    env: dict[str, str]
    ports: dict[str, int]
    password: str
    token: str
    logs: Path
    ids: dict[str, str] = field(default_factory=dict)

    def compose(self, *args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
        files = [arg for path in COMPOSE_FILES for arg in ("-f", str(path))]
        return subprocess.run(
            [sys.executable, "-m", "podman_compose", "-p", self.name, *files, *args],
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )

    def podman(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["podman", *args],
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )

    def container(self, service: str) -> str:
        """The id of a service's container."""
        if service not in self.ids:
            found = self.podman(
                "ps",
                "-a",
                "--filter",
                f"label=io.podman.compose.project={self.name}",
                "--filter",
                f"label=com.docker.compose.service={service}",
                "--format",
                "{{.ID}}",
            ).stdout.split()
            assert len(found) == 1, f"{service}: containers {found}"
            self.ids[service] = found[0]
        return self.ids[service]

    def inspect(self, service: str, template: str) -> str:
        return self.podman("inspect", "--format", template, self.container(service)).stdout.strip()

    def log_lines(self, service: str) -> list[str]:
        return [line for line in self.podman("logs", self.container(service)).stderr.splitlines()]

    @property
    def database(self) -> str:
        return f"postgresql://tideflow:{self.password}@127.0.0.1:{self.ports['POSTGRES_PORT']}/tideflow"

    def save_logs(self) -> None:
        """Every container's log into the test's folder (read them when it fails)."""
        self.logs.mkdir(exist_ok=True)
        for service in SERVICES:
            try:
                result = self.podman("logs", self.container(service))
            except AssertionError:
                continue
            (self.logs / f"{service}.log").write_text(result.stdout + result.stderr)


PROJECT_PREFIX = "tfrooms"
STALE_SECONDS = 2 * 3600
"""A stack of this test older than this was left by a run that was killed: removed."""


def remove_stale_stacks(env: dict[str, str]) -> None:
    """Remove what killed runs of this test left (their teardown never ran); stacks of runs
    going on now (younger than STALE_SECONDS) are left alone."""

    def podman(*args: str) -> str:
        done = subprocess.run(
            ["podman", *args], env=env, capture_output=True, text=True, check=False, timeout=300
        )
        return done.stdout

    stale = set()
    for container in orjson.loads(podman("ps", "-a", "--format", "json") or "[]"):
        project = (container.get("Labels") or {}).get("io.podman.compose.project", "")
        if project.startswith(PROJECT_PREFIX) and time.time() - container["Created"] > (
            STALE_SECONDS
        ):
            stale.add(project)
    for project in stale:
        label = f"label=io.podman.compose.project={project}"
        ids = podman("ps", "-a", "-q", "--filter", label).split()
        if ids:
            podman("rm", "-f", "-t", "0", *ids)
        podman("network", "rm", "-f", f"{project}_default")
        volumes = podman("volume", "ls", "-q", "--filter", label).split()
        if volumes:
            podman("volume", "rm", "-f", *volumes)


@pytest.fixture
def stack(podman_env: dict[str, str], tmp_path: Path) -> Iterator[Stack]:
    remove_stale_stacks(podman_env)
    ports = {
        name: free_port() for name in ("POSTGRES_PORT", "S3_PORT", "PROMETHEUS_PORT", "UI_PORT")
    }
    password, token = uuid.uuid4().hex, uuid.uuid4().hex
    env = {
        **podman_env,
        **{name: str(port) for name, port in ports.items()},
        "POSTGRES_PASSWORD": password,
        "TIDEFLOW_TOKEN": token,
        "COUNT": str(FIRST),
    }
    running = Stack(
        f"{PROJECT_PREFIX}{uuid.uuid4().hex[:8]}", env, ports, password, token, tmp_path / "logs"
    )
    try:
        up = running.compose("up", "-d", *SERVICES)
        assert up.returncode == 0, f"compose up failed:\n{up.stdout}\n{up.stderr}"
        yield running
    finally:
        try:
            running.save_logs()
        finally:
            down = running.compose("down", "-v", "-t", "5")
            assert down.returncode == 0, f"compose down failed:\n{down.stdout}\n{down.stderr}"


def wait_for(check: Callable[[], Any], what: str, stack: Stack, timeout: float = TIMEOUT) -> Any:
    """Poll ``check()`` until it returns something true; that value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as exc:  # noqa: BLE001 - not there yet (a service still starting)
            last = exc
        else:
            if last:
                return last
        time.sleep(1)
    stack.save_logs()
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}; logs in {stack.logs}")


def generated(count: int) -> pl.DataFrame:
    """The counts the producer publishes (examples/rooms/publish.yaml with COUNT=count),
    produced again here by the same generator, in one batch."""
    from tideflow import Pipeline, collect, generate
    from tideflow.connectors.memory import clear
    from tideflow.testing import collected

    spec = Pipeline.from_yaml(ROOT / "examples" / "rooms" / "publish.yaml").build()
    settings = spec.all_sources[0].model_dump(exclude={"name", "type", "input"}, exclude_none=True)
    settings["count"] = count
    clear("compose-oracle")
    folder = Path(os.environ.get("TMPDIR", "/tmp")) / f"compose-oracle-{uuid.uuid4().hex}"
    Pipeline("compose-oracle").source(generate(**settings)).sink(collect("compose-oracle")).run(
        folder
    )
    shutil.rmtree(folder, ignore_errors=True)
    records = collected("compose-oracle")
    clear("compose-oracle")
    return records


def expected_totals(records: pl.DataFrame) -> pl.DataFrame:
    return (
        records.group_by("room")
        .agg(pl.col("count").sum().alias("people"), pl.len().alias("readings"))
        .sort("room")
    )


def totals(stack: Stack) -> pl.DataFrame:
    with psycopg.connect(stack.database, connect_timeout=5) as conn:
        rows = conn.execute("SELECT room, people, readings FROM room_totals").fetchall()
    return pl.DataFrame(rows, schema=["room", "people", "readings"], orient="row").sort("room")


def totals_equal(stack: Stack, expected: pl.DataFrame) -> bool:
    have = totals(stack)
    return have.height == expected.height and have.equals(expected.cast(have.schema))


def archive(stack: Stack) -> pl.DataFrame:
    """Every committed Parquet row under s3://rooms-archive/rooms (staging names skipped)."""
    import s3fs

    fs = s3fs.S3FileSystem(
        key="tideflow",
        secret="tideflow-secret",
        client_kwargs={"endpoint_url": f"http://127.0.0.1:{stack.ports['S3_PORT']}"},
    )
    fs.invalidate_cache()
    files = [
        path
        for path in fs.find("rooms-archive/rooms")
        if path.endswith(".parquet")
        and not any(part.startswith((".", "_")) for part in path.split("/")[2:])
    ]
    if not files:
        return pl.DataFrame()
    frames = []
    for path in files:
        with fs.open(path, "rb") as handle:
            frames.append(pl.read_parquet(handle))
    return pl.concat(frames, how="diagonal_relaxed")


def archived(stack: Stack, expected: pl.DataFrame) -> bool:
    """The archive holds exactly the expected counts, each message once."""
    rows = archive(stack)
    if rows.height != expected.height:
        return False
    assert rows.select("_partition", "_offset").is_unique().all(), "a message archived twice"
    mine = rows.select("room", "count").sort("room", "count")
    theirs = expected.select("room", "count").sort("room", "count")
    return mine.equals(theirs.cast(mine.schema))


def scraped(stack: Stack) -> dict[str, str]:
    """Prometheus's `up` per pipeline instance."""
    response = httpx.get(
        f"http://127.0.0.1:{stack.ports['PROMETHEUS_PORT']}/api/v1/query",
        params={"query": 'up{job="tideflow"}'},
        timeout=10,
    )
    results = response.json()["data"]["result"]
    return {r["metric"]["instance"].split(":")[0]: r["value"][1] for r in results}


def in_container(stack: Stack, service: str, url: str) -> int:
    """HTTP status of ``url`` asked from inside ``service``'s container."""
    probe = (
        "import sys, urllib.request, urllib.error\n"
        "try:\n"
        f"    sys.exit(urllib.request.urlopen({url!r}, timeout=5).status)\n"
        "except urllib.error.HTTPError as e:\n"
        "    sys.exit(e.code % 256)\n"
    )
    result = stack.podman("exec", stack.container(service), "python3", "-c", probe)
    return {200: 200, 503 % 256: 503}.get(result.returncode, result.returncode)


def test_rooms_stack_is_exact_and_survives_a_killed_worker(stack: Stack) -> None:
    started = time.monotonic()
    first = generated(FIRST)
    # The producer is a batch job: it publishes and exits 0.
    code = wait_for(
        lambda: (
            stack.inspect("producer", "{{.State.Status}} {{.State.ExitCode}}").startswith("exited")
            and stack.inspect("producer", "{{.State.ExitCode}}")
        ),
        "the producer to finish",
        stack,
    )
    assert code == "0", stack.podman("logs", stack.container("producer")).stderr
    wait_for(lambda: archived(stack, first), "1,000 Parquet rows on S3", stack)
    wait_for(lambda: totals_equal(stack, expected_totals(first)), "exact totals", stack)

    # Prometheus scrapes every pipeline that runs (the producer has ended: down).
    def all_up() -> dict[str, str] | None:
        ups = scraped(stack)
        return ups if all(ups.get(p) == "1" for p in PIPELINES[1:]) else None

    ups = wait_for(all_up, "Prometheus to scrape every running pipeline", stack)
    assert ups.get("producer") == "0", ups
    # The project's alert rules (deploy/prometheus/alerts.yaml), when there are any, load.
    if ALERTS.exists():
        rules = httpx.get(
            f"http://127.0.0.1:{stack.ports['PROMETHEUS_PORT']}/api/v1/rules", timeout=10
        ).json()["data"]["groups"]
        assert rules, "Prometheus loaded no rule group from deploy/prometheus/alerts.yaml"
    # The UI answers with its token; the image's HEALTHCHECK passes in every pipeline.
    ui = httpx.get(
        f"http://127.0.0.1:{stack.ports['UI_PORT']}/api/health",
        headers={"Authorization": f"Bearer {stack.token}"},
        timeout=10,
    )
    assert ui.status_code == 200, ui.text
    for service in ["coldstorage-0", "reckoning-0", "reckoning-1", "ui"]:
        check = stack.podman("healthcheck", "run", stack.container(service))
        assert check.returncode == 0, f"{service}: {check.stdout}{check.stderr}"
    assert in_container(stack, "reckoning-0", "http://127.0.0.1:8081/readyz") == 200
    # Logs are JSON lines naming the pipeline and the worker.
    for line in stack.log_lines("reckoning-0"):
        record = orjson.loads(line)
        assert record["pipeline"] == "rooms-reckoning" and record["worker"] == "reckoning-0"
    settled = time.monotonic() - started

    # Kill one worker as a crash would (SIGKILL to its process), and publish 1,000 more
    # counts while it is down and restarting.
    pid = int(stack.inspect("reckoning-1", "{{.State.Pid}}"))
    os.kill(pid, signal.SIGKILL)
    more = stack.compose("run", "--rm", "-e", f"COUNT={SECOND}", "producer")
    assert more.returncode == 0, f"{more.stdout}\n{more.stderr}"

    def restarted() -> str | None:
        count, status = stack.inspect("reckoning-1", "{{.RestartCount}} {{.State.Status}}").split()
        return count if status == "running" and int(count) >= 1 else None

    restarts = wait_for(restarted, "podman to restart the killed worker", stack)
    both = generated(SECOND)
    wait_for(lambda: archived(stack, both), "2,000 Parquet rows on S3", stack)
    wait_for(lambda: totals_equal(stack, expected_totals(both)), "exact totals again", stack)
    # The survivor may have read everything before the group gave the restarted worker its
    # partitions back: until then its /readyz rightly answers 503 (waits for its partitions).
    wait_for(
        lambda: in_container(stack, "reckoning-1", "http://127.0.0.1:8081/readyz") == 200,
        "the restarted worker to be ready (its partitions assigned)",
        stack,
    )
    resumed = [orjson.loads(line)["message"] for line in stack.log_lines("reckoning-1")]
    assert sum("took partitions" in m for m in resumed) >= 2, resumed  # before and after
    recovered = time.monotonic() - started - settled

    # SIGTERM (podman stop, 30 s before SIGKILL) ends a worker with its final checkpoint.
    stopping = time.monotonic()
    stopped = stack.podman("stop", "--time", "30", stack.container("reckoning-0"))
    took = time.monotonic() - stopping
    assert stopped.returncode == 0, stopped.stderr
    assert stack.inspect("reckoning-0", "{{.State.ExitCode}}") == "0"  # 137: it was killed
    last = [orjson.loads(line)["message"] for line in stack.log_lines("reckoning-0")]
    assert any(m.startswith("stopped: final checkpoint") for m in last), last[-5:]
    print(  # the figures the report quotes (pytest -s)
        f"stack settled in {settled:.0f} s; after the kill ({restarts} restart) exact again "
        f"in {recovered:.0f} s; podman stop of a worker took {took:.1f} s"
    )


def test_local_override_changes_the_workers_command_only_for_tansu() -> None:
    """The workers run exactly the users' command line; the override only adds tansu's
    rebalance setting (see compose.local.yaml)."""
    from ruamel.yaml import YAML

    base = YAML(typ="safe").load((STACK / "compose.yaml").read_text())["services"]
    local = YAML(typ="safe").load((STACK / "compose.local.yaml").read_text())["services"]
    for worker in ("reckoning-0", "reckoning-1"):
        assert local[worker]["command"] == [
            *base[worker]["command"],
            "--set",
            "source.options={max.poll.interval.ms: 15000}",
        ]

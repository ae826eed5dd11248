"""Workers on two hosts (issue 15 item 4): each worker a plain ``tideflow run --worker-id``
process in a network namespace of its own, reaching Kafka (tansu) and the PostgreSQL state
store and sink over a veth pair, as workers on two machines would. One worker is killed with
SIGKILL mid-run and started again (as its host's service manager would); both hosts' bounded
runs must end with the exact totals of an independent ``group_by`` of every published event,
and every partition checkpointed in the shared state store.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from polars.testing import assert_frame_equal
from tests.conftest import tansu_broker
from tests.scaleout.test_rooms_trials import pg_totals
from tests.topics import test_workers
from tests.topics.test_workers import oracle, owners, prepare, wait_for

COUNT = 1600


@dataclass
class Host:
    """A network namespace joined to this machine by a veth pair."""

    namespace: str
    address: str
    """The namespace's own address."""
    gateway: str
    """This machine's end of the pair: what the host reaches this machine's services at."""

    def command(self, *args: str) -> list[str]:
        """``args`` run inside the namespace."""
        return ["ip", "netns", "exec", self.namespace, *args]


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@contextlib.contextmanager
def hosts(count: int) -> Iterator[list[Host]]:
    """``count`` namespaces, each with a veth pair to this machine and a default route
    through it; removed afterwards. Fails in CI (and skips elsewhere) when namespaces cannot
    be made here."""
    tag = uuid.uuid4().hex[:6]
    net = 64 + os.getpid() % 128  # apart from another test run's namespaces on this machine
    made: list[Host] = []
    try:
        for i in range(count):
            name, outer, inner = f"tf{tag}h{i}", f"tf{tag}o{i}", f"tf{tag}i{i}"
            host = Host(name, f"10.{net}.{i}.2", f"10.{net}.{i}.1")
            try:
                ip("netns", "add", name)
            except (OSError, subprocess.CalledProcessError) as exc:
                why = getattr(exc, "stderr", "") or exc
                if os.environ.get("CI") == "true":
                    pytest.fail(f"network namespaces are needed in CI: {why}")
                pytest.skip(f"no network namespaces here: {why}")
            made.append(host)
            ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            ip("link", "set", inner, "netns", name)
            ip("addr", "add", f"{host.gateway}/30", "dev", outer)
            ip("link", "set", outer, "up")
            for args in (
                ["addr", "add", f"{host.address}/30", "dev", inner],
                ["link", "set", inner, "up"],
                ["link", "set", "lo", "up"],
                ["route", "add", "default", "via", host.gateway],
            ):
                ip("netns", "exec", name, "ip", *args)
        yield made
    finally:
        for host in made:  # deleting a namespace deletes its end of the pair, and so both
            subprocess.run(["ip", "netns", "del", host.namespace], check=False)


@contextlib.contextmanager
def forwarded(listen: str, target: tuple[str, int]) -> Iterator[int]:
    """Accept TCP connections on a free port of ``listen`` and relay each to ``target``;
    the port. (PostgreSQL here listens on loopback only, which a namespace does not share.)"""
    server = socket.create_server((listen, 0))
    stop = threading.Event()

    def pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            upstream = socket.create_connection(target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=pipe, args=(a, b), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        server.close()


def worker(
    host: Host, worker_id: str, folder: Path, env: dict[str, str], log: Path
) -> subprocess.Popen[bytes]:
    """``tideflow run reckoning.yaml --worker-id ID`` inside ``host``, its output to ``log``."""
    with log.open("a") as out:
        return subprocess.Popen(
            host.command(
                sys.executable,
                "-m",
                "tideflow",
                "-v",
                "run",
                "reckoning.yaml",
                "--worker-id",
                worker_id,
            ),
            cwd=folder,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def test_workers_on_two_hosts_one_killed_give_exact_totals(
    tmp_path: Path, postgres_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(test_workers, "COUNT", COUNT)  # what the oracle generates
    with contextlib.ExitStack() as stack:
        machines = stack.enter_context(hosts(2))
        gateway = machines[0].gateway  # every service is reached at this machine's address
        broker = stack.enter_context(tansu_broker(listen=gateway))
        pg_port = stack.enter_context(forwarded(gateway, ("127.0.0.1", 5432)))
        # The same database, as the hosts and as this machine reach it.
        remote_db = postgres_database.replace("127.0.0.1:5432", f"{gateway}:{pg_port}")
        assert remote_db != postgres_database, postgres_database
        environment = {"COUNT": str(COUNT), "KAFKA_BROKER": f"kafka://{broker}", "STATE": ""}
        folder = tmp_path / "rooms"
        prepare(folder, environment)  # publishes from this machine, over the same address
        env = {**os.environ, **environment, "STATE": remote_db, "DB_URL": remote_db}
        logs = [tmp_path / f"host{i}.log" for i in range(2)]
        ids = [f"host{i}-0" for i in range(2)]
        running = [
            worker(m, w, folder, env, log) for m, w, log in zip(machines, ids, logs, strict=True)
        ]
        stack.callback(lambda: [kill_tree(p) for p in running])
        # Both hosts hold partitions and have checkpointed some: the split is real.
        wait_for(
            lambda: len({owner for owner, _ in owners(folder, remote_db).values()}) == 2,
            240,
            "both hosts' workers to own partitions",
        )
        assert running[1].poll() is None, "host 1's worker ended before the kill"
        kill_tree(running[1])
        running[1].wait(10)
        running[1] = worker(machines[1], ids[1], folder, env, logs[1])  # its host restarts it
        codes = []
        for process, log in zip(running, logs, strict=True):
            try:
                codes.append(process.wait(timeout=300))
            except subprocess.TimeoutExpired:
                raise AssertionError(
                    f"{log.name}: did not end\n{log.read_text()[-4000:]}"
                ) from None
        for code, log in zip(codes, logs, strict=True):
            assert code == 0, f"{log.name}: exit {code}\n{log.read_text()[-4000:]}"
        expected = oracle(folder)
        assert expected["readings"].sum() == COUNT
        assert_frame_equal(pg_totals(postgres_database), expected, check_dtypes=False)
        held = owners(folder, postgres_database)
        assert len(held) == 3, held  # every partition checkpointed by the group
        assert max(epoch for _, epoch in held.values()) >= 2  # and one changed hands


def kill_tree(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL ``process`` (``ip netns exec`` becomes the worker) and any children."""
    with contextlib.suppress(psutil.NoSuchProcess):
        for child in psutil.Process(process.pid).children(recursive=True):
            child.send_signal(signal.SIGKILL)
        process.send_signal(signal.SIGKILL)

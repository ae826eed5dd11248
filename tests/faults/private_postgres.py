"""A PostgreSQL server of the test's own, started with initdb on a free port, so outage tests
can stop and start it without touching the shared server on :5432."""

from __future__ import annotations

import glob
import os
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivatePostgres:
    """initdb + pg_ctl as the ``postgres`` user (PostgreSQL refuses to run as root)."""

    def __init__(self) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
        if not bins:
            raise RuntimeError("no PostgreSQL server binaries under /usr/lib/postgresql")
        self.bin = Path(bins[-1])
        self.port = _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="tideflow-pg-"))
        shutil.chown(self.root, "postgres")
        self.data = self.root / "data"
        self._as_postgres(
            "initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync"
        )

    @property
    def url(self) -> str:
        """A connection URL for the ``postgres`` database."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, tool: str, *args: str) -> None:
        command = [str(self.bin / tool), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        """Start (or restart) the server and wait until it accepts connections."""
        # Log times in UTC, so that ready_at() reads them without guessing a time zone.
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c log_timezone=UTC"
        )
        self._as_postgres(
            "pg_ctl",
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.root / "log"),
            "-w",
            "start",
        )

    def ready_at(self) -> float:
        """When the server last began to accept connections (a Unix time), from its own log:
        the moment an outage ends, as clients can see it."""
        log = (self.root / "log").read_text(encoding="utf-8", errors="replace")
        stamps = re.findall(
            r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) UTC .*ready to accept connections",
            log,
            flags=re.MULTILINE,
        )
        if not stamps:
            raise AssertionError(f"the server's log says nowhere it is ready:\n{log[-2000:]}")
        moment = datetime.strptime(stamps[-1], "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)
        return moment.timestamp()

    def stop(self) -> None:
        """Stop the server at once, as a crash or a network cut would end it."""
        self._as_postgres("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def destroy(self) -> None:
        """Stop if running and delete the data directory."""
        subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                str(self.bin / "pg_ctl"),
                "-D",
                str(self.data),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
            capture_output=True,
            check=False,
            timeout=60,
        )
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """A started private server; fails in CI, skips elsewhere, when it cannot be started."""
    try:
        server = PrivatePostgres()
        server.start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"a private PostgreSQL server is needed in CI: {exc!r}")
        pytest.skip(f"cannot start a private PostgreSQL server: {exc!r}")
    yield server
    server.destroy()

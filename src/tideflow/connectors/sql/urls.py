"""Database URLs in the SQLAlchemy style, parsed once into what each driver needs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from pydantic import Field

from tideflow.core.retry import RetryPolicy
from tideflow.core.settings import Settings
from tideflow.errors import ConfigError
from tideflow.secrets import redact, register_secret

SCHEMES = {
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "mysql": "mysql",
    "mariadb": "mysql",
    "sqlite": "sqlite",
    "duckdb": "duckdb",
}
"""URL scheme (before any ``+driver`` suffix) -> dialect name."""


class DatabaseSettings(Settings):
    """What the ``sql`` source and sink share: where the database is, how to wait it out."""

    url: str = Field(
        description="Database URL: postgresql://user:pass@host/db, mysql://root@host/db, "
        "sqlite:///file.db or duckdb:///file.duckdb (relative to the pipeline file)."
    )
    retry: RetryPolicy = Field(
        default_factory=RetryPolicy,
        description="Retries through a database outage (backoff with jitter).",
    )


@dataclass(frozen=True)
class DatabaseUrl:
    """A parsed database URL. ``path`` is the database file for SQLite and DuckDB."""

    dialect: str
    raw: str
    host: str
    port: int | None
    user: str
    password: str
    database: str
    path: str
    options: dict[str, str]

    def __repr__(self) -> str:
        return f"DatabaseUrl({redact(self.raw)!r})"

    @property
    def libpq(self) -> str:
        """The URL as libpq accepts it (PostgreSQL drivers)."""
        return "postgresql://" + self.raw.split("://", 1)[1]


def parse_url(url: str, base_dir: Path) -> DatabaseUrl:
    """Parse ``url``; relative SQLite/DuckDB file paths resolve against ``base_dir``.

    ``sqlite:///data.db`` is relative, ``sqlite:////tmp/data.db`` absolute, and
    ``sqlite://`` / ``duckdb://`` alone an in-memory database.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigError(
            f"database URL {redact(url)!r} has no scheme; expected e.g. "
            "postgresql://user@host/db, mysql://root@127.0.0.1/db, sqlite:///file.db"
        )
    dialect = SCHEMES.get(scheme.split("+", 1)[0].lower())
    if dialect is None:
        raise ConfigError(
            f"unsupported database {scheme!r} in URL; supported: " + ", ".join(sorted(set(SCHEMES)))
        )
    parts = urlsplit(f"x://{rest}")
    password = unquote(parts.password or "")
    if password:
        register_secret(password)
    path = ""
    if dialect in ("sqlite", "duckdb"):
        # Everything after the third slash is the file path (a fourth makes it absolute).
        file = rest.split("?", 1)[0]
        file = file[1:] if file.startswith("/") else file
        path = ":memory:" if file in ("", ":memory:") else str(base_dir / file)
    return DatabaseUrl(
        dialect=dialect,
        raw=url,
        host=parts.hostname or "127.0.0.1",
        port=parts.port,
        user=unquote(parts.username or ""),
        password=password,
        database=parts.path.lstrip("/"),
        path=path,
        options=dict(parse_qsl(parts.query)),
    )

"""What the pipelines of a server may do: its policy.

Anyone who can reach the API can write a pipeline and start it, so without limits API access
is code execution (a ``python`` step names any importable function) and file access (a
``file`` source on ``/etc/passwd``, DuckDB's ``read_csv`` inside a ``sql`` step). By default
``tideflow serve`` therefore refuses:

- ``python`` steps (``--allow-python`` allows them);
- local files outside the pipelines folder, for ``file`` sources and sinks, SQLite and DuckDB
  database files, and the ``state:`` store (``--allow-path DIR`` adds a folder; ``/`` allows
  every path); fsspec URLs other than object stores (``s3://``, ``gs://``, ``az://``), whose
  protocols can wrap local files (``zip://``, ``simplecache::``);
- SQL that reaches files by itself (``--allow-sql-files`` allows it): DuckDB runs with
  ``enable_external_access = false`` (no ``read_csv``/``read_parquet``, ``ATTACH``, ``COPY``,
  extension installs), Polars SQL may not name its file readers (``read_csv(...)``), and SQLite
  queries may not ``ATTACH`` or ``VACUUM INTO``.

The check runs where the server validates a pipeline (create, update, validate, and every
file it lists, so a file put in the folder by hand is held to the same rules) and again in
the run process, which also applies the DuckDB setting (:mod:`tideflow.sandbox`). Plain
``tideflow run`` applies none of this: its user runs their own files.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tideflow.errors import ConfigIssue
from tideflow.spec.loader import parse_yaml

OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})
"""fsspec protocols of remote object stores: allowed, they reach no local file."""
_GLOB = re.compile(r"[*?\[{]")
_FILE_READERS = re.compile(
    r"\bread_(csv|parquet|json|ndjson|ipc|delta|excel|avro|database)\b", re.IGNORECASE
)
_SQLITE_FILES = re.compile(r"\b(attach|vacuum)\b", re.IGNORECASE)

Where = tuple[str | int, ...]


@dataclass(frozen=True)
class Policy:
    """The limits a server puts on its pipelines (see the module's documentation)."""

    allow_python: bool = False
    paths: tuple[Path, ...] = field(default_factory=tuple)
    """Folders besides the pipelines folder whose files pipelines may use."""
    allow_sql_files: bool = False

    @classmethod
    def unrestricted(cls) -> Policy:
        """A policy that allows everything (every flag given, ``--allow-path /``)."""
        return cls(allow_python=True, paths=(Path("/"),), allow_sql_files=True)

    def flags(self) -> str:
        """The command-line flags that give this policy, for messages."""
        found = ["--allow-python"] if self.allow_python else []
        found += [f"--allow-path {p}" for p in self.paths]
        found += ["--allow-sql-files"] if self.allow_sql_files else []
        return " ".join(found) or "(none: the defaults)"

    def issues(
        self, spec: Any, text: str | None, file: str | None, folder: Path
    ) -> list[ConfigIssue]:
        """Everything in ``spec`` (read from ``text``, for line numbers) that this policy
        refuses, as issues naming file, line and field."""
        loaded = parse_yaml(text, file) if text is not None else None
        found: list[ConfigIssue] = []

        def issue(where: Where, message: str) -> None:
            if loaded is not None:
                found.append(loaded.issue(where, message))
            else:
                found.append(ConfigIssue(".".join(map(str, where)), message, file))

        roots = [folder.resolve(), *(p.expanduser().resolve() for p in self.paths)]
        for where, kind, node in _components(spec):
            for place, message in self._component(where, kind, node, folder, roots):
                issue(place, message)
        state = spec.state
        if state and "://" not in state:
            refused = self._path(state, folder, roots)
            if refused:
                issue(("state",), refused)
        return found

    def _component(
        self, where: Where, kind: str, node: Any, folder: Path, roots: list[Path]
    ) -> Iterator[tuple[Where, str]]:
        kind_type = (kind, node.type)
        if kind_type == ("step", "python") and not self.allow_python:
            yield (
                (*where, "function"),
                "python steps run any code on the server, so this server refuses them; "
                "start it with `tideflow serve --allow-python` to allow them",
            )
        if node.type == "file" and kind in ("source", "sink"):
            refused = self._path(str(node.path), folder, roots)
            if refused:
                yield (*where, "path"), refused
        if node.type == "sql" and kind in ("source", "sink"):
            yield from self._database(where, node, folder, roots)
        if kind == "step" and not self.allow_sql_files:
            if node.type == "sql" and node.engine == "duckdb":
                return  # DuckDB itself refuses files in the run (enable_external_access)
            for place, value in _strings(node.model_dump(), where):
                if _FILE_READERS.search(value):
                    yield (
                        place,
                        "SQL that reads files (read_csv, read_parquet, ...) is refused on "
                        "this server; start it with `--allow-sql-files` to allow it",
                    )

    def _database(
        self, where: Where, node: Any, folder: Path, roots: list[Path]
    ) -> Iterator[tuple[Where, str]]:
        from tideflow.connectors.sql.urls import parse_url

        try:
            url = parse_url(str(node.url), folder)
        except Exception:  # noqa: BLE001 - the URL's own validation reports it
            return
        if url.dialect not in ("sqlite", "duckdb") or url.path == ":memory:":
            return
        refused = self._path(url.path, folder, roots)
        if refused:
            yield (*where, "url"), refused
        query = str(getattr(node, "query", None) or "")
        if url.dialect == "sqlite" and not self.allow_sql_files and _SQLITE_FILES.search(query):
            yield (
                (*where, "query"),
                "SQLite ATTACH and VACUUM reach other files: refused on this server; "
                "start it with `--allow-sql-files` to allow them",
            )

    @staticmethod
    def _path(raw: str, folder: Path, roots: list[Path]) -> str | None:
        """Why a path is refused, or None when it lies inside an allowed folder."""
        if "::" in raw:
            return (
                f"{raw!r}: chained fsspec URLs can wrap local files and are refused on this server"
            )
        if "://" in raw:
            scheme, _, rest = raw.partition("://")
            if scheme.lower() in OBJECT_STORES:
                return None
            if scheme.lower() not in ("file", "local"):
                return (
                    f"{raw!r}: only local paths and object stores "
                    f"({', '.join(sorted(OBJECT_STORES))}) are allowed on this server"
                )
            raw = rest
        prefix = []
        for part in Path(os.path.expanduser(raw)).parts:
            if _GLOB.search(part):
                break  # a glob's fixed folder is what it can reach
            prefix.append(part)
        path = Path(*prefix) if prefix else Path(".")
        target = (path if path.is_absolute() else folder / path).resolve()
        if any(target == root or target.is_relative_to(root) for root in roots):
            return None
        return (
            f"{raw!r} is outside the pipelines folder; this server allows files only in "
            f"{', '.join(str(r) for r in roots)} (add a folder with `tideflow serve "
            "--allow-path DIR`)"
        )


def _components(spec: Any) -> Iterator[tuple[Where, str, Any]]:
    """(where in the file, kind, settings) of every source, step and sink, the dead-letter
    sink included."""
    for where, node in spec._located_nodes():
        group = str(where[0])
        kind = "step"
        if group.startswith("source"):
            kind = "source"
        elif group.startswith("sink"):
            kind = "sink"
        yield where, kind, node
    sink = spec.on_error.sink
    if sink is not None:
        yield ("on_error", "sink"), "sink", sink


def _strings(value: Any, where: Where) -> Iterator[tuple[Where, str]]:
    """Every string inside a settings dump, with where it is."""
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, (*where, str(key)))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _strings(item, (*where, i))

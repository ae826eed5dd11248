"""The folder of pipeline files the server manages.

A pipeline's id is its file name without ``.yaml``; the id is what URLs use, the ``name:``
inside is what keys its state. Files are re-read when their size or modification time
changes, so edits made outside the server are picked up without a restart.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tideflow.errors import ConfigError, ConfigIssue, TideflowError
from tideflow.secrets import MASK, redact
from tideflow.service.policy import Policy
from tideflow.spec.loader import load_pipeline_text
from tideflow.spec.models import NAME_PATTERN, PipelineSpec

ID_PATTERN = NAME_PATTERN
"""What a pipeline id (a file stem) may look like; no dots or slashes reach the disk."""
_ID = re.compile(ID_PATTERN)
MAX_PIPELINE_BYTES = 256 * 1024
"""Largest pipeline file accepted through the API."""


class NotFound(TideflowError):
    """No pipeline, run or step with that name."""


class Conflict(TideflowError):
    """The request clashes with the current state (a run is active, the id is taken)."""


def issue_json(issue: ConfigIssue) -> dict[str, Any]:
    """A validation issue as structured JSON."""
    return {
        "file": issue.file,
        "line": issue.line,
        "path": issue.path,
        "message": redact(issue.message),
    }


@dataclass
class Entry:
    """One pipeline file, validated."""

    id: str
    path: Path
    text: str
    spec: PipelineSpec | None
    issues: list[dict[str, Any]] = field(default_factory=list)
    stamp: tuple[float, int] = (0.0, 0)
    _bounded: bool | None = None

    @property
    def name(self) -> str:
        """The pipeline's ``name:`` (the id when the file does not validate)."""
        return self.spec.name if self.spec is not None else self.id

    @property
    def bounded(self) -> bool:
        """True when every source ends by itself (only such pipelines can be scheduled)."""
        if self._bounded is None:
            self._bounded = bool(self.spec is not None and self._all_sources_bounded())
        return self._bounded

    def _all_sources_bounded(self) -> bool:
        from tideflow.registry import default_registry
        from tideflow.spec.graph import build_graph

        try:
            graph = build_graph(self.spec, default_registry)
        except Exception:  # noqa: BLE001 - a spec that cannot be built is not schedulable
            return False
        return all(node.component.bounded for node in graph.sources)

    def graph(self) -> list[dict[str, Any]]:
        """Nodes in declared (topological) order with their inputs, for the UI's step graph."""
        if self.spec is None:
            return []
        from tideflow.registry import default_registry
        from tideflow.spec.graph import build_graph

        graph = build_graph(self.spec, default_registry)
        return [
            {
                "name": node.name,
                "kind": node.kind,
                "type": node.type_name,
                "inputs": [n if p == "out" else f"{n}.{p}" for n, p in node.inputs],
            }
            for node in graph.nodes
        ]


def validate_text(
    text: str,
    file: str | None,
    policy: Policy | None = None,
    folder: Path | None = None,
) -> tuple[PipelineSpec | None, list[dict[str, Any]]]:
    """Validate pipeline text, then hold it to the server's ``policy`` (files relative to
    ``folder``); the spec, or None and every issue as JSON."""
    try:
        spec = load_pipeline_text(text, file)
    except ConfigError as exc:
        return None, [issue_json(issue) for issue in exc.issues]
    if policy is not None:
        refused = policy.issues(spec, text, file, folder or Path("."))
        if refused:
            return None, [issue_json(issue) for issue in refused]
    return spec, []


class Catalog:
    """The pipelines of one folder, each held to the server's policy (a file the policy
    refuses is listed as invalid, with why); safe to use from several threads."""

    def __init__(self, folder: str | Path, policy: Policy | None = None) -> None:
        self.policy = policy if policy is not None else Policy()
        self.folder = Path(folder).resolve()
        self.folder.mkdir(parents=True, exist_ok=True)
        self._entries: dict[str, Entry] = {}
        self._lock = threading.Lock()

    def validate(
        self, text: str, file: str | None
    ) -> tuple[PipelineSpec | None, list[dict[str, Any]]]:
        """Validate text as a pipeline of this folder, under the server's policy."""
        return validate_text(text, file, self.policy, self.folder)

    def path_of(self, pid: str) -> Path:
        """The file of pipeline ``pid``; refuses ids that could leave the folder."""
        if not _ID.fullmatch(pid):
            raise NotFound(f"{pid!r} is not a pipeline id (letters, digits, `_` and `-`)")
        return self.folder / f"{pid}.yaml"

    def entries(self) -> list[Entry]:
        """Every pipeline file of the folder, re-validated when it changed on disk."""
        paths = sorted(p for p in self.folder.glob("*.yaml") if _ID.fullmatch(p.stem))
        with self._lock:
            seen = set()
            for path in paths:
                seen.add(path.stem)
                self._refresh(path)
            for gone in set(self._entries) - seen:
                del self._entries[gone]
            return [self._entries[p.stem] for p in paths if p.stem in self._entries]

    def _refresh(self, path: Path) -> None:
        try:
            stat = path.stat()
        except OSError:
            return
        stamp = (stat.st_mtime, stat.st_size)
        have = self._entries.get(path.stem)
        if have is not None and have.stamp == stamp:
            return
        text = path.read_text(encoding="utf-8", errors="replace")
        spec, issues = self.validate(text, path.name)
        self._entries[path.stem] = Entry(path.stem, path, text, spec, issues, stamp)

    def get(self, pid: str) -> Entry:
        """One pipeline, or :class:`NotFound`."""
        path = self.path_of(pid)
        with self._lock:
            if path.exists():
                self._refresh(path)
            entry = self._entries.get(pid)
        if entry is None or not path.exists():
            raise NotFound(f"no pipeline {pid!r} in {self.folder.name}/")
        return entry

    def save(self, pid: str, text: str, create: bool) -> Entry:
        """Validate and write a pipeline file; invalid text is refused with its issues.

        Shown files are redacted, so text that still holds the mask where the stored file
        has a secret would overwrite the secret with ``***``: that is refused too.
        """
        path = self.path_of(pid)
        if len(text.encode("utf-8")) > MAX_PIPELINE_BYTES:
            raise ConfigError(f"a pipeline file may hold at most {MAX_PIPELINE_BYTES} bytes")
        if create and path.exists():
            raise Conflict(f"pipeline {pid!r} exists already; update it with PUT")
        if not create and not path.exists():
            raise NotFound(f"no pipeline {pid!r}; create it with POST /api/pipelines")
        if not create and MASK in text:
            old = path.read_text(encoding="utf-8", errors="replace")
            if redact(old) != old:
                raise ConfigError(
                    [
                        ConfigIssue(
                            "",
                            f"the text holds {MASK} where the file has a secret; write "
                            "secrets as ${VARIABLE} references instead of literal values",
                            path.name,
                        )
                    ]
                )
        spec, issues = self.validate(text, path.name)
        if spec is None:
            raise ConfigError(
                [ConfigIssue(i["path"], i["message"], i["file"], i["line"]) for i in issues]
            )
        tmp = path.with_suffix(".yaml.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)  # a reader never sees half a file
        with self._lock:
            self._entries.pop(pid, None)
        return self.get(pid)

    def delete(self, pid: str) -> None:
        """Remove a pipeline file (its state and history stay in the state store)."""
        path = self.path_of(pid)
        if not path.exists():
            raise NotFound(f"no pipeline {pid!r}")
        path.unlink()
        with self._lock:
            self._entries.pop(pid, None)

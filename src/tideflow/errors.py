"""The one exception tree of tideflow.

::

    TideflowError                 anything tideflow raises on purpose
    ├── ConfigError               the pipeline file or a setting is wrong (CLI exit code 2)
    │   ├── UnknownNameError      an unknown ``type`` or key, with "did you mean"
    │   └── StateLostError        no state, but output of earlier runs: the run would repeat it
    ├── MissingDependencyError    an optional extra is not installed (names the pip command)
    ├── PipelineError             the run failed (CLI exit code 1)
    │   ├── TransientError        worth retrying: a connection dropped, a server said 503
    │   ├── TerminalError         retrying cannot help: bad credentials, a missing table
    │   └── RecordError           one record cannot be processed; it is dead-lettered
    └── StateError                the state store is unreadable or belongs to another pipeline

Every message is written for the person who has to fix the problem: where (file, line, field
path), what was expected, what was found, and what to do.
"""

from __future__ import annotations

import difflib
import importlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from types import ModuleType


class TideflowError(Exception):
    """Base class of every error tideflow raises on purpose."""


_PLAIN_KEY = re.compile(r"[^\s.\[\]'\"]+")


def render_path(path: tuple[str | int, ...]) -> str:
    """``('steps', 2, 'expr')`` -> ``steps[2].expr``; keys that are empty or hold
    separators or spaces are quoted, so every path names its field unambiguously."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = str(part)
            if not _PLAIN_KEY.fullmatch(text):
                text = repr(text)
            out += ("." if out else "") + text
    return out


@dataclass(frozen=True)
class ConfigIssue:
    """One problem found in a pipeline file: where it is and what is wrong."""

    path: str
    message: str
    file: str | None = None
    line: int | None = None

    def render(self) -> str:
        """Format as ``file:line: path: message``, leaving out what is unknown."""
        where = ""
        if self.file:
            where = self.file + (f":{self.line}" if self.line else "") + ": "
        elif self.line:
            where = f"line {self.line}: "
        field = f"{self.path}: " if self.path else ""
        return f"{where}{field}{self.message}"


class ConfigError(TideflowError):
    """The pipeline configuration is invalid; carries every issue found, not just the first."""

    def __init__(self, issues: list[ConfigIssue] | str) -> None:
        if isinstance(issues, str):
            issues = [ConfigIssue(path="", message=issues)]
        self.issues = issues
        super().__init__("\n".join(issue.render() for issue in issues))


class UnknownNameError(ConfigError):
    """An unknown component type or key; the message suggests the closest valid name."""


class StateLostError(ConfigError):
    """The state store holds nothing of a pipeline whose sinks hold output of earlier runs:
    its state was lost (deleted, emptied), and a run would read its input again from the
    start. Refused before anything is read or written; the message names the ways on."""


class SourceMovedError(ConfigError):
    """A source's stored positions are offsets in another system than the one it reads now
    (the embedded log was deleted and created anew, the broker setting points at another
    Kafka cluster): resuming would skip or repeat records. Refused before anything is read;
    the message names the ways on."""


class PartitioningError(ConfigError):
    """A record breaks the partitioning its source declares (``partitioned_by``): the
    topic's records of one key are in more than one partition, so keyed state split between
    workers would be wrong. The run stops at that record; a restart cannot fix it."""


class MissingDependencyError(TideflowError):
    """An optional dependency is missing; the message names the extra to install."""

    def __init__(self, module: str, extra: str) -> None:
        super().__init__(
            f"this feature needs the Python package {module!r}, which is not installed; "
            f'install it with: pip install "tideflow[{extra}]"'
        )


def require(module: str, extra: str, package: str | None = None) -> ModuleType:
    """Import ``module``, which an optional extra installs, and return it.

    When it cannot be imported, raise :class:`MissingDependencyError` naming ``package``
    (the name to ``pip install``, when it differs from the module that is missing; by
    default the module the import error names, else ``module``) and ``extra``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(package or exc.name or module, extra) from exc


class PipelineError(TideflowError):
    """A pipeline run failed."""


class TransientError(PipelineError):
    """A failure that may go away on retry (network blip, overloaded server)."""


class TerminalError(PipelineError):
    """A failure that retrying cannot fix (bad credentials, missing permissions)."""


class RecordError(PipelineError):
    """One record could not be processed; the engine dead-letters it with this message."""


class StateError(TideflowError):
    """The state store cannot be read, or does not match the pipeline."""


def suggest(name: str, known: Iterable[str]) -> str:
    """A "did you mean" hint listing the closest known names, or all of them if none is close."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    if close:
        return "did you mean " + " or ".join(repr(c) for c in close) + "?"
    return "valid names: " + ", ".join(known)

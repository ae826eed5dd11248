"""What a command's PIPELINE argument names: a pipeline file, or a pipeline by name.

A name is looked up in the current folder: a pipeline file there whose ``name:`` it is, else
a pipeline the folder's state store knows (it ran there from Python, e.g. a Stream
processor ``<stream>-<processor>``, with no file at all; the stream's name alone stands for
its processor when it has exactly one). ``--state-dir`` names another folder's ``.tideflow``
to look in instead. Commands that only read or reset
state (``tideflow state``, ``tideflow deadletters list|show``) work with either; commands
that run the pipeline need its file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from tideflow.errors import ConfigError
from tideflow.spec.loader import load_pipeline
from tideflow.spec.models import PipelineSpec

_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class Target:
    """A pipeline a command acts on: its name, where its state lives, and its spec when it
    has a file."""

    name: str
    state: str | None
    base: Path
    spec: PipelineSpec | None = None


def _looks_like_a_path(text: str) -> bool:
    return text.endswith(_SUFFIXES) or "/" in text or "\\" in text


def _declared_name(path: Path) -> str | None:
    """The ``name:`` of a pipeline file, without validating the rest (None if unreadable)."""
    try:
        data = YAML(typ="safe").load(path.read_text(encoding="utf-8"))
    except (OSError, YAMLError, UnicodeDecodeError):
        return None
    name = data.get("name") if isinstance(data, dict) else None
    return name if isinstance(name, str) else None


def _known_here(state_dir: Path) -> list[str]:
    """Pipelines the state store in ``state_dir`` knows (none when it has no store)."""
    path = state_dir / "state.db"
    if not path.is_file():
        return []
    from tideflow.state.store import StateStore

    store = StateStore(path)
    try:
        return store.pipelines()
    finally:
        store.close()


def resolve(
    argument: str, overrides: Mapping[str, str] | None = None, state_dir: Path | None = None
) -> Target:
    """The pipeline ``argument`` names: a file path, or a pipeline name known in the current
    folder (unambiguously). ``state_dir`` (a ``.tideflow`` folder) looks the name up there
    instead: among the pipeline files beside it and the pipelines its state store knows."""
    path = Path(argument)
    if path.is_file() or _looks_like_a_path(argument):
        spec = load_pipeline(argument, overrides)  # a missing file: the loader's own message
        return Target(spec.name, spec.state, path.resolve().parent, spec)
    if state_dir is not None and not state_dir.is_dir():
        raise ConfigError(f"--state-dir {state_dir}: no such folder")
    folder = Path.cwd() if state_dir is None else state_dir.resolve().parent
    store_dir = folder / ".tideflow" if state_dir is None else state_dir.resolve()
    files = sorted(
        p for p in folder.iterdir() if p.suffix in _SUFFIXES and _declared_name(p) == argument
    )
    if len(files) > 1:
        raise ConfigError(
            f"{argument!r} is the name of several pipeline files here "
            f"({', '.join(p.name for p in files)}); give the file instead"
        )
    if files:
        spec = load_pipeline(files[0], overrides)
        return Target(spec.name, spec.state, folder, spec)
    known = _known_here(store_dir)
    # A Stream's name stands for its processor when it has one: `<stream>-<processor>`.
    members = [k for k in known if k.startswith(argument + "-")]
    if argument not in known and len(members) > 1:
        raise ConfigError(
            f"{argument!r} is ambiguous here: it could be {', '.join(members)}; give one of them"
        )
    if argument in known or members:
        if overrides:
            raise ConfigError(f"{argument!r} has no pipeline file here to apply --set to")
        # The store's own file, wherever --state-dir points (not only a `.tideflow` folder).
        location = None if state_dir is None else str(store_dir / "state.db")
        return Target(argument if argument in known else members[0], location, folder)
    shown = ", ".join(known) if known else "none"
    hint = (
        "; give the pipeline file, or the folder of its state with --state-dir "
        "(e.g. --state-dir examples/iot/.tideflow)"
        if state_dir is None
        else ""
    )
    raise ConfigError(
        f"{argument!r}: no such pipeline file, and no pipeline of that name ran in {folder} "
        f"(pipelines known here: {shown}){hint}"
    )


def require_file(target: Target, argument: str) -> PipelineSpec:
    """The spec of a target that must have a pipeline file."""
    if target.spec is None:
        raise ConfigError(
            f"{argument!r} ran from Python (e.g. a Stream processor) and has no pipeline file "
            "here; by name, only `tideflow state show|reset` and `tideflow deadletters "
            "list|show` work"
        )
    return target.spec

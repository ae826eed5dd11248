"""Load a pipeline file: YAML with line numbers, ``${VAR}`` interpolation, overrides, validation.

Every problem becomes a :class:`ConfigIssue` naming the file, the line, the field path (as the
user wrote it, e.g. ``steps[2].expr``), what was expected, and for unknown names the closest
valid one. All issues are reported together.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.reader import ReaderError

from tideflow.core.contracts import Kind
from tideflow.errors import ConfigError, ConfigIssue, render_path, suggest
from tideflow.registry import Registry, default_registry
from tideflow.secrets import is_secret_field, looks_secret, redact, register_secret
from tideflow.spec.graph import check_graph
from tideflow.spec.models import (
    ENVELOPES,
    FieldIssue,
    PipelineSpec,
    component_model,
    pipeline_model,
)

Path_ = tuple[str | int, ...]
_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_LIST_KINDS: dict[str, Kind] = {"sources": "source", "steps": "step", "sinks": "sink"}
_SINGLE_KINDS: dict[str, Kind] = {"source": "source", "sink": "sink"}


class LoadedYaml:
    """Plain data from a YAML document plus the line of every key and list item."""

    def __init__(self, data: Any, lines: dict[Path_, int], file: str | None) -> None:
        self.data = data
        self.lines = lines
        self.file = file

    def line_of(self, path: Path_) -> int:
        """The line of the deepest known prefix of ``path``; line 1 for the document itself
        (where a missing top-level key belongs)."""
        for end in range(len(path), -1, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return 1

    def issue(self, path: Path_, message: str) -> ConfigIssue:
        """An issue located at ``path``."""
        return ConfigIssue(render_path(path), message, self.file, self.line_of(path))


MAX_VALUES = 100_000
"""The most keys, items and scalars a pipeline file may hold once its aliases are expanded."""


def parse_yaml(text: str, file: str | None = None) -> LoadedYaml:
    """Parse YAML text, keeping the line of every key and list item."""
    try:
        doc = YAML(typ="rt").load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark is not None else 1
        problem = exc.problem or "invalid YAML"
        raise ConfigError([ConfigIssue("", f"invalid YAML: {problem}", file, line)]) from None
    except ReaderError as exc:
        # Raised for characters YAML forbids (control characters, invalid UTF-8); it carries
        # an offset rather than a line.
        line = text[: exc.position].count("\n") + 1
        char = chr(exc.character) if isinstance(exc.character, int) else exc.character
        problem = f"invalid YAML: character {char!r} is not allowed in YAML text"
        raise ConfigError([ConfigIssue("", problem, file, line)]) from None
    except YAMLError as exc:
        raise ConfigError([ConfigIssue("", f"invalid YAML: {exc}", file, 1)]) from None
    except TypeError as exc:
        # ruamel raises this for a mapping used as a key (`? {a: b}: c`), which no pipeline
        # setting can be.
        problem = f"invalid YAML: a key must be a plain value, not a mapping or list ({exc})"
        raise ConfigError([ConfigIssue("", problem, file, 1)]) from None
    lines: dict[Path_, int] = {}
    budget = [MAX_VALUES]

    def plain(node: Any, path: Path_) -> Any:
        # Aliases are expanded here; a few nested ones can stand for billions of values
        # ("billion laughs"), so the expansion has a budget instead of exhausting memory.
        budget[0] -= 1
        if budget[0] < 0:
            raise ConfigError(
                [
                    ConfigIssue(
                        "",
                        f"the file expands to more than {MAX_VALUES:,} values; nested YAML "
                        "aliases (`*name`) multiply what they repeat — use fewer",
                        file,
                        None,
                    )
                ]
            )
        if isinstance(node, CommentedMap):
            out = {}
            for key, value in node.items():
                line, _ = node.lc.key(key)
                lines[(*path, str(key))] = line + 1
                out[str(key)] = plain(value, (*path, str(key)))
            return out
        if isinstance(node, CommentedSeq):
            items = []
            for i, value in enumerate(node):
                line, _ = node.lc.item(i)
                lines[(*path, i)] = line + 1
                items.append(plain(value, (*path, i)))
            return items
        if isinstance(node, bool) or node is None:
            return node
        if isinstance(node, int):
            return int(node)
        if isinstance(node, float):
            return float(node)
        if isinstance(node, str):
            return str(node)
        return node

    data = plain(doc, ())
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([ConfigIssue("", "a pipeline file must be a mapping of keys", file, 1)])
    return LoadedYaml(data, lines, file)


def interpolate(loaded: LoadedYaml, environ: Mapping[str, str] | None = None) -> list[ConfigIssue]:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string, in place.

    Values come from the environment, then the file's ``vars``, then the default. ``$$`` is a
    literal ``$``. Values of secret-looking variables are registered for redaction. An unset
    variable is left as written and is one issue each.
    """
    return _interpolate(loaded, environ)[0]


def _interpolate(
    loaded: LoadedYaml, environ: Mapping[str, str] | None
) -> tuple[list[ConfigIssue], set[Path_]]:
    """:func:`interpolate`, also returning the paths of the values left unset (their
    validation errors would only repeat that the variable is missing)."""
    env = os.environ if environ is None else environ
    issues: list[ConfigIssue] = []
    unset: set[Path_] = set()
    file_vars: dict[str, Any] = {}

    def substitute(text: str, path: Path_) -> str:
        def one(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            name, default = match.group(1), match.group(2)
            if name in env:
                value = env[name]
            elif name in file_vars:
                value = str(file_vars[name])
            elif default is not None:
                value = default
            else:
                unset.add(path)
                issues.append(
                    loaded.issue(
                        path,
                        f"${{{name}}} is not set; set the environment variable {name}, add it "
                        f"under `vars:`, or give a default with ${{{name}:-value}}",
                    )
                )
                return match.group(0)
            if looks_secret(name):
                register_secret(value)
            return value

        return _VAR.sub(one, text)

    def walk(node: Any, path: Path_) -> Any:
        if isinstance(node, dict):
            return {k: walk(v, (*path, k)) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, (*path, i)) for i, v in enumerate(node)]
        if isinstance(node, str) and "$" in node:
            node = substitute(node, path)
        if isinstance(node, str) and path and is_secret_field(str(path[-1])):
            register_secret(node)
        return node

    raw_vars = loaded.data.get("vars")
    if isinstance(raw_vars, dict):
        file_vars.update(walk(raw_vars, ("vars",)))
        loaded.data["vars"] = file_vars
    loaded.data = walk(loaded.data, ())
    return issues, unset


def apply_overrides(loaded: LoadedYaml, overrides: Mapping[str, str]) -> None:
    """Apply ``--set path=value`` overrides; values are parsed as YAML scalars.

    A path is dotted with list indices (``sinks[0].path``); a list element may also be chosen
    by its ``name`` or ``type`` (``steps.convert.expr``).
    """
    for dotted, raw in overrides.items():
        parts = _split_path(dotted)
        value = YAML(typ="safe").load(raw) if raw.strip() else ""
        node: Any = loaded.data
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                index = _list_index(node, part, dotted)
                if last:
                    node[index] = value
                else:
                    node = node[index]
            elif isinstance(node, dict):
                key = str(part)
                if last:
                    node[key] = value
                else:
                    node = node.setdefault(key, {})
            else:
                where = render_path(tuple(parts[:i]))
                raise ConfigError(f"--set {dotted}: {where} is not a mapping")


def _split_path(dotted: str) -> list[str | int]:
    parts: list[str | int] = []
    for piece in re.findall(r"[^.\[\]]+|\[\d+\]", dotted):
        parts.append(int(piece[1:-1]) if piece.startswith("[") else piece)
    if not parts:
        raise ConfigError(f"--set: empty path in {dotted!r}")
    return parts


def _list_index(items: list[Any], part: str | int, dotted: str) -> int:
    if isinstance(part, int) or str(part).isdigit():
        index = int(part)
        if index >= len(items):
            raise ConfigError(f"--set {dotted}: index {index} is past the end ({len(items)} items)")
        return index
    for i, item in enumerate(items):
        if isinstance(item, dict) and part in (item.get("name"), item.get("type")):
            return i
    names = [str(it.get("name") or it.get("type")) for it in items if isinstance(it, dict)]
    raise ConfigError(f"--set {dotted}: no element named {part!r}; {suggest(str(part), names)}")


def _known_keys(registry: Registry, data: Any, loc: Path_) -> tuple[Kind | None, list[str]]:
    """The component kind and valid keys of the mapping at ``loc`` (for "did you mean")."""
    top = pipeline_model(registry)
    if len(loc) == 0:
        return None, list(top.model_fields)
    head = loc[0]
    kind: Kind | None = None
    comp_path: Path_ = ()
    if head in _LIST_KINDS and len(loc) >= 2:
        kind, comp_path = _LIST_KINDS[str(head)], loc[:2]
    elif head in _SINGLE_KINDS:
        kind, comp_path = _SINGLE_KINDS[str(head)], loc[:1]
    elif head == "on_error" and len(loc) >= 2 and loc[1] == "sink":
        kind, comp_path = "sink", loc[:2]
    elif head in ("checkpoint", "on_error") and len(loc) == 1:
        return None, list(top.model_fields[str(head)].annotation.model_fields)  # type: ignore[union-attr]
    if kind is None or len(loc) != len(comp_path):
        return kind, []
    node = data
    for part in comp_path:
        node = node[part]
    type_name = node.get("type") if isinstance(node, dict) else None
    try:
        model: type[BaseModel] = component_model(registry, kind, str(type_name))
    except ConfigError:
        model = ENVELOPES[kind]
    return kind, list(model.model_fields)


def _user_loc(raw_loc: Path_) -> Path_:
    """A pydantic error location as the user wrote it: discriminated unions put the tag into
    the location, which no file holds."""
    return tuple(
        p
        for i, p in enumerate(raw_loc)
        if not (i > 0 and isinstance(p, str) and ":" not in p and _is_tag_position(raw_loc, i))
    )


def _placeholders(data: Any, paths: AbstractSet[Path_]) -> set[str]:
    """The ``${VAR}`` texts left in the values at ``paths`` (their variables are unset)."""
    found = set()
    for path in paths:
        node = data
        for part in path:
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):
                node = None
                break
        if isinstance(node, str):
            found |= {m.group(0) for m in _VAR.finditer(node) if m.group(0) != "$$"}
    return found


def _under(loc: Path_, paths: AbstractSet[Path_]) -> bool:
    """True when ``loc`` is one of ``paths`` or inside one of them."""
    return any(loc[: len(p)] == p for p in paths)


def _issues_from_validation(
    exc: ValidationError,
    loaded: LoadedYaml,
    registry: Registry,
    unset: AbstractSet[Path_] = frozenset(),
) -> list[ConfigIssue]:
    placeholders = _placeholders(loaded.data, unset)
    issues = []
    for err in exc.errors():
        raw_loc: Path_ = tuple(err["loc"])
        loc: Path_ = _user_loc(raw_loc)
        if _under(loc, unset):
            continue  # its variable is unset, which is reported already
        kind_word = {
            "sources": "source",
            "source": "source",
            "steps": "step",
            "sinks": "sink",
            "sink": "sink",
        }.get(str(loc[0]) if loc else "", "component")
        etype = err["type"]
        if etype == "extra_forbidden":
            key = str(loc[-1])
            _, known = _known_keys(registry, loaded.data, loc[:-1])
            hint = suggest(key, known) if known else ""
            message = f"unknown key {key!r}" + (f"; {hint}" if hint else "")
        elif etype == "union_tag_invalid":
            tag = err.get("ctx", {}).get("tag", "?")
            names = registry.items(_kind_of(kind_word))
            message = f"unknown {kind_word} type {tag!r}; {suggest(str(tag), names)}"
            loc = (*loc, "type")
        elif etype == "union_tag_not_found":
            names = registry.items(_kind_of(kind_word))
            message = f"missing `type`; expected one of: {', '.join(sorted(names))}"
        elif etype == "string_pattern_mismatch" and loc and loc[-1] == "name":
            message = (
                f"{_show(err.get('input'), loc)} is not a valid name: use letters, digits, "
                "`_` and `-`, starting with a letter or `_`"
            )
        elif etype == "missing":
            message = "required field is missing"
        elif etype in ("model_type", "dict_type", "model_attributes_type"):
            message = f"expected a mapping, got {_show(err.get('input'), loc)}"
        elif etype == "value_error" and isinstance(err.get("ctx", {}).get("error"), FieldIssue):
            issue = err["ctx"]["error"]
            loc = (*loc, *issue.path)
            message = str(issue)
        elif etype == "value_error" and not loc:
            message = str(err["msg"]).removeprefix("Value error, ")
        else:
            msg = str(err["msg"]).removeprefix("Value error, ")
            message = f"{msg}; got {_show(err.get('input'), loc)}"
        if placeholders and any(p in message.split("; got ")[0] for p in placeholders):
            continue  # a check of a mapping or list quoting an unset `${VAR}` it holds
        issues.append(loaded.issue(loc, redact(message)))
    return issues


def _kind_of(word: str) -> Kind:
    return word if word in ("source", "step", "sink") else "step"  # type: ignore[return-value]


def _is_tag_position(loc: Path_, i: int) -> bool:
    """True when ``loc[i]`` is the discriminator tag pydantic inserted into a location."""
    prev = loc[i - 1]
    if isinstance(prev, int) and i >= 2 and loc[i - 2] in _LIST_KINDS:
        return True
    if prev in _SINGLE_KINDS and i == 1:
        return True
    return prev == "sink" and i == 2 and loc[0] == "on_error"


def _secret_part(name: str) -> bool:
    """A field name whose value may be a secret: ``password``, ``api_key``, anything of
    ``auth``, and a bare ``key`` (s3fs's access key in ``storage_options``)."""
    return is_secret_field(name) or "auth" in name.lower() or name.lower() == "key"


def _show(value: Any, loc: Path_) -> str:
    # Fields that hold secrets by name (`password`, `api_key`), not every name containing
    # "key": `keys: country` is a column name, and hiding it makes the error unreadable.
    # Secrets interpolated from variables are masked by redact() below in any field.
    if any(isinstance(p, str) and _secret_part(p) for p in loc):
        return "<redacted>"
    text = repr(value)
    return redact(text if len(text) <= 80 else text[:77] + "...")


_SCALARS = (str, int, float, bool)


def _coerce_scalars_to_lists(exc: ValidationError, data: Any) -> bool:
    """Wrap each scalar given where a list is expected (`keys: country`) into a one-element
    list, in place; True when anything changed (the data is then validated again)."""
    changed = False
    for err in exc.errors():
        if err["type"] != "list_type" or not isinstance(err.get("input"), _SCALARS):
            continue
        loc = _user_loc(tuple(err["loc"]))
        if not loc:
            continue
        node = data
        for part in loc[:-1]:
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):
                node = None
                break
        last = loc[-1]
        holds = isinstance(node, dict) and last in node
        holds = holds or (isinstance(node, list) and isinstance(last, int) and last < len(node))
        if not holds or node is None:
            continue
        current = node[last]
        if isinstance(current, _SCALARS) and current == err["input"]:
            node[last] = [current]
            changed = True
    return changed


def _types_named(data: Any) -> set[str]:
    """Every ``type:`` string anywhere in the pipeline data (the components it uses)."""
    found: set[str] = set()
    stack = [data]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if isinstance(node.get("type"), str):
                found.add(node["type"])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def _validate_narrowed(registry: Registry, data: Any) -> PipelineSpec | None:
    """Validate with a model of only the component types the data names (quick to build);
    None when that fails, so that the full model reports the errors as it always has."""
    try:
        return pipeline_model(registry, only=_types_named(data)).model_validate(data)
    except ValidationError:
        return None


def _validate_full(
    registry: Registry, loaded: LoadedYaml, unset: AbstractSet[Path_], earlier: list[ConfigIssue]
) -> PipelineSpec:
    """Validate with the model of every registered type, wrapping scalars given for lists;
    raise every issue found."""
    model = pipeline_model(registry)
    # Each round wraps scalars given for lists; a nested list may need a second round.
    for _ in range(8):
        try:
            return model.model_validate(loaded.data)
        except ValidationError as exc:
            if _coerce_scalars_to_lists(exc, loaded.data):
                continue
            raise ConfigError(
                earlier + _issues_from_validation(exc, loaded, registry, unset)
            ) from None
    # Eight rounds of nested scalars is not a real file.
    raise ConfigError(earlier or "the file could not be validated")  # pragma: no cover


def validate(
    loaded: LoadedYaml,
    registry: Registry | None = None,
    unset: AbstractSet[Path_] = frozenset(),
    issues: list[ConfigIssue] | None = None,
) -> PipelineSpec:
    """Validate plain pipeline data into the typed model, or raise every issue found:
    ``issues`` found before (unset variables) come first, and the errors of the values at
    ``unset`` paths are left out."""
    registry = registry or default_registry
    earlier = list(issues or [])
    spec = _validate_narrowed(registry, loaded.data)
    if spec is None:
        spec = _validate_full(registry, loaded, unset, earlier)
    placeholders = _placeholders(loaded.data, unset)
    graph_issues = [
        (p, m)
        for p, m in check_graph(spec, registry)
        if not _under(p, unset) and not any(text in m for text in placeholders)
    ]
    if earlier or graph_issues:
        raise ConfigError(earlier + [loaded.issue(path, msg) for path, msg in graph_issues])
    return spec


def load_pipeline(
    path: str | Path,
    overrides: Mapping[str, str] | None = None,
    registry: Registry | None = None,
    environ: Mapping[str, str] | None = None,
) -> PipelineSpec:
    """Read, interpolate, override and validate a pipeline file."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        issue = ConfigIssue("", f"cannot read the pipeline file: {exc.strerror}", file)
        raise ConfigError([issue]) from None
    return load_pipeline_text(text, file, overrides, registry, environ)


def load_pipeline_text(
    text: str,
    file: str | None = None,
    overrides: Mapping[str, str] | None = None,
    registry: Registry | None = None,
    environ: Mapping[str, str] | None = None,
) -> PipelineSpec:
    """Like :func:`load_pipeline`, from text."""
    loaded = parse_yaml(text, file)
    # An unset variable does not stop the check: the rest of the file is validated too, so
    # every problem shows at once (the values left unset are not judged).
    issues, unset = _interpolate(loaded, environ)
    if overrides:
        apply_overrides(loaded, overrides)
    return validate(loaded, registry, unset, issues)


def spec_data(spec: PipelineSpec) -> dict[str, Any]:
    """The spec as plain data (names filled in), ready to edit and re-validate."""
    data = spec.model_dump(mode="json", exclude_none=True)
    for single, many in (("source", "sources"), ("sink", "sinks")):
        if single in data:
            data[many] = [data.pop(single)]
    return data


def revalidate(data: dict[str, Any], registry: Registry | None = None) -> PipelineSpec:
    """Validate edited spec data again."""
    return validate(LoadedYaml(data, {}, None), registry or default_registry)

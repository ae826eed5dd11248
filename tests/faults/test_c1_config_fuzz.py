"""C1: fuzz the pipeline-file loader with mutated valid pipelines and corrupted text.

Every case must load as a valid pipeline or raise a ConfigError whose every issue names the
file, a line and a field path (a YAML syntax error has a line but no field yet). Never another
exception: no traceback ever reaches a user.
"""

from __future__ import annotations

import copy
import io
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML
from tests.faults.oracle import trials

from tideflow.errors import ConfigError
from tideflow.spec.loader import MAX_VALUES, load_pipeline_text

EXAMPLES = Path(__file__).parents[2] / "examples"

BASES: list[dict[str, Any]] = [
    YAML(typ="safe").load((EXAMPLES / "quickstart" / "pipeline.yaml").read_text()),
    {
        "name": "files",
        "source": {"type": "file", "path": "in/*.csv", "batch_size": 100},
        "steps": [
            {"type": "cast", "name": "typed", "columns": {"v": "float64"}},
            {"type": "route", "name": "split", "routes": {"big": "v > 10"}, "default": "rest"},
            {"type": "python", "function": "m:f", "input": "split.big"},
        ],
        "sinks": [
            {"type": "file", "path": "out", "partition_by": ["k"], "input": "python"},
            {"type": "stdout", "input": "split.rest", "when": "v IS NOT NULL"},
        ],
        "checkpoint": {"every_records": 10, "every_seconds": 5},
        "on_error": "dead_letter",
        "vars": {"region": "eu"},
    },
]

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["${MISSING_VAR}", "${MISSING:-x}", "$${x}", "${", "generate", "file"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


def paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path and list index in ``doc``."""
    found = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            found += paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            found += paths(v, (*prefix, i))
    return found


def parent_of(doc: Any, path: tuple[Any, ...]) -> Any:
    for part in path[:-1]:
        doc = doc[part]
    return doc


@st.composite
def mutated_pipelines(draw: st.DrawFn) -> str:
    doc = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 4))):
        targets = [p for p in paths(doc) if p]
        if not targets:
            break
        path = draw(st.sampled_from(targets))
        parent, last = parent_of(doc, path), path[-1]
        action = draw(st.sampled_from(["delete", "replace", "rename", "typo"]))
        if action == "delete":
            del parent[last]
        elif action == "replace":
            parent[last] = draw(VALUES)
        elif action == "rename" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=12))] = parent.pop(last)
        elif action == "typo" and isinstance(parent[last], str) and parent[last]:
            text = parent[last]
            i = draw(st.integers(0, len(text) - 1))
            parent[last] = text[:i] + draw(st.characters()) + text[i + 1 :]
    buf = io.StringIO()
    YAML(typ="safe").dump(doc, buf)
    text = buf.getvalue()
    if draw(st.booleans()):  # corrupt the text itself
        for _ in range(draw(st.integers(1, 3))):
            i = draw(st.integers(0, len(text)))
            text = text[:i] + draw(st.text(max_size=3)) + text[i + draw(st.integers(0, 3)) :]
    return text


def check(text: str) -> None:
    """The loader's contract for any input text."""
    try:
        load_pipeline_text(text, "p.yaml", environ={})
    except ConfigError as exc:
        assert exc.issues, "a ConfigError must carry at least one issue"
        for issue in exc.issues:
            assert issue.file == "p.yaml", issue
            whole_file = issue.message.startswith(
                ("invalid YAML", "the file expands", "a pipeline")
            )
            if not whole_file:
                assert issue.path, f"no field path: {issue}"
            if not issue.message.startswith("the file expands"):
                assert issue.line is not None, f"no line: {issue}"


@settings(
    max_examples=trials(3_000, 50_000),  # 10,000 took 93 s of `make test`
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
@given(mutated_pipelines())
def test_c1_mutated_pipeline_files_give_located_config_errors(text: str) -> None:
    check(text)


@pytest.mark.parametrize("depth", [4, 6, 9])
def test_c1_yaml_alias_bombs_are_rejected(depth: int) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, depth):
        refs = ", ".join([f"*a{i - 1}"] * 10)
        lines.append(f"a{i}: &a{i} [{refs}]")
    text = "name: bomb\n" + "\n".join(lines) + "\n"
    expands = 10**depth > MAX_VALUES
    with pytest.raises(ConfigError) as info:
        load_pipeline_text(text, "p.yaml", environ={})
    message = str(info.value)
    assert ("expands to more than" in message) == expands, message


def test_c1_a_missing_variable_is_named() -> None:
    text = "name: x\nsource:\n  type: generate\n  count: ${ROWS_WANTED}\nsink: {type: stdout}\n"
    with pytest.raises(ConfigError) as info:
        load_pipeline_text(text, "p.yaml", environ={})
    assert "ROWS_WANTED" in str(info.value) and "p.yaml:4" in str(info.value)

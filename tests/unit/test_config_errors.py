"""A table of broken pipeline files and the exact error each must give."""

from __future__ import annotations

import pytest

from tideflow.errors import ConfigError
from tideflow.spec.loader import load_pipeline_text

GOOD_TAIL = "sink: {type: stdout}\n"

CASES = [
    (
        "unknown source type",
        "name: p\nsource:\n  type: generat\n" + GOOD_TAIL,
        ["p.yaml:3: source.type: unknown source type 'generat'; did you mean 'generate'?"],
    ),
    (
        "unknown step key",
        "name: p\nsource: {type: generate}\nsteps:\n  - type: filter\n    expr: a > 1\n"
        "    exprr: b\n" + GOOD_TAIL,
        ["p.yaml:6: steps[0].exprr: unknown key 'exprr'; did you mean 'expr'?"],
    ),
    (
        "missing required field",
        "name: p\nsource: {type: generate}\nsteps:\n  - type: filter\n" + GOOD_TAIL,
        ["p.yaml:4: steps[0].expr: required field is missing"],
    ),
    (
        "unknown top-level key",
        "name: p\nsource: {type: generate}\nchekpoint: {every_records: 5}\n" + GOOD_TAIL,
        ["p.yaml:3: chekpoint: unknown key 'chekpoint'; did you mean 'checkpoint'?"],
    ),
    (
        "wrong value type",
        "name: p\nsource:\n  type: generate\n  count: lots\n" + GOOD_TAIL,
        [
            "p.yaml:4: source.count: Input should be a valid integer, unable to parse string as "
            "an integer; got 'lots'"
        ],
    ),
    (
        "value out of range",
        "name: p\nsource: {type: generate}\ncheckpoint:\n  every_records: 0\n" + GOOD_TAIL,
        ["p.yaml:4: checkpoint.every_records: Input should be greater than 0; got 0"],
    ),
    (
        "unknown cast type",
        "name: p\nsource: {type: generate}\nsteps:\n  - type: cast\n    columns: {a: integr}\n"
        + GOOD_TAIL,
        [
            "p.yaml:5: steps[0].columns: unknown type 'integr'; did you mean 'int' or 'int8'?; "
            "got {'a': 'integr'}"
        ],
    ),
    (
        "input names nothing",
        "name: p\nsource: {type: generate}\nsink:\n  type: stdout\n  input: nowhere\n",
        ["p.yaml:5: sink.input: unknown input 'nowhere'; valid names: generate"],
    ),
    (
        "route step has no main output",
        "name: p\nsource: {type: generate}\nsteps:\n  - type: route\n    routes: {a: x > 1}\n"
        + GOOD_TAIL,
        [
            "p.yaml:6: sink: 'route' has no output 'out' (set `input:` to one of its outputs); "
            "it has: a"
        ],
    ),
    (
        "duplicate names",
        "name: p\nsource: {type: generate, name: a}\nsteps:\n  - {type: filter, name: a, "
        "expr: x}\n" + GOOD_TAIL,
        ["p.yaml:4: steps[0].name: two components are named 'a'; names must be unique"],
    ),
    (
        "control character",
        "name: p\nsource: {type: generate}\n\x08" + GOOD_TAIL,
        ["p.yaml:3: invalid YAML: character '\\x08' is not allowed in YAML text"],
    ),
    (
        "no sink",
        "name: p\nsource: {type: generate}\n",
        ["p.yaml:1: sink: give exactly one of `sink` or `sinks`"],
    ),
    (
        "invalid name",
        "name: my pipeline\nsource: {type: generate}\n" + GOOD_TAIL,
        [
            "p.yaml:1: name: 'my pipeline' is not a valid name: use letters, digits, `_` and `-`, "
            "starting with a letter or `_`"
        ],
    ),
    (
        "unset variable",
        "name: p\nsource:\n  type: file\n  path: ${INPUT_DIR}/x.csv\n" + GOOD_TAIL,
        [
            "p.yaml:4: source.path: ${INPUT_DIR} is not set; set the environment variable "
            "INPUT_DIR, add it under `vars:`, or give a default with ${INPUT_DIR:-value}"
        ],
    ),
    (
        "bad yaml",
        "name: p\nsource: [1\n",
        ["p.yaml:3: invalid YAML: expected ',' or ']', but got '<stream end>'"],
    ),
    (
        "not a mapping",
        "- just\n- a list\n",
        ["p.yaml:1: a pipeline file must be a mapping of keys"],
    ),
    (
        "bad filter expression",
        "name: p\nsource: {type: generate}\nsteps:\n  - {type: filter, expr: 'a >'}\n" + GOOD_TAIL,
        None,  # message comes from the SQL parser; checked for location below
    ),
]


@pytest.mark.parametrize(("title", "text", "expected"), CASES, ids=[c[0] for c in CASES])
def test_broken_file_gives_exact_error(title: str, text: str, expected: list[str] | None) -> None:
    with pytest.raises(ConfigError) as info:
        load_pipeline_text(text, "p.yaml", environ={})
    if expected is None:
        assert str(info.value).startswith("p.yaml:4: steps[0].expr: not a valid SQL expression (")
    else:
        assert str(info.value).splitlines() == expected


def test_all_issues_are_reported_together() -> None:
    text = (
        "name: p\nsource: {type: generat}\nsteps:\n  - {type: fliter, expr: x}\n"
        "sink: {type: stdout, formt: table}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_pipeline_text(text, "p.yaml")
    lines = str(info.value).splitlines()
    assert len(lines) == 3
    assert "did you mean 'generate'" in lines[0]
    assert "did you mean 'filter'" in lines[1]
    assert "did you mean 'format'" in lines[2]


def test_secret_values_never_appear_in_errors() -> None:
    text = "name: p\nsource:\n  type: generate\n  count: ${DB_PASSWORD}\n" + GOOD_TAIL
    with pytest.raises(ConfigError) as info:
        load_pipeline_text(text, "p.yaml", environ={"DB_PASSWORD": "hunter2-secret"})
    assert "hunter2-secret" not in str(info.value)
    assert "***" in str(info.value)

"""Pipeline file loading: interpolation, overrides, defaults, JSON Schema, Python API."""

from __future__ import annotations

from pathlib import Path

import pytest

import tideflow as tf
from tideflow.cli.docs import connector_reference, describe_component, pipeline_json_schema
from tideflow.errors import ConfigError
from tideflow.registry import default_registry
from tideflow.run.runner import spec_data
from tideflow.spec.loader import load_pipeline, load_pipeline_text

BASE = """
name: p
vars:
  threshold: 5
source:
  type: generate
  count: ${COUNT:-100}
steps:
  - type: filter
    name: big
    expr: "id > ${threshold}"
sinks:
  - type: stdout
  - type: stdout
    format: jsonl
"""


def test_interpolation_order_env_then_vars_then_default() -> None:
    spec = load_pipeline_text(BASE, environ={})
    assert spec.source is not None and spec.source.count == 100  # type: ignore[attr-defined]
    assert spec.steps[0].expr == "id > 5"  # type: ignore[attr-defined]
    spec = load_pipeline_text(BASE, environ={"COUNT": "7", "threshold": "9"})
    assert spec.source.count == 7  # type: ignore[union-attr,attr-defined]
    assert spec.steps[0].expr == "id > 9"  # type: ignore[attr-defined]


def test_dollar_dollar_is_a_literal_dollar() -> None:
    text = BASE.replace('"id > ${threshold}"', "\"name != '$${HOME}'\"")
    spec = load_pipeline_text(text, environ={})
    assert spec.steps[0].expr == "name != '${HOME}'"  # type: ignore[attr-defined]


def test_default_names_are_unique() -> None:
    spec = load_pipeline_text(BASE, environ={})
    assert [s.name for s in spec.all_sinks] == ["stdout", "stdout_2"]
    assert spec.all_sources[0].name == "generate"


def test_overrides_by_index_by_name_and_new_keys() -> None:
    spec = load_pipeline_text(
        BASE,
        environ={},
        overrides={
            "source.count": "3",
            "steps.big.expr": "id > 1",
            "sinks[1].format": "table",
            "checkpoint.every_records": "10",
        },
    )
    assert spec.source.count == 3  # type: ignore[union-attr,attr-defined]
    assert spec.steps[0].expr == "id > 1"  # type: ignore[attr-defined]
    assert spec.all_sinks[1].format == "table"  # type: ignore[attr-defined]
    assert spec.checkpoint.every_records == 10


def test_override_of_a_missing_element_names_the_choices() -> None:
    with pytest.raises(ConfigError, match="no element named 'bgi'; did you mean 'big'"):
        load_pipeline_text(BASE, environ={}, overrides={"steps.bgi.expr": "x"})


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the pipeline file"):
        load_pipeline(tmp_path / "nope.yaml")


def test_json_schema_covers_every_registered_component() -> None:
    schema = pipeline_json_schema()
    text = str(schema)
    for kind in ("source", "step", "sink"):
        for name in default_registry.items(kind):
            assert f"'const': '{name}'" in text, name
    assert schema["title"] == "tideflow pipeline"


def test_describe_lists_fields_with_types_defaults_and_docs() -> None:
    reg = default_registry.get("step", "cast")
    text = describe_component(reg)
    assert "strict: bool = true" in text
    assert "columns: dict[str, str] = required" in text
    assert "dead-letter" in text


def test_connector_reference_in_docs_is_current() -> None:
    committed = Path(__file__).parents[2] / "docs" / "connectors.md"
    assert committed.read_text(encoding="utf-8") == connector_reference(), (
        "docs/connectors.md is stale: run `python -m tideflow.cli.docs > docs/connectors.md`"
    )


def test_python_api_builds_the_same_model_as_yaml(tmp_path: Path) -> None:
    built = (
        tf.Pipeline("p", vars={"threshold": 5})
        .source(tf.generate(count=100))
        .filter("id > 5", name="big")
        .sink(tf.stdout())
        .sink(tf.stdout(format="jsonl"))
    )
    from_yaml = spec_data(load_pipeline_text(BASE, environ={}))
    assert spec_data(built.build()) == from_yaml
    path = tmp_path / "p.yaml"
    built.to_yaml(path)
    assert spec_data(tf.Pipeline.from_yaml(path).build()) == from_yaml
    assert spec_data(tf.load_pipeline(path)) == from_yaml
    assert tf.Pipeline.from_yaml(path).to_yaml() == path.read_text()


def test_python_api_errors_read_like_yaml_errors() -> None:
    with pytest.raises(ConfigError, match="unknown step type 'fliter'; did you mean 'filter'"):
        tf.Pipeline("p").source(tf.generate()).step("fliter", expr="x").sink(tf.stdout()).build()


def top_level_function(record: dict) -> dict:  # type: ignore[type-arg]
    """Used by the Python API test below."""
    return record


def test_python_api_references_functions_by_name() -> None:
    spec = tf.Pipeline("p").source(tf.generate()).map(top_level_function).sink(tf.stdout())
    assert spec.build().steps[0].function == f"{__name__}:top_level_function"  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="use a top-level function"):
        tf.Pipeline("p").map(lambda r: r)


def test_a_mapping_used_as_a_key_is_a_config_error() -> None:
    # Found by the config fuzzer: ruamel raises TypeError for an unhashable key.
    from tideflow.spec.loader import parse_yaml

    with pytest.raises(ConfigError, match="a key must be a plain value"):
        parse_yaml("? {a: {b: c}}\n: x\n")

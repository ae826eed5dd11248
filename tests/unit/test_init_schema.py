"""``tideflow init`` points editors at the JSON Schema, and every template satisfies it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator
from ruamel.yaml import YAML

from tideflow.cli.docs import pipeline_json_schema
from tideflow.cli.templates import SCHEMA_FILE, SCHEMA_LINE, copy_template, list_templates
from tideflow.spec.loader import load_pipeline_text


def validator() -> Draft202012Validator:
    return Draft202012Validator(pipeline_json_schema())


@pytest.mark.parametrize("name", sorted(list_templates()))
def test_each_template_pipeline_starts_with_the_schema_line_and_validates(
    name: str, tmp_path: Path
) -> None:
    target = copy_template(name, tmp_path / name)
    schema = json.loads((target / SCHEMA_FILE).read_text(encoding="utf-8"))
    assert schema == pipeline_json_schema()
    check = Draft202012Validator(schema)
    pipelines = 0
    for path in sorted(target.glob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        data = YAML(typ="safe").load(text)
        if "source" not in data and "sources" not in data:
            assert not text.startswith(SCHEMA_LINE), f"{path.name} is not a pipeline"
            continue
        pipelines += 1
        assert text.splitlines()[0] == SCHEMA_LINE, path.name
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in check.iter_errors(data)]
        assert not errors, f"{name}/{path.name}: {errors}"
        # ... and tideflow itself accepts it (variables without a default set by the reader).
        names = re.findall(r"\$\{(\w+)\}", text)
        spec = load_pipeline_text(text, str(path), environ=dict.fromkeys(names, "x"))
        assert spec.all_sources and spec.all_sinks
    assert pipelines >= 1


def test_the_schema_takes_variables_where_numbers_go_and_still_rejects_bad_values() -> None:
    def errors(count: object) -> int:
        doc = {
            "name": "p",
            "source": {"type": "generate", "count": count},
            "sinks": [{"type": "stdout"}],
        }
        return len(list(validator().iter_errors(doc)))

    assert errors(100) == 0
    assert errors("${COUNT}") == 0
    assert errors("${COUNT:-100}") == 0
    assert errors("lots") > 0
    assert errors("${COUNT") > 0


def test_init_twice_in_one_folder_adds_the_line_once(tmp_path: Path) -> None:
    from tideflow.cli.templates import point_editors_at_schema

    target = copy_template("quickstart", tmp_path / "qs")
    assert point_editors_at_schema(target) == []
    text = (target / "pipeline.yaml").read_text(encoding="utf-8")
    assert text.count(SCHEMA_LINE) == 1

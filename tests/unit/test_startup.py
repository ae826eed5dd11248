"""What keeps the ``tideflow`` command quick to start (issue 18): a run imports what its
pipeline uses and no more, and the collector pause of the entry point ends before any command
runs. Checked in fresh interpreters, as this one has imported everything already."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tideflow.errors import ConfigError
from tideflow.registry import default_registry
from tideflow.spec.loader import _validate_full, load_pipeline_text, parse_yaml


def _python(code: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout.strip()


def test_import_tideflow_imports_the_python_api_when_first_used() -> None:
    out = _python(
        "import sys, tideflow\n"
        "print(sorted(m for m in sys.modules if m.startswith('tideflow.')))\n"
        "from tideflow import Pipeline\n"
        "import tideflow.pipeline\n"
        "print(Pipeline is tideflow.pipeline.Pipeline and tideflow.Pipeline is Pipeline)\n"
    )
    before, same = out.splitlines()
    assert before == "[]"
    assert same == "True"


def test_a_pipeline_without_steps_imports_no_step_and_a_sequence_no_numpy() -> None:
    out = _python(
        "import sys\n"
        "from tideflow.spec.loader import load_pipeline_text\n"
        "from tideflow.connectors.generate import generate_range\n"
        "spec = load_pipeline_text('name: p\\nsource: {type: generate, shape: sequence, "
        "count: 3}\\nsink: {type: stdout}\\n', 'p.yaml')\n"
        "ids = generate_range(spec.source, 0, 3)['id'].to_list()\n"
        "print(ids, sorted(m for m in sys.modules if m.startswith(('tideflow.operators', "
        "'numpy'))))\n"
    )
    assert out == "[0, 1, 2] []"


@pytest.mark.parametrize(
    "steps",
    [
        "steps:\n  - {type: stdout}\n",  # a sink type where a step belongs
        "steps:\n  - {type: '<no type of this kind is used>'}\n",  # the placeholder's own name
    ],
)
def test_a_component_of_a_kind_left_out_of_the_narrowed_model_gets_the_full_models_error(
    steps: str,
) -> None:
    text = "name: p\nsource: {type: generate}\n" + steps + "sink: {type: stdout}\n"
    with pytest.raises(ConfigError) as narrowed:
        load_pipeline_text(text, "p.yaml")
    with pytest.raises(ConfigError) as full:
        _validate_full(default_registry, parse_yaml(text, "p.yaml"), frozenset(), [])
    assert str(narrowed.value) == str(full.value)
    assert "p.yaml:4: steps[0].type: unknown step type" in str(narrowed.value)


@pytest.mark.parametrize(("before", "expected"), [("", "True"), ("gc.disable()", "False")])
def test_the_entry_point_leaves_the_collector_as_it_found_it(before: str, expected: str) -> None:
    out = _python(
        "import gc, sys\n"
        f"{before}\n"
        "from tideflow.cli.main import cli\n"
        "@cli.command('probe')\n"
        "def probe() -> None:\n"
        "    print(gc.isenabled(), gc.get_freeze_count() > 0)\n"
        "sys.argv = ['tideflow', 'probe']\n"
        "from tideflow.cli.entry import main\n"
        "main()\n"
    )
    assert out == f"{expected} True"

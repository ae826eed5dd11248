"""The test kit (``tideflow.testing``): the demo API under its module path, and the
``memory`` source and sink, which run pipelines but are not part of the product surface."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
import warnings
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

import tideflow
import tideflow as tf
from tideflow.cli.docs import connector_reference, pipeline_json_schema
from tideflow.cli.main import cli
from tideflow.errors import ConfigError, UnknownNameError
from tideflow.registry import Registry, component, default_registry
from tideflow.spec.loader import load_pipeline_text
from tideflow.testing import collected, memory, run_pipeline


def test_the_demo_api_runs_as_a_module_of_the_test_kit() -> None:
    # The command README and `tideflow init` print, with a free port instead of 8765.
    src = str(Path(tideflow.__file__).parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tideflow.testing.fake_api", "--port", "0", "--records", "3"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("serving 3 records on http://127.0.0.1:"), line
        url = line.split(" on ", 1)[1].split()[0].rstrip("/")
        with urllib.request.urlopen(f"{url}/page?page=1&per_page=10", timeout=10) as reply:
            body = json.load(reply)
        assert len(body["data"]["items"]) == 3
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_memory_is_not_listed_by_tideflow_connectors() -> None:
    for args in (["connectors"], ["connectors", "--json"]):
        result = CliRunner().invoke(cli, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert "generate" in result.output and "memory" not in result.output
    listed = json.loads(CliRunner().invoke(cli, ["connectors", "--json"]).output)
    assert "memory" not in {row["type"] for row in listed}


def test_a_misspelt_type_is_never_offered_memory() -> None:
    text = "name: p\nsource: {type: memori, records: []}\nsink: {type: stdout}\n"
    with pytest.raises(ConfigError) as caught:
        load_pipeline_text(text, "p.yaml")
    assert "unknown source type 'memori'" in str(caught.value)
    assert "'memory'" not in str(caught.value)
    with pytest.raises(UnknownNameError) as lookup:
        default_registry.get("sink", "memori")
    assert "'memory'" not in str(lookup.value)
    # `tideflow connectors describe` suggests among listed types too.
    result = CliRunner().invoke(cli, ["connectors", "describe", "memori"])
    assert result.exit_code != 0 and "'memory'" not in result.output


def test_memory_is_not_in_the_reference_the_typed_api_or_the_schema() -> None:
    assert "### `memory`" not in connector_reference()
    schema = json.dumps(pipeline_json_schema())
    assert '"memory"' not in schema and "source:memory" not in schema
    assert "memory" not in tideflow.__all__ and "memory" not in dir(tideflow)
    assert not hasattr(tideflow.api, "memory")
    with pytest.warns(DeprecationWarning, match=r"tideflow\.testing\.memory"):
        old = tf.memory  # the old name still works, pointing at the test kit's
    assert old is memory


def test_memory_is_still_found_by_name() -> None:
    assert default_registry.get("source", "memory").type_name == "memory"
    assert {reg.kind for reg in default_registry.find("memory")} == {"source", "sink"}
    assert "memory" in default_registry.items("sink", unlisted=True)
    assert "memory" not in default_registry.items("sink")


def test_a_pipeline_through_the_test_kit_still_runs_on_memory() -> None:
    pipeline = (
        tf.Pipeline("kit")
        .source(memory(records=[{"x": 1}, {"x": 2}, {"x": 3}]))
        .filter("x > 1", name="big")
        .sink(memory(collector="kit-out", name="out"))
    )
    out = run_pipeline(pipeline, records=[{"x": 5}, {"x": 0}])
    assert out.at("big")["x"].to_list() == [5]
    # And a plain run, with the file format and the Python constructors alike.
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing here uses a deprecated name
        spec = load_pipeline_text(
            "name: kit-yaml\nsource: {type: memory, records: [{x: 1}, {x: 2}]}\n"
            "sink: {type: memory, collector: kit-yaml}\n",
            "p.yaml",
        )
    assert spec.all_sources[0].type == "memory"
    result = pipeline.run(fresh=True)
    assert result.to_polars("out")["x"].to_list() == [2, 3]
    assert collected("kit-out")["x"].to_list() == [2, 3]


def test_memory_builds_only_what_it_is_given() -> None:
    assert memory(collector="c") == {"type": "memory", "collector": "c"}
    frame = pl.DataFrame({"a": [1]})
    assert memory(records=frame, batch_size=5, name="m") == {
        "type": "memory",
        "records": frame,
        "batch_size": 5,
        "name": "m",
    }


def test_an_unlisted_plugin_type_runs_but_is_not_offered() -> None:
    import types

    from tideflow.connectors.memory import MemorySink

    module = types.ModuleType("hushed_plugin")

    @component("sink", "hushed", listed=False)
    class Hushed(MemorySink):
        """A sink only tests use."""

    Hushed.__module__ = module.__name__
    module.Hushed = Hushed  # type: ignore[attr-defined]
    registry = Registry()
    registry._plugins_loaded = True  # only what this test registers
    registry.add_module(module)
    assert registry.get("sink", "hushed").cls is Hushed
    assert registry.items("sink") == {}
    assert set(registry.items("sink", unlisted=True)) == {"hushed"}


def test_memory_takes_exactly_the_settings_of_the_memory_source_and_sink() -> None:
    import inspect

    fields = {
        name
        for kind in ("source", "sink")
        for name in default_registry.get(kind, "memory").config_model.model_fields  # type: ignore[arg-type]
    }
    assert set(inspect.signature(memory).parameters) == fields | {"name"}

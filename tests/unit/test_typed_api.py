"""The typed Python API: generated from the config models, complete, current, and checked by
mypy --strict the way a user's editor and CI check it."""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import tideflow as tf
from tideflow import api
from tideflow.builtin import register
from tideflow.codegen import HAND_WRITTEN_STEPS, TARGET, generate
from tideflow.core.contracts import Kind
from tideflow.registry import Registration, Registry
from tideflow.run.runner import spec_data
from tideflow.spec.loader import load_pipeline_text

ROOT = Path(__file__).parents[2]


def builtin_registry() -> Registry:
    registry = Registry()
    register(registry)
    return registry


def listed(registry: Registry, kind: Kind) -> dict[str, Registration]:
    """The types users are offered (not the test kit's unlisted ``memory``), which the typed
    API covers; the registry's own ``items`` would load the plugins a second time."""
    return {name: reg for name, reg in registry._items[kind].items() if reg.listed}


def params_of(function: object, skip: tuple[str, ...] = ()) -> dict[str, inspect.Parameter]:
    signature = inspect.signature(function)  # type: ignore[arg-type]
    return {n: p for n, p in signature.parameters.items() if n not in skip}


def test_the_committed_module_is_what_the_models_generate() -> None:
    assert TARGET.read_text(encoding="utf-8") == generate(), (
        "src/tideflow/api.py is stale: run `python -m tideflow.codegen` (or `make docs`)"
    )


def test_every_builtin_source_sink_and_step_has_a_typed_entry_point() -> None:
    registry = builtin_registry()
    missing = []
    for kind in ("source", "sink"):
        for type_name in listed(registry, kind):
            function = vars(api).get(type_name)
            # getattr, not vars: the package imports its names on first use. A type without
            # a typed constructor would come back as the registry's generic partial.
            if function is None or getattr(tf, type_name, None) is not function:
                missing.append(f"tf.{type_name} ({kind})")
    for type_name in listed(registry, "step"):
        if type_name in HAND_WRITTEN_STEPS:
            if type_name not in vars(tf.Pipeline):
                missing.append(f"Pipeline.{type_name} (hand-written step method)")
        elif type_name not in vars(api.StepMethods):
            missing.append(f"Pipeline.{type_name} (generated step method)")
    assert not missing, missing


def test_constructor_arguments_are_exactly_the_model_fields() -> None:
    registry = builtin_registry()
    for type_name in {*listed(registry, "source"), *listed(registry, "sink")}:
        fields: set[str] = set()
        for kind in ("source", "sink"):
            reg = listed(registry, kind).get(type_name)
            if reg is not None:
                fields |= {
                    info.alias or name for name, info in reg.config_model.model_fields.items()
                }
        params = params_of(getattr(api, type_name), skip=("name",))
        keys = {name.removesuffix("_") for name in params}
        assert keys == fields, type_name
        assert "name" in params_of(getattr(api, type_name))
    for type_name, reg in listed(registry, "step").items():
        fields = set(reg.config_model.model_fields)
        if type_name in HAND_WRITTEN_STEPS:
            covered = HAND_WRITTEN_STEPS[type_name]
            assert set(covered) == fields, f"{type_name}: a field has no parameter"
            method_params = params_of(getattr(tf.Pipeline, type_name))
            assert set(covered.values()) <= set(method_params), type_name
        else:
            method = getattr(api.StepMethods, type_name)
            assert set(params_of(method, skip=("self", "name", "input"))) == fields, type_name


def test_docstrings_carry_each_field_description() -> None:
    registry = builtin_registry()
    for kind in ("source", "sink", "step"):
        for type_name, reg in listed(registry, kind).items():
            if kind == "step" and type_name in HAND_WRITTEN_STEPS:
                continue
            holder = api.StepMethods if kind == "step" else api
            doc = " ".join((getattr(holder, type_name).__doc__ or "").split())
            for name, info in reg.config_model.model_fields.items():
                description = " ".join((info.description or "").split())
                assert description in doc, f"{kind} {type_name}.{name}"


def test_a_constructor_sets_only_the_arguments_given() -> None:
    assert tf.file("in/*.csv") == {"type": "file", "path": "in/*.csv"}
    assert tf.kafka(topic="t", group="g", batch_size=10) == {
        "type": "kafka",
        "topic": "t",
        "group": "g",
        "batch_size": 10,
    }
    # A source-only setting's default (`file`'s max_record_bytes) must not leak into a sink
    # built by the same function: the sink's model would refuse the key.
    sink = tf.file("out/", format="csv")
    assert sink == {"type": "file", "path": "out/", "format": "csv"}
    spec = tf.Pipeline("only-given").source(tf.generate(count=1)).sink(sink).build()
    assert spec.all_sinks[0].type == "file"


def test_typed_methods_build_what_the_same_yaml_builds() -> None:
    built = (
        tf.Pipeline("typed", on_error="skip")
        .source(tf.generate(shape="sensors", count=50, name="sensors"))
        .filter("temperature_c > 0", name="warm")
        .window(time_column="ts", size="1m", keys=["sensor_id"], aggregations={"n": "count()"})
        .outliers(column="n", method="mad", window=10)
        .sink(tf.file("out/", format="csv", csv={"delimiter": ";"}), when="n > 1")
    )
    yaml_text = textwrap.dedent(
        """
        name: typed
        on_error: skip
        source: {type: generate, name: sensors, shape: sensors, count: 50}
        steps:
          - {type: filter, name: warm, expr: "temperature_c > 0"}
          - type: window
            time_column: ts
            size: 1m
            keys: [sensor_id]
            aggregations: {n: count()}
          - {type: outliers, column: n, method: mad, window: 10}
        sink:
          type: file
          path: out/
          format: csv
          csv: {delimiter: ";"}
          when: n > 1
        """
    )
    assert spec_data(built.build()) == spec_data(load_pipeline_text(yaml_text, environ={}))


def test_hand_written_step_methods_reach_every_field() -> None:
    spec = (
        tf.Pipeline("hand")
        .source(tf.records([{"a": "1", "b": 2, "when": "2026-01-02"}]))
        .cast({"a": "int", "when": "date"}, formats={"when": "%Y-%m-%d"}, name="typed")
        .drop("b", strict=False, input="typed")
        .sql("SELECT * FROM batch", engine="polars")
        .sink(tf.stdout())
        .build()
    )
    cast, drop, sql = (s.model_dump() for s in spec.steps)
    assert cast["formats"] == {"when": "%Y-%m-%d"}
    assert drop["strict"] is False and drop["input"] == "typed"
    assert sql["engine"] == "polars"


@pytest.fixture
def plugin_source() -> Iterator[None]:
    """A test-only source type, registered the way an entry point registers one."""
    from tideflow.connectors.memory import MemorySource
    from tideflow.registry import default_registry

    default_registry.register("source", "rows_plugin")(MemorySource)
    yield
    default_registry._items["source"].pop("rows_plugin")
    default_registry.version += 1


def test_a_plugin_connector_keeps_the_dynamic_forms(plugin_source: None, tmp_path: Path) -> None:
    assert not hasattr(api, "rows_plugin")  # never generated into tideflow's own module
    dynamic = tf.rows_plugin(records=[{"x": 1}, {"x": 2}])  # type: ignore[attr-defined]
    assert dynamic == tf.connector("rows_plugin", records=[{"x": 1}, {"x": 2}])
    result = tf.Pipeline("plugin").source(dynamic).sink(tf.collect("plugin")).run(tmp_path)
    assert result.to_polars("rows_plugin")["x"].to_list() == [1, 2]


MYPY_SAMPLE = '''\
"""A user's script, checked with mypy --strict."""

from __future__ import annotations

import polars as pl

import tideflow as tf

readings = pl.DataFrame({"room": ["a", "b"], "count": [1, 2]})
pipeline = (
    tf.Pipeline("rooms", checkpoint={"every_records": 1000}, on_error="skip")
    .source(tf.kafka(topic="rooms-v1", group="reckoning", start="earliest"))
    .source(tf.records(readings), name="extra")
    .filter("count > 0")
    .window(time_column="ts", size="1m", keys=["room"], aggregations={"total": "sum(count)"})
    .aggregate(keys=["room"], aggregations={"total": "sum(count)"})
    .sink(tf.sql(url="postgresql://etl@db/dw", table="room_totals", mode="upsert", key=["room"]))
    .sink(tf.file("out/", format="parquet", csv={"delimiter": ";"}), when="total > 10")
)
result: tf.PipelineResult = pipeline.run(fresh=False, keep_rows=10)
frame: pl.DataFrame = result.to_polars("window")
'''

MISSPELT = {
    "keyword": (
        'group="reckoning"',
        'gruop="reckoning"',
        'Unexpected keyword argument "gruop" for "kafka"',
    ),
    "step_keyword": (
        'time_column="ts"',
        'time_colum="ts"',
        'Unexpected keyword argument "time_colum" for "window"',
    ),
    "method": (".window(", ".windw(", '"Pipeline" has no attribute "windw"'),
    "constructor": ("tf.kafka(", "tf.kafak(", 'Module has no attribute "kafak"'),
    "literal": ('start="earliest"', 'start="earlyest"', 'Argument "start" to "kafka"'),
    "nested_key": ('{"delimiter": ";"}', '{"delimitter": ";"}', 'Argument "csv" to "file"'),
    "pipeline_key": (
        "checkpoint={",
        "chekpoint={",
        'Unexpected keyword argument "chekpoint" for "Pipeline"',
    ),
}


def test_mypy_strict_passes_the_typed_api_and_rejects_misspellings(tmp_path: Path) -> None:
    (tmp_path / "good.py").write_text(MYPY_SAMPLE, encoding="utf-8")
    for case, (right, wrong, _) in MISSPELT.items():
        assert MYPY_SAMPLE.count(right) == 1, case
        (tmp_path / f"bad_{case}.py").write_text(
            MYPY_SAMPLE.replace(right, wrong), encoding="utf-8"
        )
    # Run where no project config applies: tideflow is found as an installed package, so
    # this also proves its py.typed marker is there (without it mypy skips the package).
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--cache-dir",
            str(tmp_path / ".mypy_cache"),
            *sorted(p.name for p in tmp_path.glob("*.py")),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    errors = [line for line in done.stdout.splitlines() if ": error:" in line]
    assert not [e for e in errors if e.startswith("good.py")], done.stdout
    for case, (_, _, expected) in MISSPELT.items():
        mine = [e for e in errors if e.startswith(f"bad_{case}.py:")]
        assert len(mine) == 1 and expected in mine[0], (case, done.stdout, done.stderr)
    assert len(errors) == len(MISSPELT), done.stdout


def test_the_wheel_ships_py_typed_and_the_typed_module(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("tideflow-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"tideflow/py.typed", "tideflow/api.py", "tideflow/results.py"} <= names


def test_import_of_the_typed_module_stays_light() -> None:
    # The generated module imports only the standard library at run time.
    source = TARGET.read_text(encoding="utf-8")
    runtime_imports = [
        line
        for line in source.splitlines()
        if line.startswith(("import ", "from ")) and "__future__" not in line
    ]
    assert all(
        line.split()[1].split(".")[0] in {"inspect", "collections", "datetime", "enum", "typing"}
        for line in runtime_imports
    ), runtime_imports

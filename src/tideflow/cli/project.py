"""The commands about pipeline files and what they are made of: ``validate``, ``init``,
``connectors`` (and ``connectors describe``), ``schema`` (and ``schema plan``), ``test``
and ``pii scan``."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path

import click

from tideflow.cli.common import EXIT_CONFIG, EXIT_FAILED, err, handle_errors, load, out
from tideflow.errors import ConfigError, ConfigIssue
from tideflow.secrets import redact


@click.command()
@click.argument("pipelines", nargs=-1, required=True, type=click.Path())
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a field.")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON document: per file, ok and its problems (file, line, field, message).",
)
@handle_errors
def validate(pipelines: tuple[str, ...], sets: tuple[str, ...], as_json: bool) -> None:
    """Check pipeline files; report every problem with file, line and field, including
    optional packages the connectors used need and are not installed."""
    reports = []
    for path in pipelines:
        issues = _validation_issues(path, sets)
        reports.append({"file": path, "ok": not issues, "errors": issues})
        if as_json:
            continue
        if issues:
            err.print(redact("\n".join(i.render() for i in issues)), soft_wrap=True, markup=False)
        else:
            out.print(f"{path}: ok", markup=False)
    failed = any(not report["ok"] for report in reports)
    if as_json:
        for report in reports:
            report["errors"] = [
                {"file": i.file, "line": i.line, "field": i.path, "message": redact(i.message)}
                for i in report["errors"]  # type: ignore[attr-defined]
            ]
        click.echo(json.dumps({"ok": not failed, "files": reports}, indent=2))
    if failed:
        sys.exit(EXIT_CONFIG)


def _validation_issues(path: str, sets: tuple[str, ...]) -> list[ConfigIssue]:
    """Every problem of one pipeline file: its settings, then the packages it needs."""
    from tideflow.cli.requirements import missing_requirements
    from tideflow.spec.loader import parse_yaml

    try:
        spec, _ = load(path, sets)
    except ConfigError as exc:
        return list(exc.issues)
    lines = None
    if Path(path).is_file():  # a pipeline named rather than a file: no lines to cite
        lines = parse_yaml(Path(path).read_text(encoding="utf-8"), path)
    return missing_requirements(spec, path if lines else None, lines)


@click.command()
@click.argument("template", required=False)
@click.argument("directory", required=False, type=click.Path())
@handle_errors
def init(template: str | None, directory: str | None) -> None:
    """Create a pipeline from a template (run without arguments to list them)."""
    from tideflow.cli.templates import copy_template, list_templates, run_sequence

    if template is None:
        for name, summary in list_templates().items():
            out.print(f"  {name:14} {summary}")
        return
    target = copy_template(template, Path(directory or template))
    out.print(f"created {target}; run it with:", markup=False)
    for command in run_sequence(template, target):
        out.print(f"  {command}", markup=False, soft_wrap=True)


@click.group(invoke_without_command=True)
@click.pass_context
@click.option("--kind", type=click.Choice(["source", "step", "sink"]), help="Only this kind.")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
def connectors(ctx: click.Context, kind: str | None, as_json: bool) -> None:
    """List the registered sources, steps and sinks."""
    if ctx.invoked_subcommand is not None:
        return
    from tideflow.core.contracts import KINDS
    from tideflow.registry import default_registry

    kinds = [k for k in KINDS if not kind or k == kind]
    if as_json:
        click.echo(
            json.dumps(
                [
                    {"kind": k, "type": name, "summary": reg.summary}
                    for k in kinds
                    for name, reg in sorted(default_registry.items(k).items())
                ],
                indent=2,
            )
        )
        return
    for k in kinds:
        out.print(f"[bold]{k}s[/bold]")
        for name, reg in sorted(default_registry.items(k).items()):
            out.print(f"  {name:14} {reg.summary}", markup=False)


# What people type for a connector that tideflow names differently.
_TYPE_ALIASES = {
    "postgres": "sql",
    "postgresql": "sql",
    "mysql": "sql",
    "mariadb": "sql",
    "sqlite": "sql",
    "duckdb": "sql",
    "rabbitmq": "amqp",
    "csv": "file",
    "parquet": "file",
    "ndjson": "file",
    "json": "file",
    "s3": "file",
    "rest": "http",
    "influx": "influxdb",
    "nats": "topic",
}


def type_hint(name: str, known: Mapping[str, list[str]]) -> str:
    """ "Did you mean" for an unknown component type: a known alias, else the closest names
    (looser than for keys in a file, since a type is typed from memory), else every type by
    kind."""
    import difflib

    names = sorted({n for kind_names in known.values() for n in kind_names})
    alias = _TYPE_ALIASES.get(name.lower())
    close = [alias] if alias else []
    for cutoff in (0.6, 0.4):
        close = close or difflib.get_close_matches(name.lower(), names, n=3, cutoff=cutoff)
    if close:
        return "did you mean " + " or ".join(repr(c) for c in close) + "?"
    listed = "; ".join(f"{kind}s: {', '.join(sorted(n))}" for kind, n in known.items())
    return f"no type is close; {listed}"


@connectors.command("describe")
@click.argument("type_name")
@click.option("--json", "as_json", is_flag=True, help="Print the settings as JSON.")
@handle_errors
def connectors_describe(type_name: str, as_json: bool) -> None:
    """Print every setting of a type: name, type, default and description."""
    from tideflow.cli.docs import describe_component
    from tideflow.core.contracts import KINDS
    from tideflow.errors import UnknownNameError
    from tideflow.registry import default_registry

    found = default_registry.find(type_name)
    if not found:
        known: dict[str, list[str]] = {k: list(default_registry.items(k)) for k in KINDS}
        raise UnknownNameError(f"unknown type {type_name!r}; {type_hint(type_name, known)}")
    if as_json:
        from tideflow.cli.listing import component_json

        click.echo(json.dumps([component_json(reg) for reg in found], indent=2))
        return
    for reg in found:
        out.print(describe_component(reg), markup=False)


@click.group(invoke_without_command=True)
@click.pass_context
def schema(ctx: click.Context) -> None:
    """Print the JSON Schema of the pipeline file format (for editor completion)."""
    if ctx.invoked_subcommand is not None:
        return
    from tideflow.cli.docs import pipeline_json_schema

    click.echo(json.dumps(pipeline_json_schema(), indent=2))


@schema.command("plan")
@click.argument("pipeline", type=click.Path(exists=True, dir_okay=False))
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a setting.")
@handle_errors
def schema_plan(pipeline: str, sets: tuple[str, ...]) -> None:
    """Print the DDL the pipeline's SQL sinks would run (tables to create or change),
    without running it. The columns come from a preview of the pipeline's first records."""
    from tideflow.run.runner import schema_plans

    spec, base = load(pipeline, sets)
    plans = schema_plans(spec, base)
    if not plans:
        click.echo("-- no sink in this pipeline manages a table schema")
    for sink, statements in plans.items():
        click.echo(f"-- sink {sink}" + ("" if statements else ": no change"))
        for statement in statements:
            click.echo(statement + ";")


@click.group()
def pii() -> None:
    """Find personal data before anything is loaded."""


@pii.command("scan")
@click.argument("target", type=click.Path())
@click.option("--rows", default=10_000, show_default=True, help="Records to read at most.")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
@handle_errors
def pii_scan(target: str, rows: int, as_json: bool) -> None:
    """Report which text columns of a data file, or of a pipeline's source, hold personal
    data (emails, phones, cards, IPs, IBANs), with counts and masked examples."""
    from tideflow.cli.pii_scan import read_sample
    from tideflow.operators.pii import scan_frame

    frame, origin = read_sample(target, rows)
    found = scan_frame(frame)
    if as_json:
        click.echo(
            json.dumps({"source": origin, "rows": frame.height, "findings": found.to_dicts()})
        )
        return
    out.print(f"{origin}: {frame.height} record(s) scanned", markup=False)
    if found.height == 0:
        out.print("no personal data found")
        return
    for row in found.iter_rows(named=True):
        out.print(
            f"  {row['column']}: {row['detector']} in {row['values']} of {row['of']} "
            f"value(s), e.g. {row['example']}",
            markup=False,
        )


@click.command("test")
@click.argument("files", nargs=-1, required=True, type=click.Path())
@handle_errors
def test_command(files: tuple[str, ...]) -> None:
    """Run pipeline tests declared in YAML (given input records, expect output records)."""
    from tideflow.cli.pipeline_tests import run_test_file

    failures = 0
    for path in files:
        for outcome in run_test_file(Path(path)):
            status = "[green]PASS[/green]" if outcome.passed else "[red]FAIL[/red]"
            out.print(f"{status} {path}: {outcome.name}")
            if not outcome.passed:
                failures += 1
                out.print(outcome.details, markup=False)
    if failures:
        out.print(f"{failures} test(s) failed")
        sys.exit(EXIT_FAILED)

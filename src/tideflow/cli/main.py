"""The ``tideflow`` command.

Exit codes: 0 success, 1 the pipeline failed, 2 the configuration is invalid.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console

from tideflow.errors import ConfigError, TideflowError
from tideflow.secrets import RedactingFilter, redact
from tideflow.spec.loader import load_pipeline
from tideflow.spec.models import PipelineSpec

F = TypeVar("F", bound=Callable[..., Any])
EXIT_FAILED = 1
EXIT_CONFIG = 2

# Rich assumes 80 columns when output is not a terminal (CI logs, pipes), which truncates the
# summary table's names; logs have no width limit, so use a wide page there.
_PIPE_WIDTH = 160
out = Console(highlight=False, width=None if sys.stdout.isatty() else _PIPE_WIDTH)
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else _PIPE_WIDTH)


def handle_errors(fn: F) -> F:
    """Turn tideflow errors into a message and an exit code, never a traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            err.print(
                f"[red]invalid configuration[/red]\n{redact(str(exc))}", markup=True, soft_wrap=True
            )
            sys.exit(EXIT_CONFIG)
        except TideflowError as exc:
            err.print(f"[red]error:[/red] {redact(str(exc))}", soft_wrap=True)
            sys.exit(EXIT_FAILED)

    return wrapper  # type: ignore[return-value]


def parse_sets(values: tuple[str, ...]) -> dict[str, str]:
    """``--set a.b=1`` pairs into a dict; a pair without ``=`` is a configuration error."""
    pairs = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        pairs[key.strip()] = value
    return pairs


def load(path: str, sets: tuple[str, ...] = ()) -> tuple[PipelineSpec, Path]:
    """Load a pipeline file and return it with its folder (the base of relative paths)."""
    return load_pipeline(path, parse_sets(sets)), Path(path).resolve().parent


def setup_logging(verbose: int) -> None:
    """Log to stderr, redacting secrets; -v for info, -vv for debug."""
    level = logging.WARNING - 10 * min(verbose, 2)
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(package_name="tideflow")
def cli(verbose: int) -> None:
    """tideflow: declarative data pipelines, batch and streaming."""
    setup_logging(verbose)


@cli.command()
@click.argument("pipeline", type=click.Path())
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a field, e.g. --set source.count=100 or --set sinks[0].path=out.",
)
@click.option("--dry-run", is_flag=True, help="Validate and print the plan; read no data.")
@click.option(
    "--preview",
    type=int,
    metavar="N",
    help="Print the first N records after each step; write no sink, keep no state.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress line and no summary.")
@click.option(
    "--log-progress",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    help="When stderr is not a terminal, print a progress line this often.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    metavar="PORT",
    help="Serve Prometheus metrics of this run on 127.0.0.1:PORT/metrics (needs the "
    "`service` extra).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    metavar="N",
    help="Run N worker processes in one consumer group, each reading a share of the "
    "topic's partitions (restarted if they die); needs topic or kafka sources.",
)
@click.option(
    "--worker-id",
    metavar="ID",
    help="Run as one worker of the pipeline's group under a stable ID (what --workers "
    "starts; use it to add workers on other machines).",
)
@handle_errors
def run(
    pipeline: str,
    sets: tuple[str, ...],
    dry_run: bool,
    preview: int | None,
    as_json: bool,
    quiet: bool,
    log_progress: float,
    metrics_port: int | None,
    workers: int | None,
    worker_id: str | None,
) -> None:
    """Run a pipeline file until its sources end (or until Ctrl-C / SIGTERM)."""
    from tideflow import runner
    from tideflow.core.engine import RunObserver
    from tideflow.observe.progress import ProgressLine, counts_json, print_summary

    spec, base = load(pipeline, sets)
    if dry_run:
        print_plan(spec, base)
        return
    if workers is not None:
        if worker_id is not None or preview is not None or metrics_port is not None:
            raise ConfigError(
                "--workers cannot be combined with --worker-id, --preview or "
                "--metrics-port (give each worker its own with --worker-id)"
            )
        sys.exit(_supervise(pipeline, spec, workers, sets, as_json, quiet))
    if preview is not None:
        shown = runner.preview(spec, base, preview)
        for node, frame in shown.frames.items():
            out.print(f"[bold]{node}[/bold] (first {frame.height})")
            out.print(str(frame))
        return
    progress = ProgressLine(err.file, log_every=log_progress)
    progress.enabled = not quiet
    observer = RunObserver(on_progress=progress.update)
    if metrics_port is not None:
        observer = _with_metrics(observer, spec.name, metrics_port)
    try:
        result = runner.run(spec, base, observer=observer, handle_signals=True, worker=worker_id)
    finally:
        progress.done()
    if as_json:
        click.echo(json.dumps(counts_json(result), indent=2))
    elif not quiet:
        print_summary(result, out)
    if result.unbalanced:
        sys.exit(EXIT_FAILED)


def _supervise(
    pipeline: str,
    spec: PipelineSpec,
    workers: int,
    sets: tuple[str, ...],
    as_json: bool,
    quiet: bool,
) -> int:
    """Start and look after ``workers`` group workers; their exit code."""
    from tideflow.core.engine import check_group_worker
    from tideflow.core.graph import build_graph
    from tideflow.registry import default_registry
    from tideflow.workers import Supervisor, default_prefix

    # Refused here once, rather than by each worker it would start.
    check_group_worker(build_graph(spec, default_registry))

    args = [arg for pair in sets for arg in ("--set", pair)]
    args += ["--json"] if as_json else []
    args += ["--quiet"] if quiet else []
    verbose = click.get_current_context().find_root().params.get("verbose", 0)
    return Supervisor(pipeline, workers, args, default_prefix(), verbose).run()


def _with_metrics(observer: Any, pipeline: str, port: int) -> Any:
    """The observer plus a Prometheus endpoint fed by the same progress calls."""
    try:
        from tideflow.service.metrics import run_metrics_observer
    except ImportError as exc:
        from tideflow.errors import MissingDependencyError

        raise MissingDependencyError("prometheus_client", "service") from exc
    try:
        _, hooks = run_metrics_observer(pipeline, port)
    except OSError as exc:
        raise ConfigError(f"--metrics-port {port}: cannot listen there: {exc.strerror}") from exc
    show = observer.on_progress

    def both(engine: Any) -> None:
        show(engine)
        hooks.on_progress(engine)

    observer.on_progress = both
    observer.on_batch = hooks.on_batch
    observer.on_visible = hooks.on_visible
    return observer


def print_plan(spec: PipelineSpec, base: Path) -> None:
    """Describe what a run would do."""
    from tideflow.core.graph import build_graph
    from tideflow.registry import default_registry
    from tideflow.state.store import state_path

    graph = build_graph(spec, default_registry)
    out.print(f"pipeline [bold]{spec.name}[/bold] is valid")
    for node in graph.nodes:
        inputs = ", ".join(n if p == "out" else f"{n}.{p}" for n, p in node.inputs)
        arrow = f"  <- {inputs}" if inputs else ""
        when = f"  when {spec_when(spec, node.name)}" if node.when is not None else ""
        out.print(f"  {node.kind:6} {node.name} ({node.type_name}){arrow}{when}")
    state = (
        redact(spec.state) if spec.state and "://" in spec.state else state_path(spec.state, base)
    )
    cp = spec.checkpoint
    out.print(
        f"  state: {state}; checkpoint every {cp.every_records} records / "
        f"{cp.every_seconds}s; on_error: {spec.on_error.action}"
    )


def spec_when(spec: PipelineSpec, name: str) -> str:
    """The `when:` text of a sink."""
    return next((s.when or "" for s in spec.all_sinks if s.name == name), "")


@cli.command()
@click.option(
    "--folder",
    default="pipelines",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder of pipeline files (*.yaml) to manage; created if missing.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--token",
    envvar="TIDEFLOW_TOKEN",
    help="Token every request must carry (env TIDEFLOW_TOKEN). Required, and generated if "
    "not given, when --host is not a loopback address.",
)
@handle_errors
def serve(folder: str, host: str, port: int, token: str | None) -> None:
    """Serve the REST API, the web UI and /metrics for the pipelines in a folder."""
    try:
        from tideflow.service.app import serve as run_server
        from tideflow.service.security import needs_token
    except ImportError as exc:
        from tideflow.errors import MissingDependencyError

        raise MissingDependencyError(exc.name or "fastapi", "service") from exc
    if needs_token(host) and not token:
        import secrets

        token = secrets.token_urlsafe(24)
        err.print(
            f"{host} is reachable from other machines, so every request needs a token:\n"
            f"  Authorization: Bearer {token}\n  or open http://{host}:{port}/?token={token}",
            markup=False,
            soft_wrap=True,
        )
    run_server(folder, host, port, token if token else None)


@cli.command()
@click.argument("pipelines", nargs=-1, required=True, type=click.Path())
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a field.")
def validate(pipelines: tuple[str, ...], sets: tuple[str, ...]) -> None:
    """Check pipeline files; report every problem with file, line and field."""
    failed = False
    for path in pipelines:
        try:
            load(path, sets)
            out.print(f"{path}: ok")
        except ConfigError as exc:
            failed = True
            err.print(redact(str(exc)), soft_wrap=True, markup=False)
    if failed:
        sys.exit(EXIT_CONFIG)


@cli.command()
@click.argument("template", required=False)
@click.argument("directory", required=False, type=click.Path())
@handle_errors
def init(template: str | None, directory: str | None) -> None:
    """Create a pipeline from a template (run without arguments to list them)."""
    from tideflow.templates import copy_template, list_templates

    if template is None:
        for name, summary in list_templates().items():
            out.print(f"  {name:14} {summary}")
        return
    target = copy_template(template, Path(directory or template))
    out.print(f"created {target}; run it with: tideflow run {target / 'pipeline.yaml'}")


@cli.group(invoke_without_command=True)
@click.pass_context
@click.option("--kind", type=click.Choice(["source", "step", "sink"]), help="Only this kind.")
def connectors(ctx: click.Context, kind: str | None) -> None:
    """List the registered sources, steps and sinks."""
    if ctx.invoked_subcommand is not None:
        return
    from tideflow.registry import KINDS, default_registry

    for k in KINDS:
        if kind and k != kind:
            continue
        out.print(f"[bold]{k}s[/bold]")
        for name, reg in sorted(default_registry.items(k).items()):
            out.print(f"  {name:14} {reg.summary}")


@connectors.command("describe")
@click.argument("type_name")
@handle_errors
def connectors_describe(type_name: str) -> None:
    """Print every setting of a type: name, type, default and description."""
    from tideflow.docs import describe_component
    from tideflow.errors import UnknownNameError
    from tideflow.registry import KINDS, default_registry, suggest

    found = default_registry.find(type_name)
    if not found:
        known = {n for k in KINDS for n in default_registry.items(k)}
        raise UnknownNameError(f"unknown type {type_name!r}; {suggest(type_name, known)}")
    for reg in found:
        out.print(describe_component(reg), markup=False)


@cli.group(invoke_without_command=True)
@click.pass_context
def schema(ctx: click.Context) -> None:
    """Print the JSON Schema of the pipeline file format (for editor completion)."""
    if ctx.invoked_subcommand is not None:
        return
    from tideflow.docs import pipeline_json_schema

    click.echo(json.dumps(pipeline_json_schema(), indent=2))


@schema.command("plan")
@click.argument("pipeline", type=click.Path(exists=True, dir_okay=False))
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a setting.")
@handle_errors
def schema_plan(pipeline: str, sets: tuple[str, ...]) -> None:
    """Print the DDL the pipeline's SQL sinks would run (tables to create or change),
    without running it. The columns come from a preview of the pipeline's first records."""
    from tideflow.runner import schema_plans

    spec, base = load(pipeline, sets)
    plans = schema_plans(spec, base)
    if not plans:
        click.echo("-- no sink in this pipeline manages a table schema")
    for sink, statements in plans.items():
        click.echo(f"-- sink {sink}" + ("" if statements else ": no change"))
        for statement in statements:
            click.echo(statement + ";")


@cli.group()
@click.option(
    "--broker",
    default=None,
    metavar="URL",
    help="kafka://host:port for Kafka; default: KAFKA_BROKER, else the embedded log.",
)
@click.option(
    "--state-dir",
    default=".tideflow",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder of the embedded log (topics.db), as beside the pipeline files.",
)
@click.pass_context
def topics(ctx: click.Context, broker: str | None, state_dir: str) -> None:
    """List, create, inspect, tail and produce to topics (embedded log or Kafka)."""
    from tideflow.connectors.topics import resolve_broker
    from tideflow.topics.admin import Admin

    ctx.obj = Admin(resolve_broker(broker), Path(state_dir))


@topics.command("list")
@click.pass_obj
@handle_errors
def topics_list(admin: Any) -> None:
    """Topic names."""
    for name in admin.names():
        click.echo(name)


@topics.command("create")
@click.argument("topic")
@click.option("--partitions", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--retention-ms", type=click.IntRange(min=1), help="Delete messages older than.")
@click.pass_obj
@handle_errors
def topics_create(admin: Any, topic: str, partitions: int, retention_ms: int | None) -> None:
    """Create a topic."""
    admin.create(topic, partitions, retention_ms)
    click.echo(f"created {topic} with {partitions} partition(s)")


@topics.command("describe")
@click.argument("topic")
@click.pass_obj
@handle_errors
def topics_describe(admin: Any, topic: str) -> None:
    """Partitions and their end offsets."""
    ends = admin.end_offsets(topic)
    click.echo(f"{topic}: {len(ends)} partition(s), {sum(ends.values())} message(s) written")
    for part, end in sorted(ends.items()):
        click.echo(f"  partition {part}: next offset {end}")


@topics.command("lag")
@click.argument("topic")
@click.argument("group")
@click.pass_obj
@handle_errors
def topics_lag(admin: Any, topic: str, group: str) -> None:
    """How far GROUP is behind on TOPIC, per partition."""
    total = 0
    for row in admin.lag(topic, group):
        total += row.lag
        committed = "-" if row.committed is None else row.committed
        click.echo(
            f"partition {row.partition}: committed {committed}, end {row.end}, lag {row.lag}"
        )
    click.echo(f"total lag {total}")


@topics.command("produce")
@click.argument("topic")
@click.option("--key", default=None, help="Key of every message.")
@click.option("--value", "values", multiple=True, help="A message; default: one per stdin line.")
@click.pass_obj
@handle_errors
def topics_produce(admin: Any, topic: str, key: str | None, values: tuple[str, ...]) -> None:
    """Send messages to TOPIC."""
    lines = list(values) or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    sent = admin.produce(topic, [v.encode() for v in lines], key)
    click.echo(f"sent {sent} message(s) to {topic}")


@topics.command("tail")
@click.argument("topic")
@click.option("-n", "count", default=10, show_default=True, help="Messages per partition.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new messages.")
@click.pass_obj
@handle_errors
def topics_tail(admin: Any, topic: str, count: int, follow: bool) -> None:
    """The last messages of TOPIC (partition, offset, key, value)."""
    for raw in admin.tail(topic, count, follow):
        for part, offset, key, value in zip(
            raw.partitions, raw.offsets, raw.keys, raw.values, strict=True
        ):
            shown_key = "-" if key is None else bytes(key).decode("utf-8", "replace")
            text = "" if value is None else bytes(value).decode("utf-8", "replace")
            click.echo(f"{part}:{offset} {shown_key} {redact(text)}")


@cli.group()
def state() -> None:
    """Inspect or reset a pipeline's checkpoint and state."""


def _store_for(spec: PipelineSpec, base: Path) -> Any:
    from tideflow.state.store import open_state_store

    return open_state_store(spec.state, base)


@state.command("show")
@click.argument("pipeline", type=click.Path())
@handle_errors
def state_show(pipeline: str) -> None:
    """Show the last checkpoint, step state sizes and recent runs."""
    spec, base = load(pipeline)
    store = _store_for(spec, base)
    checkpoint = store.load_checkpoint(spec.name)
    if checkpoint is None:
        out.print(f"{spec.name}: no checkpoint yet (a run starts from the beginning)")
    else:
        out.print(f"{spec.name}: checkpoint {checkpoint.id}")
        out.print("  positions: " + json.dumps(checkpoint.positions)[:2000], markup=False)
        for step, value in checkpoint.step_states.items():
            out.print(f"  state of {step}: {type(value).__name__}")
    partitions = store.partition_states(spec.name)
    if partitions:
        out.print(f"{spec.name}: partitions of its group workers")
    for source, part, owner, epoch, position in partitions:
        out.print(
            f"  {source} {part}: next {position}, worker {owner} (claim {epoch})", markup=False
        )
    for run_row in store.runs(spec.name, limit=5):
        out.print(f"  run {run_row['id']}: {run_row['status']}", markup=False)
    store.close()


@state.command("reset")
@click.argument("pipeline", type=click.Path())
@click.option("--dead-letters", is_flag=True, help="Also delete the dead-letter ledger.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@handle_errors
def state_reset(pipeline: str, dead_letters: bool, yes: bool) -> None:
    """Forget the checkpoint, so the next run starts from the beginning."""
    spec, base = load(pipeline)
    if not yes:
        click.confirm(f"reset the state of {spec.name}?", abort=True)
    store = _store_for(spec, base)
    store.reset(spec.name, dead_letters=dead_letters)
    store.close()
    out.print(f"{spec.name}: state reset")


@cli.group()
def deadletters() -> None:
    """Browse and replay records that could not be processed."""


@deadletters.command("list")
@click.argument("pipeline", type=click.Path())
@click.option("--step", help="Only this step.")
@click.option("--reason", help="Only reasons containing this text.")
@click.option("--limit", default=50, show_default=True)
@click.option("--all", "include_replayed", is_flag=True, help="Include replayed records.")
@handle_errors
def deadletters_list(
    pipeline: str, step: str | None, reason: str | None, limit: int, include_replayed: bool
) -> None:
    """List dead letters, newest last, with a count per step and reason."""
    spec, base = load(pipeline)
    store = _store_for(spec, base)
    for step_name, why, count in store.dead_letter_summary(spec.name):
        out.print(f"{count:>8}  {step_name}: {why}", markup=False)
    rows = store.dead_letters(
        spec.name, step=step, reason=reason, include_replayed=include_replayed, limit=limit
    )
    for row in rows:
        mark = " (replayed)" if row.replayed_at else ""
        out.print(f"#{row.id} [{row.step}] {row.reason}{mark}: {row.record[:120]}", markup=False)
    store.close()


@deadletters.command("show")
@click.argument("pipeline", type=click.Path())
@click.argument("ids", nargs=-1, type=int, required=True)
@handle_errors
def deadletters_show(pipeline: str, ids: tuple[int, ...]) -> None:
    """Print dead letters in full, as JSON."""
    spec, base = load(pipeline)
    store = _store_for(spec, base)
    for row in store.dead_letters(spec.name, ids=list(ids)):
        click.echo(json.dumps(row.__dict__, indent=2))
    store.close()


@deadletters.command("replay")
@click.argument("pipeline", type=click.Path())
@click.option("--step", required=True, help="Replay the records that failed at this step.")
@click.option("--id", "ids", multiple=True, type=int, help="Only these ledger ids.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a field.")
@handle_errors
def deadletters_replay(
    pipeline: str, step: str, ids: tuple[int, ...], sets: tuple[str, ...]
) -> None:
    """Send dead letters through the pipeline again, from the step where they failed."""
    from tideflow import runner
    from tideflow.observe.progress import print_summary

    spec, base = load(pipeline, sets)
    result = runner.replay(spec, base, step, list(ids))
    print_summary(result, out)


@cli.group()
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
    from tideflow.operators.pii import scan_frame
    from tideflow.pii_scan import read_sample

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


@cli.command("test")
@click.argument("files", nargs=-1, required=True, type=click.Path())
@handle_errors
def test_command(files: tuple[str, ...]) -> None:
    """Run pipeline tests declared in YAML (given input records, expect output records)."""
    from tideflow.pipeline_tests import run_test_file

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


def main() -> None:
    """Entry point of the ``tideflow`` script."""
    cli()


if __name__ == "__main__":
    main()

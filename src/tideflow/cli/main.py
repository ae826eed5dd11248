"""The ``tideflow`` command.

Exit codes: 0 success, 1 the pipeline failed, 2 the configuration is invalid.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Mapping
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape

from tideflow.cli.targets import Target, require_file, resolve
from tideflow.errors import ConfigError, ConfigIssue, StateLostError, TideflowError, require
from tideflow.observe.logs import LOG_FORMATS, json_enabled
from tideflow.observe.logs import configure as configure_logging
from tideflow.run.plan import engine_for
from tideflow.secrets import redact
from tideflow.spec.models import PipelineSpec

F = TypeVar("F", bound=Callable[..., Any])
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_INCOMPLETE = 3
"""A bounded run ended before it read all it was meant to (``max_wait`` ran out)."""

# Rich assumes 80 columns when output is not a terminal (CI logs, pipes), which truncates the
# summary table's names; logs have no width limit, so use a wide page there.
_PIPE_WIDTH = 160
out = Console(highlight=False, width=None if sys.stdout.isatty() else _PIPE_WIDTH)
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else _PIPE_WIDTH)


def _command_line() -> str:
    """The command being run, as the user typed it (``tideflow deadletters replay``)."""
    ctx = click.get_current_context(silent=True)
    names = []
    while ctx is not None and ctx.parent is not None:
        names.append(ctx.info_name or "")
        ctx = ctx.parent
    return " ".join(["tideflow", *reversed(names)])


def refusal_header(exc: ConfigError) -> str:
    """What a configuration error refused: a pipeline file's settings, or the command itself
    (its options or arguments), so the reader knows where to look."""
    if any(issue.file for issue in exc.issues):
        return "invalid configuration"
    return f"refused: {_command_line()}"


def handle_errors(fn: F) -> F:
    """Turn tideflow errors into a message and an exit code, never a traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except StateLostError as exc:
            err.print(
                f"[red]refused[/red]\n{escape(redact(str(exc)))}", markup=True, soft_wrap=True
            )
            sys.exit(EXIT_CONFIG)
        except ConfigError as exc:
            header = refusal_header(exc)
            if json_enabled():
                logging.getLogger("tideflow.cli").error("%s\n%s", header, exc)
            else:
                # Messages hold brackets (`tideflow[postgres]`, `sinks[0]`) that rich would
                # read as markup and drop: only the header is markup.
                err.print(
                    f"[red]{escape(header)}[/red]\n{escape(redact(str(exc)))}",
                    markup=True,
                    soft_wrap=True,
                )
            sys.exit(EXIT_CONFIG)
        except TideflowError as exc:
            if json_enabled():
                logging.getLogger("tideflow.cli").error("%s", exc)
            else:
                err.print(f"[red]error:[/red] {escape(redact(str(exc)))}", soft_wrap=True)
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
    """Load a pipeline file (or the file here of the pipeline of that name) and return it
    with its folder (the base of relative paths)."""
    target = resolve(path, parse_sets(sets))
    return require_file(target, path), target.base


def setup_logging(verbose: int) -> None:
    """Log to stderr, redacting secrets; -v for info, -vv for debug."""
    configure_logging(verbose)


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
    "`service` extra). With --workers N: the supervisor's (worker restarts) on PORT and "
    "worker i's on PORT+1+i.",
)
@click.option(
    "--health-port",
    type=click.IntRange(1, 65535),
    metavar="PORT",
    help="Serve /healthz (alive: sources and sinks connected) and /readyz (partitions "
    "assigned, state restored) on PORT; they are also served on --metrics-port.",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    metavar="ADDRESS",
    help="Address of the --metrics-port and --health-port endpoints (0.0.0.0 in a "
    "container, for probes and scrapers; they show counts and status, no data).",
)
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    default="text",
    show_default=True,
    envvar="TIDEFLOW_LOG_FORMAT",
    help="json: one object per line (time, level, pipeline, worker, step, message), info "
    "level by default, for log collectors (env TIDEFLOW_LOG_FORMAT).",
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
@click.option(
    "--from-scratch",
    is_flag=True,
    help="Start over: delete the output the sinks can clear (their files, their table's "
    "rows), the checkpoint and the dead letters, then read every input from the start.",
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
    health_port: int | None,
    host: str,
    log_format: str,
    workers: int | None,
    worker_id: str | None,
    from_scratch: bool,
) -> None:
    """Run a pipeline file until its sources end (or until Ctrl-C / SIGTERM).

    SIGTERM (or Ctrl-C) stops reading, lets the batches already read through, takes a final
    checkpoint and exits 0; a second one exits at once (the next run resumes from the last
    checkpoint). See docs/deploy.md for the grace period to allow.

    When the state store is missing or empty but the sinks hold output of earlier runs, the
    run is refused (exit code 2) rather than reading everything again; the message names
    the ways on (`--from-scratch`, `tideflow state reset`)."""
    from tideflow.core.engine import RunObserver
    from tideflow.observe.health import RunHealth
    from tideflow.observe.progress import ProgressLine, counts_json, print_summary
    from tideflow.run import runner

    verbose = click.get_current_context().find_root().params.get("verbose", 0)
    json_logs = log_format == "json"
    if json_logs:
        configure_logging(verbose, "json", worker=worker_id)
    spec, base = load(pipeline, sets)
    if json_logs:
        configure_logging(verbose, "json", spec.name, worker_id)
    if dry_run:
        print_plan(spec, base)
        return
    if from_scratch and (workers is not None or worker_id is not None or preview is not None):
        raise ConfigError(
            "--from-scratch cannot be combined with --workers, --worker-id or --preview: "
            "start over with one plain run, then start the workers"
        )
    if workers is not None:
        if worker_id is not None or preview is not None or health_port:
            raise ConfigError(
                "--workers cannot be combined with --worker-id, --preview or --health-port "
                "(add workers on other machines with --worker-id; each serves its own)"
            )
        sys.exit(
            _supervise(
                pipeline, spec, workers, sets, as_json, quiet, metrics_port, log_format, host
            )
        )
    if preview is not None:
        shown = runner.preview(spec, base, preview)
        for node, frame in shown.frames.items():
            out.print(f"[bold]{node}[/bold] (first {frame.height})")
            out.print(str(frame))
        return
    run_log = logging.getLogger("tideflow.run")
    progress = ProgressLine(err.file, log_every=log_progress, log=run_log if json_logs else None)
    progress.enabled = not quiet
    health = RunHealth(spec.name, worker_id)
    observer = RunObserver(on_progress=progress.update, on_start=health.attach)
    endpoints = _serve_endpoints(observer, spec.name, host, metrics_port, health_port, health)
    try:
        result = runner.run(
            spec,
            base,
            observer=observer,
            handle_signals=True,
            worker=worker_id,
            from_scratch=from_scratch,
        )
    except StateLostError as exc:
        raise StateLostError(str(exc).replace("PIPELINE_FILE", pipeline)) from exc
    finally:
        progress.done()
        for endpoint in endpoints:
            endpoint.close()
    if as_json:
        click.echo(json.dumps(counts_json(result), indent=None if json_logs else 2))
    elif json_logs and not quiet:
        level = logging.ERROR if result.unbalanced else logging.INFO
        run_log.log(
            level,
            "run %s: %d record(s) in %.1f s, %d checkpoint(s)",
            result.status,
            result.records_in,
            result.seconds,
            result.checkpoints,
            extra={"fields": {"summary": counts_json(result)}},
        )
    elif not quiet:
        print_summary(result, out, pipeline)
    elif result.notices:
        for notice in result.notices:  # quiet drops the table, not what went unread
            err.print(notice, markup=False, soft_wrap=True)
    if result.unbalanced:
        sys.exit(EXIT_FAILED)
    if result.status == "incomplete":
        sys.exit(EXIT_INCOMPLETE)


def _supervise(
    pipeline: str,
    spec: PipelineSpec,
    workers: int,
    sets: tuple[str, ...],
    as_json: bool,
    quiet: bool,
    metrics_port: int | None = None,
    log_format: str = "text",
    host: str = "127.0.0.1",
) -> int:
    """Start and look after ``workers`` group workers; their exit code. With
    ``metrics_port`` P the supervisor serves its metrics (worker restarts) on P and worker
    ``i`` serves its run's metrics on P + 1 + i."""
    from tideflow.core.ownership import check_group_worker
    from tideflow.registry import default_registry
    from tideflow.run.workers import Supervisor, default_prefix
    from tideflow.spec.graph import build_graph

    # Refused here once, rather than by each worker it would start.
    check_group_worker(build_graph(spec, default_registry))

    args = [arg for pair in sets for arg in ("--set", pair)]
    args += ["--json"] if as_json else []
    args += ["--quiet"] if quiet else []
    args += ["--log-format", log_format] if log_format != "text" else []
    args += ["--host", host] if host != "127.0.0.1" else []
    verbose = click.get_current_context().find_root().params.get("verbose", 0)
    supervisor = Supervisor(
        pipeline, workers, args, default_prefix(), verbose, metrics_port, spec.name
    )
    if metrics_port is not None:
        if metrics_port + workers > 65535:
            raise ConfigError(f"--metrics-port {metrics_port}: workers need the ports after it")
        require("prometheus_client", "service")
        try:
            supervisor.serve_metrics(host)
        except OSError as exc:
            raise ConfigError(
                f"--metrics-port {metrics_port}: cannot listen there: {exc.strerror}"
            ) from exc
    return supervisor.run()


def _serve_endpoints(
    observer: Any,
    pipeline: str,
    host: str,
    metrics_port: int | None,
    health_port: int | None,
    health: Any,
) -> list[Any]:
    """Start the HTTP endpoints of a run: ``/metrics`` with ``/healthz`` and ``/readyz`` on
    the metrics port, health alone on a separate health port; the metrics hooks join the
    observer."""
    from tideflow.observe.health import RunEndpoints

    render = None
    if metrics_port is not None:
        require("prometheus_client", "service")
        from tideflow.observe.metrics import CONTENT_TYPE, run_metrics

        metrics, hooks = run_metrics(pipeline)
        render = metrics.render
        show = observer.on_progress

        def both(engine: Any) -> None:
            show(engine)
            hooks.on_progress(engine)

        observer.on_progress = both
        observer.on_batch = hooks.on_batch
        observer.on_visible = hooks.on_visible
        observer.on_checkpoint_seconds = hooks.on_checkpoint_seconds
    wanted = [("--metrics-port", metrics_port, render)]
    if health_port is not None and health_port != metrics_port:
        wanted.append(("--health-port", health_port, None))
    endpoints: list[Any] = []
    for option, port, rendered in wanted:
        if port is None:
            continue
        try:
            if rendered is None:
                endpoints.append(RunEndpoints(host, port, health))
            else:
                endpoints.append(RunEndpoints(host, port, health, rendered, CONTENT_TYPE))
        except OSError as exc:
            for started in endpoints:
                started.close()
            reason = exc.strerror or str(exc)
            raise ConfigError(f"{option} {port}: cannot listen there ({host}): {reason}") from exc
    return endpoints


def print_plan(spec: PipelineSpec, base: Path) -> None:
    """Describe what a run would do."""
    from tideflow.registry import default_registry
    from tideflow.spec.graph import build_graph
    from tideflow.state.locate import state_location, state_path

    graph = build_graph(spec, default_registry)
    out.print(f"pipeline [bold]{spec.name}[/bold] is valid")
    for node in graph.nodes:
        inputs = ", ".join(n if p == "out" else f"{n}.{p}" for n, p in node.inputs)
        arrow = f"  <- {inputs}" if inputs else ""
        when = f"  when {spec_when(spec, node.name)}" if node.when is not None else ""
        out.print(f"  {node.kind:6} {node.name} ({node.type_name}){arrow}{when}")
    where = state_location(spec.state)
    state = redact(where) if where and "://" in where else state_path(where, base)
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
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    envvar="TIDEFLOW_ALLOWED_HOSTS",
    metavar="NAME",
    help="A host name this server is reached by, besides the bound address and localhost "
    "(requests naming any other Host are refused, against DNS rebinding); repeatable, env "
    "TIDEFLOW_ALLOWED_HOSTS (space-separated). `*` accepts any name.",
)
@click.option(
    "--allow-python",
    is_flag=True,
    help="Allow `python` steps: whoever can reach the API can then run any code here.",
)
@click.option(
    "--allow-path",
    "allow_paths",
    multiple=True,
    metavar="DIR",
    type=click.Path(file_okay=False),
    help="A folder besides the pipelines folder whose files pipelines may read and write "
    "(repeatable; `/` allows every path).",
)
@click.option(
    "--allow-sql-files",
    is_flag=True,
    help="Let SQL reach files: DuckDB's read_csv/read_parquet/ATTACH/COPY, Polars SQL's "
    "read_* functions, SQLite's ATTACH.",
)
@handle_errors
def serve(
    folder: str,
    host: str,
    port: int,
    token: str | None,
    allowed_hosts: tuple[str, ...],
    allow_python: bool,
    allow_paths: tuple[str, ...],
    allow_sql_files: bool,
) -> None:
    """Serve the REST API, the web UI and /metrics for the pipelines in a folder.

    Whoever can reach the API can create and start pipelines. By default those may not run
    Python code, use files outside FOLDER or read files from SQL; the --allow-* options lift
    each limit (see docs/operate.md)."""
    require("tideflow.service.app", "service")  # names the missing one: fastapi, uvicorn, ...
    from tideflow.service.app import serve as run_server
    from tideflow.service.policy import Policy
    from tideflow.service.security import needs_token

    if needs_token(host) and not token:
        import secrets

        token = secrets.token_urlsafe(24)
        err.print(
            f"{host} is reachable from other machines, so every request needs a token:\n"
            f"  Authorization: Bearer {token}\n  or open http://{host}:{port}/?token={token}",
            markup=False,
            soft_wrap=True,
        )
    policy = Policy(
        allow_python=allow_python,
        paths=tuple(Path(p) for p in allow_paths),
        allow_sql_files=allow_sql_files,
    )
    run_server(folder, host, port, token if token else None, allowed_hosts, policy)


@cli.command()
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


@cli.command()
@click.argument("template", required=False)
@click.argument("directory", required=False, type=click.Path())
@handle_errors
def init(template: str | None, directory: str | None) -> None:
    """Create a pipeline from a template (run without arguments to list them)."""
    from tideflow.templates import copy_template, list_templates, run_sequence

    if template is None:
        for name, summary in list_templates().items():
            out.print(f"  {name:14} {summary}")
        return
    target = copy_template(template, Path(directory or template))
    out.print(f"created {target}; run it with:", markup=False)
    for command in run_sequence(template, target):
        out.print(f"  {command}", markup=False, soft_wrap=True)


@cli.group(invoke_without_command=True)
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
    from tideflow.core.contracts import KINDS
    from tideflow.docs import describe_component
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
    from tideflow.run.runner import schema_plans

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
    from tideflow.connectors.topic.admin import Admin
    from tideflow.connectors.topic.settings import resolve_broker

    ctx.obj = Admin(resolve_broker(broker), Path(state_dir))


def _topic_options(fn: F) -> F:
    """``--state-dir`` and ``--broker`` after the subcommand too (``tideflow topics describe
    T --state-dir X``), where they override the group's."""

    @wraps(fn)
    def wrapper(
        admin: Any, *args: Any, state_dir: str | None, broker: str | None, **kwargs: Any
    ) -> Any:
        if state_dir is not None or broker is not None:
            from tideflow.connectors.topic.admin import Admin
            from tideflow.connectors.topic.settings import resolve_broker

            admin = Admin(
                resolve_broker(broker) if broker is not None else admin.bootstrap,
                Path(state_dir) if state_dir is not None else admin.state_dir,
            )
        return fn(admin, *args, **kwargs)

    wrapper = click.option(
        "--state-dir",
        default=None,
        type=click.Path(file_okay=False),
        help="Folder of the embedded log, as before the subcommand.",
    )(wrapper)
    wrapper = click.option(
        "--broker", default=None, metavar="URL", help="As before the subcommand."
    )(wrapper)
    return wrapper  # type: ignore[return-value]


@topics.command("list")
@click.pass_obj
@_topic_options
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
@_topic_options
@handle_errors
def topics_create(admin: Any, topic: str, partitions: int, retention_ms: int | None) -> None:
    """Create a topic."""
    admin.create(topic, partitions, retention_ms)
    click.echo(f"created {topic} with {partitions} partition(s)")


@topics.command("describe")
@click.argument("topic")
@click.pass_obj
@_topic_options
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
@_topic_options
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
@_topic_options
@handle_errors
def topics_produce(admin: Any, topic: str, key: str | None, values: tuple[str, ...]) -> None:
    """Send messages to TOPIC."""
    lines = list(values) or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    try:
        sent = admin.produce(topic, [v.encode() for v in lines], key)
    finally:
        admin.close()
    click.echo(f"sent {sent} message(s) to {topic}")


@topics.command("tail")
@click.argument("topic")
@click.option("-n", "count", default=10, show_default=True, help="Messages per partition.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new messages.")
@click.pass_obj
@_topic_options
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


def _state_dir_option(fn: F) -> F:
    """``--state-dir``: where to look a pipeline given by name up (its ``.tideflow``)."""
    return click.option(
        "--state-dir",
        default=None,
        type=click.Path(file_okay=False, path_type=Path),
        help="Look PIPELINE's name up in this state folder (a .tideflow) instead of here.",
    )(fn)


@cli.group()
def state() -> None:
    """Inspect or reset a pipeline's checkpoint and state."""


def _store_for(target: Target) -> Any:
    from tideflow.state.locate import open_state_store

    return open_state_store(target.state, target.base)


@state.command("show")
@click.argument("pipeline", type=click.Path())
@_state_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the state as one JSON document.")
@handle_errors
def state_show(pipeline: str, state_dir: Path | None, as_json: bool) -> None:
    """Show the last checkpoint, step state sizes and recent runs (PIPELINE: a file, or the
    name of a pipeline that ran in this folder)."""
    target = resolve(pipeline, state_dir=state_dir)
    name = target.name
    store = _store_for(target)
    if as_json:
        from tideflow.cli.listing import state_json

        try:
            click.echo(json.dumps(state_json(name, store), indent=2))
        finally:
            store.close()
        return
    checkpoint = store.load_checkpoint(name)
    if checkpoint is None:
        out.print(f"{name}: no checkpoint yet (a run starts from the beginning)")
    else:
        out.print(f"{name}: checkpoint {checkpoint.id}")
        spec = target.spec
        files = {str(s.name) for s in spec.all_sources if s.type == "file"} if spec else set()
        others = {k: v for k, v in checkpoint.positions.items() if k not in files}
        if others:
            out.print("  positions: " + json.dumps(others)[:2000], markup=False)
        for source in sorted(files & set(checkpoint.positions)):
            _show_file_position(source, checkpoint.positions[source])
        for step, value in checkpoint.step_states.items():
            out.print(f"  state of {step}: {type(value).__name__}")
    partitions = store.partition_states(name)
    if partitions:
        out.print(f"{name}: partitions of its group workers")
    for source, part, owner, epoch, position in partitions:
        out.print(
            f"  {source} {part}: next {position}, worker {owner} (claim {epoch})", markup=False
        )
    for key, sink, checkpoint_id in store.outbox_summary(name):
        owner = key.partition("#")[2] or "the pipeline"
        out.print(
            f"  outbox of sink {sink} ({owner}): checkpoint {checkpoint_id}, delivered unless "
            "a crash interrupted its commit (the next start of that run delivers what is "
            "missing)",
            markup=False,
        )
    for run_row in store.history.runs(name, limit=5):
        out.print(f"  run {run_row['id']}: {run_row['status']}", markup=False)
    store.close()


def _show_file_position(source: str, position: Any) -> None:
    """The files a file source has read: each one by name (what a re-run skips)."""
    if not isinstance(position, dict):
        return
    done, tails = position.get("done") or [], position.get("tail") or {}
    out.print(
        f"  source {source!r}: {len(done):,} file(s) read to the end"
        + (f", {len(tails):,} followed by tail" if tails else ""),
        markup=False,
    )
    for url in done:
        out.print(f"    {url}", markup=False, soft_wrap=True)
    for url, (offset, rows, *_) in tails.items():
        out.print(
            f"    {url}: up to byte {offset:,} ({rows:,} rows); lines appended after it are "
            "read next",
            markup=False,
            soft_wrap=True,
        )
    if position.get("file"):
        out.print(
            f"    reading {position['file']} from row {position.get('row', 0):,}",
            markup=False,
            soft_wrap=True,
        )


@state.command("reset")
@click.argument("pipeline", type=click.Path())
@click.option("--dead-letters", is_flag=True, help="Also delete the dead-letter ledger.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@_state_dir_option
@handle_errors
def state_reset(pipeline: str, dead_letters: bool, yes: bool, state_dir: Path | None) -> None:
    """Forget the checkpoint, so the next run starts from the beginning: every input is
    read again and written beside the output already there (says which; PIPELINE: a file, or
    the name of a pipeline that ran in this folder). To clear that output as well, run with
    `--from-scratch` instead."""

    target = resolve(pipeline, state_dir=state_dir)
    if target.spec is None:
        # Known by name only (it ran from Python): no sinks to inspect.
        if not yes:
            click.confirm(f"reset the state of {target.name}?", abort=True)
        store = _store_for(target)
        try:
            store.reset(target.name, dead_letters=dead_letters)
        finally:
            store.close()
        out.print(f"{target.name}: state reset")
        return
    spec = target.spec
    store = _store_for(target)
    engine = engine_for(spec, target.base, state=store)
    try:
        lines = _reset_consequences(engine)
        for line in lines:
            out.print(line, markup=False, soft_wrap=True)
        if not yes:
            click.confirm(f"reset the state of {spec.name}?", abort=True)
        store.reset(spec.name, dead_letters=dead_letters)
        store.history.record_reset(engine.run_id, spec.name, "; ".join(lines))
    finally:
        store.close()
    out.print(f"{spec.name}: state reset")


def _reset_consequences(engine: Any) -> list[str]:
    """What the run after a reset reads again, and which output it writes beside."""
    lines = []
    rereading = [n for n in engine.graph.sources if n.component.replays_without_state]
    if rereading:
        names = ", ".join(f"{n.name!r} ({n.type_name})" for n in rereading)
        lines.append(f"the next run reads the input of source(s) {names} again from the start")
    others = [n for n in engine.graph.sources if not n.component.replays_without_state]
    if others:
        names = ", ".join(f"{n.name!r} ({n.type_name})" for n in others)
        lines.append(
            f"source(s) {names} go on from what their upstream remembers (committed offsets, "
            "acknowledgements), not from the start"
        )
    keepers = [n.name for n in engine.graph.sinks if n.component.keeps_checkpoint]
    if keepers:
        lines.append(
            f"sink(s) {', '.join(map(repr, keepers))} keep their own checkpoint with the "
            "data; the next run goes on from there unless it runs with --from-scratch"
        )
    if not rereading:
        return lines
    for node, output in engine.existing_output():
        clear = (
            f"; `tideflow run --from-scratch` would {output.clearing}" if output.clearing else ""
        )
        lines.append(
            f"sink {node.name!r} already holds {output.found}: what is read again is "
            f"written beside it{clear}"
        )
    return lines


@cli.group()
def deadletters() -> None:
    """Browse and replay records that could not be processed."""


@deadletters.command("list")
@click.argument("pipeline", type=click.Path())
@click.option("--step", help="Only this step.")
@click.option("--reason", help="Only reasons containing this text.")
@click.option("--limit", default=50, show_default=True)
@click.option("--all", "include_replayed", is_flag=True, help="Include replayed records.")
@_state_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the counts and letters as JSON.")
@handle_errors
def deadletters_list(
    pipeline: str,
    step: str | None,
    reason: str | None,
    limit: int,
    include_replayed: bool,
    state_dir: Path | None,
    as_json: bool,
) -> None:
    """List dead letters, newest last, with a count per step and reason (PIPELINE: a file,
    or the name of a pipeline that ran in this folder, such as a Stream processor's)."""
    target = resolve(pipeline, state_dir=state_dir)
    store = _store_for(target)
    if as_json:
        from tideflow.cli.listing import dead_letter_json

        try:
            summary = store.ledger.summary(target.name)
            rows = store.ledger.letters(
                target.name,
                step=step,
                reason=reason,
                include_replayed=include_replayed,
                limit=limit,
            )
        finally:
            store.close()
        document = {
            "pipeline": target.name,
            "counts": [{"step": s, "reason": redact(r), "count": n} for s, r, n in summary],
            "letters": [dead_letter_json(row) for row in rows],
        }
        click.echo(json.dumps(document, indent=2))
        return
    for step_name, why, count in store.ledger.summary(target.name):
        out.print(f"{count:>8}  {step_name}: {why}", markup=False)
    rows = store.ledger.letters(
        target.name, step=step, reason=reason, include_replayed=include_replayed, limit=limit
    )
    for row in rows:
        mark = " (replayed)" if row.replayed_at else ""
        out.print(f"#{row.id} [{row.step}] {row.reason}{mark}: {row.record[:120]}", markup=False)
    store.close()


@deadletters.command("show")
@click.argument("pipeline", type=click.Path())
@click.argument("ids", nargs=-1, type=int, required=True)
@_state_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array of the letters.")
@handle_errors
def deadletters_show(
    pipeline: str, ids: tuple[int, ...], state_dir: Path | None, as_json: bool
) -> None:
    """Print dead letters in full, as JSON: the record as an object (its text when it never
    parsed), times in ISO 8601 (PIPELINE: a file, or a pipeline's name)."""
    from tideflow.cli.listing import dead_letter_json

    target = resolve(pipeline, state_dir=state_dir)
    store = _store_for(target)
    try:
        rows = store.ledger.letters(target.name, ids=list(ids))
    finally:
        store.close()
    letters = [dead_letter_json(row) for row in rows]
    missing = sorted(set(ids) - {letter["id"] for letter in letters})
    if as_json:
        click.echo(json.dumps(letters, indent=2))
    else:
        for letter in letters:
            click.echo(json.dumps(letter, indent=2))
    if missing:
        raise ConfigError(
            f"{target.name} has no dead letter with id {', '.join(map(str, missing))}"
        )


@deadletters.command("replay")
@click.argument("pipeline", type=click.Path())
@click.option("--step", required=True, help="Replay the records that failed at this step.")
@click.option("--id", "ids", multiple=True, type=int, help="Only these ledger ids.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a field.")
@click.option(
    "--strict",
    is_flag=True,
    help="Refuse the replay when any letter cannot be replayed (raw text rather than a "
    "record), instead of skipping it.",
)
@handle_errors
def deadletters_replay(
    pipeline: str, step: str, ids: tuple[int, ...], sets: tuple[str, ...], strict: bool
) -> None:
    """Send dead letters through the pipeline again, from the step where they failed.

    A source's letters go through its parsing settings again (`schema_overrides`). Letters
    that hold raw text rather than a record are listed and skipped (or, with --strict, the
    replay is refused); they stay in the ledger."""
    from tideflow.observe.progress import print_summary
    from tideflow.run import runner

    spec, base = load(pipeline, sets)
    result = runner.replay(spec, base, step, list(ids), strict=strict)
    print_summary(result, out, pipeline)


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

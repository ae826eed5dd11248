"""``tideflow run``: a plain run, its dry run (``--dry-run``) and preview (``--preview``),
a group worker (``--worker-id``) and the supervisor of group workers (``--workers``), with
the run's metrics and health endpoints."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from tideflow.cli.common import (
    EXIT_FAILED,
    EXIT_INCOMPLETE,
    err,
    handle_errors,
    load,
    out,
)
from tideflow.errors import ConfigError, StateLostError, require
from tideflow.observe.logs import LOG_FORMATS
from tideflow.observe.logs import configure as configure_logging
from tideflow.secrets import redact
from tideflow.spec.models import PipelineSpec


@click.command()
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
    from tideflow.core.observer import RunObserver
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
    from tideflow.run.stages import plan_stages
    from tideflow.run.workers import Supervisor, default_prefix

    # Refused here once, rather than by each worker it would start.
    plan_stages(spec)

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

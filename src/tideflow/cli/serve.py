"""``tideflow serve``: the REST API, the web UI and /metrics for a folder of pipelines."""

from __future__ import annotations

from pathlib import Path

import click

from tideflow.cli.common import err, handle_errors
from tideflow.errors import require


@click.command()
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

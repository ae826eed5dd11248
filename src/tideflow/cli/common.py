"""What the commands of ``tideflow`` share: the consoles, exit codes, the error handling
that turns tideflow errors into a message and an exit code, loading a pipeline file with
``--set`` overrides, and the options and lookups of commands that take a pipeline's name.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape

from tideflow.cli.targets import Target, require_file, resolve
from tideflow.errors import ConfigError, StateLostError, TideflowError
from tideflow.observe.logs import json_enabled
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


def state_dir_option(fn: F) -> F:
    """``--state-dir``: where to look a pipeline given by name up (its ``.tideflow``)."""
    return click.option(
        "--state-dir",
        default=None,
        type=click.Path(file_okay=False, path_type=Path),
        help="Look PIPELINE's name up in this state folder (a .tideflow) instead of here.",
    )(fn)


def store_for(target: Target) -> Any:
    """The state store of a resolved pipeline (file or name)."""
    from tideflow.state.locate import open_state_store

    return open_state_store(target.state, target.base)

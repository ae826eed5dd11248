"""The ``tideflow`` command: the group and its commands, one module per command group.

Exit codes: 0 success, 1 the pipeline failed, 2 the configuration is invalid, 3 a bounded
run ended before it read all it was meant to.
"""

from __future__ import annotations

import click

from tideflow.cli.deadletters import deadletters
from tideflow.cli.project import connectors, init, pii, schema, test_command, validate
from tideflow.cli.run import run
from tideflow.cli.serve import serve
from tideflow.cli.state import state
from tideflow.cli.topics import topics
from tideflow.observe.logs import configure as configure_logging


def setup_logging(verbose: int) -> None:
    """Log to stderr, redacting secrets; -v for info, -vv for debug."""
    configure_logging(verbose)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(package_name="tideflow")
def cli(verbose: int) -> None:
    """tideflow: declarative data pipelines, batch and streaming."""
    setup_logging(verbose)


cli.add_command(run)
cli.add_command(serve)
cli.add_command(validate)
cli.add_command(init)
cli.add_command(connectors)
cli.add_command(schema)
cli.add_command(topics)
cli.add_command(state)
cli.add_command(deadletters)
cli.add_command(pii)
cli.add_command(test_command)


def main() -> None:
    """Entry point of the ``tideflow`` script."""
    cli()


if __name__ == "__main__":
    main()

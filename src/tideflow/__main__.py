"""``python -m tideflow``: the same as the ``tideflow`` command."""

from tideflow.cli.main import cli

cli(prog_name="tideflow")

"""``python -m tideflow``: the same as the ``tideflow`` command."""

from tideflow.cli.entry import main

main(prog_name="tideflow")

"""The test kit (``tideflow.testing``): the demo API under its module path, and the
``memory`` source and sink, which run pipelines but are not part of the product surface."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import tideflow


def test_the_demo_api_runs_as_a_module_of_the_test_kit() -> None:
    # The command README and `tideflow init` print, with a free port instead of 8765.
    src = str(Path(tideflow.__file__).parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tideflow.testing.fake_api", "--port", "0", "--records", "3"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("serving 3 records on http://127.0.0.1:"), line
        url = line.split(" on ", 1)[1].split()[0].rstrip("/")
        with urllib.request.urlopen(f"{url}/page?page=1&per_page=10", timeout=10) as reply:
            body = json.load(reply)
        assert len(body["data"]["items"]) == 3
    finally:
        proc.terminate()
        proc.wait(timeout=10)

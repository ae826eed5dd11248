#!/usr/bin/env bash
# Install dev dependencies, start the local services the tests need, run lint, types and tests.
# Used by `make test` (the README's second Quickstart command) and by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --upgrade pip setuptools  # the venv's own setuptools is old, with known advisories
"$VENV/bin/pip" install --quiet -e ".[dev,s3]"

# The service's browser test drives Debian's Chromium (Playwright never downloads a browser).
if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  apt-get install -y -qq chromium >/dev/null || echo "chromium could not be installed: the browser test will skip"
fi

bash scripts/services.sh || echo "some services are down: the tests that need them will fail (CI) or skip"

echo "== ruff"
"$VENV/bin/ruff" check src tests benchmarks
"$VENV/bin/ruff" format --check src tests benchmarks
echo "== mypy"
"$VENV/bin/mypy"
echo "== pytest"
"$VENV/bin/python" -m pytest --durations=30 "$@"

# The two Quickstart commands, and the pieces they are made of.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: quickstart test lint typecheck unit services faults bench docs site clean

# Create a virtual environment, install tideflow, run the flagship example on embedded defaults.
quickstart:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	$(BIN)/tideflow run examples/quickstart/pipeline.yaml

# Install the dev dependencies, start the local services the tests need, run every check.
test:
	bash scripts/test.sh

services:
	bash scripts/services.sh

lint:
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck:
	$(BIN)/mypy

docs:
	$(BIN)/python -m tideflow.cli.docs > docs/connectors.md
	$(BIN)/python -m tideflow.cli.expressions_doc > docs/expressions.md
	$(BIN)/python -m tideflow.codegen

# The documentation site (README, docs/, the generated reference) into site/; warnings fail it.
site: docs
	$(BIN)/mkdocs build --strict

# The whole fault-injection suite with every trial (CI runs it with fewer seeds in `make test`).
faults:
	TIDEFLOW_FAULTS_FULL=1 $(BIN)/python -m pytest tests/faults

bench:
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache examples/*/out examples/*/.tideflow site

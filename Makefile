# gatewatch: `make serve` runs the gateway, `make test` runs lint, type checks and tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install serve demo test check lint typecheck bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

serve: install
	$(BIN)/gatewatch serve $(ARGS)

demo: install
	$(BIN)/gatewatch demo $(ARGS)

lint: install
	$(BIN)/ruff check gatewatch tests bench
	$(BIN)/ruff format --check gatewatch tests bench

typecheck: install
	$(BIN)/mypy

check: lint typecheck

test: check
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: install
	$(BIN)/python bench/run.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

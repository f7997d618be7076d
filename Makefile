# gatewatch: `make serve` runs the gateway, `make test` runs lint, type checks and tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install serve demo test test-postgres check lint typecheck browser prometheus bench clean

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

test: check browser prometheus
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-postgres

# The gateway's API, usage, billing, export, alert and retention tests once more with PostgreSQL
# as the store (the store's own conformance tests run on both engines in every run).
PG_SUITES := tests/test_api.py tests/test_usage.py tests/test_usage_scoping.py tests/test_billing.py \
	tests/test_export.py tests/test_alerts.py tests/test_retention.py tests/test_proxy_records.py
test-postgres: install
	GATEWATCH_TEST_DATABASE=postgresql $(BIN)/python -m pytest -q $(PG_SUITES)

# Debian's chromium for the dashboard tests (tests/test_ui.py drive it with Playwright; about a
# minute to install). Outside CI a failed install only warns, and those tests skip.
browser:
	@command -v chromium >/dev/null 2>&1 || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  { [ "$$CI" != "true" ] && echo "chromium could not be installed: the dashboard tests will skip"; }

# Debian's prometheus for tests/test_prometheus.py (a real server scrapes the gateway; about
# half a minute to install). Outside CI a failed install only warns, and that test skips.
prometheus:
	@command -v prometheus >/dev/null 2>&1 || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null) || \
	  { [ "$$CI" != "true" ] && echo "prometheus could not be installed: tests/test_prometheus.py will skip"; }

bench: install
	$(BIN)/python bench/run.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# Two commands set everything up on a fresh clone with only python3, git and make:
#   make demo   a full offline session (replay server, simulated broker, local files)
#   make test   lint, format check and the whole test suite (what .ci/run runs)
#   make ui     the Prefect UI: a Prefect server and the deployments served on it (Ctrl-C stops)
#   make sql    the DuckDB report in the DuckDB shell, read-only (docs/reports.md)
VENV   := .venv
PY     := $(VENV)/bin/python
UV     := $(VENV)/bin/uv
STAMP  := $(VENV)/.synced-stamp
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: demo test lint format bench clean chromium sql ui

$(STAMP): pyproject.toml uv.lock
	test -x $(PY) || python3 -m venv $(VENV)
	test -x $(UV) || $(PY) -m pip install --quiet uv
	$(UV) sync --locked --python $(PY)
	test -x $(VENV)/bin/duckdb  # the DuckDB shell, from the duckdb-cli package
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tradeday demo

# PREFECT_HOME (default data/prefect) and PREFECT_SERVER_API_PORT (default 4200 if free) apply
ui: $(STAMP)
	$(VENV)/bin/tradeday ui

# REPORT=path for another report file; quit with .quit (an open shell defers sessions' reports)
REPORT ?= data/reports.duckdb
sql: $(STAMP)
	$(VENV)/bin/duckdb -readonly $(REPORT)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: $(STAMP) lint chromium
	$(PY) -m pytest -q

# Debian's Chromium for the browser test (tests/test_ui_browser.py), never `playwright install`.
# Best effort: without root or apt the browser test skips and says why.
chromium:
	@if [ -x /usr/bin/chromium ]; then exit 0; fi; \
	if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
			|| echo "chromium: apt-get install failed; the browser test will skip"; \
	else echo "chromium: /usr/bin/chromium missing and apt-get as root unavailable; the browser test will skip"; fi

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Every benchmark, one table (docs/benchmarks.md); BENCH_ARGS=--quick for a fast check.
bench: $(STAMP)
	$(PY) -m benchmarks $(BENCH_ARGS)

clean:
	rm -rf $(VENV) data test-output .pytest_cache .ruff_cache

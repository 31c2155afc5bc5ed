# Two commands set everything up on a fresh clone with only python3, git and make:
#   make demo   a full offline session (replay server, simulated broker, local files)
#   make test   lint and the whole test suite (what .ci/run runs)
VENV   := .venv
PY     := $(VENV)/bin/python
UV     := $(VENV)/bin/uv
STAMP  := $(VENV)/.synced-stamp
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: demo test lint format bench clean

$(STAMP): pyproject.toml uv.lock
	test -x $(PY) || python3 -m venv $(VENV)
	test -x $(UV) || $(PY) -m pip install --quiet uv
	$(UV) sync --locked --python $(PY)
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tradeday demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: $(STAMP) lint
	$(PY) -m pytest -q

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) data test-output .pytest_cache .ruff_cache

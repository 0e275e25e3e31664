# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Both create .venv, install torch first (pinned: the local CPU wheel, not gigabytes of CUDA),
# then circuitgraph with its dev extra.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m circuitgraph

# Lint, format check and type check first (seconds), then the tests.
test: $(STAMP)
	$(VENV)/bin/ruff check circuitgraph tests benchmarks examples
	$(VENV)/bin/ruff format --check circuitgraph tests benchmarks examples
	$(VENV)/bin/mypy
	$(PY) -m pytest

clean:
	rm -rf $(VENV)

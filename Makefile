# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Both create .venv, install torch first (pinned: the local CPU wheel, not gigabytes of CUDA),
# then circuitgraph with its dev extra and transformer-lens 3.x (HookedTransformer and the bridge).
# `make test-tl4` builds a second venv, .venv-tl4, with transformer-lens 4.x (the bridge only:
# 4.x removed HookedTransformer) and runs the backend tests there.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
VENV_TL4 := .venv-tl4
PY_TL4 := $(VENV_TL4)/bin/python
STAMP_TL4 := $(VENV_TL4)/.installed

.PHONY: demo test test-tl4 venv clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]' 'transformer-lens>=3.9,<4'
	touch $(STAMP)

$(STAMP_TL4): pyproject.toml
	$(PYTHON) -m venv $(VENV_TL4)
	$(PY_TL4) -m pip install -q --upgrade pip
	$(PY_TL4) -m pip install -q torch==2.13.0
	$(PY_TL4) -m pip install -q -e '.[dev]' 'transformer-lens>=4,<5'
	touch $(STAMP_TL4)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m circuitgraph

# Lint, format check and type check first (seconds), then the tests.
test: $(STAMP)
	$(VENV)/bin/ruff check circuitgraph tests benchmarks examples
	$(VENV)/bin/ruff format --check circuitgraph tests benchmarks examples
	$(VENV)/bin/mypy
	$(PY) -m pytest

# The TransformerBridge backend under transformer-lens 4.x: the backend tests only (HookedTransformer
# tests there skip with the reason).
test-tl4: $(STAMP_TL4)
	$(PY_TL4) -c "import sys; from importlib.metadata import version; v = version('transformer-lens'); print('transformer-lens', v); sys.exit(not v.startswith('4.'))"
	$(PY_TL4) -m pytest tests/test_bridge.py tests/test_architecture.py

clean:
	rm -rf $(VENV) $(VENV_TL4)

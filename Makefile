# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Both create .venv, install torch first (pinned: the local CPU wheel, not gigabytes of CUDA),
# then circuitgraph with its dev extra and transformer-lens 3.x (HookedTransformer and the bridge).
# `make test-tl4` builds a second venv, .venv-tl4, with transformer-lens 4.x (the bridge only:
# 4.x removed HookedTransformer) and runs the backend tests there.
# `make test-launchers` builds a third venv, .venv-launchers, with the `launchers` extra (submitit,
# Ray and their Hydra plugins) and runs real sweeps through them (tests/test_launchers.py).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
VENV_TL4 := .venv-tl4
PY_TL4 := $(VENV_TL4)/bin/python
STAMP_TL4 := $(VENV_TL4)/.installed
VENV_LAUNCHERS := .venv-launchers
PY_LAUNCHERS := $(VENV_LAUNCHERS)/bin/python
STAMP_LAUNCHERS := $(VENV_LAUNCHERS)/.installed

.PHONY: demo test test-tl4 test-launchers venv clean

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

$(STAMP_LAUNCHERS): pyproject.toml
	$(PYTHON) -m venv $(VENV_LAUNCHERS)
	$(PY_LAUNCHERS) -m pip install -q --upgrade pip
	$(PY_LAUNCHERS) -m pip install -q torch==2.13.0
	$(PY_LAUNCHERS) -m pip install -q -e '.[dev,launchers]' 'transformer-lens>=3.9,<4'
	touch $(STAMP_LAUNCHERS)

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

# Sweeps through the optional launchers (submitit's local executor, a local Ray) against the basic
# launcher, plus the missing-plugin messages; Ray's usage statistics stay off (no network here).
test-launchers: $(STAMP_LAUNCHERS)
	RAY_USAGE_STATS_ENABLED=0 $(PY_LAUNCHERS) -m pytest tests/test_launchers.py \
		tests/test_cli.py::test_launcher_presets_compose tests/test_cli_report.py::test_group_and_launcher_typos_name_the_fix

clean:
	rm -rf $(VENV) $(VENV_TL4) $(VENV_LAUNCHERS)

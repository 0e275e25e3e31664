"""The command line: ``python -m circuitgraph`` (Hydra runs) and ``circuitgraph-compare`` (sweep
tables). See :mod:`circuitgraph.cli.main`, :mod:`circuitgraph.cli.config` and
:mod:`circuitgraph.cli.compare`.

The console entry point is ``circuitgraph.cli.main:main`` (``circuitgraph.cli.main`` is the
module). Names are imported on first use, so ``from circuitgraph.cli import compare_runs`` does not import
Hydra's run machinery."""

from importlib import import_module

_WHERE = {
    "run": "circuitgraph.cli.main",
    "Config": "circuitgraph.cli.config",
    "ConfigError": "circuitgraph.cli.config",
    "validate": "circuitgraph.cli.config",
    "compare_runs": "circuitgraph.cli.compare",
    "format_table": "circuitgraph.cli.compare",
}

__all__ = list(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'circuitgraph.cli' has no attribute {name!r}")

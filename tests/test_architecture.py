"""The package's layers, checked from its source (ast): imports only go down the pipeline, there is
no import cycle, and a function-local import is only for an optional dependency, with a comment.

The layers, lowest first (docs/architecture.md draws them)::

    errors, atomic, files → tasks → models → graph → engine → zoo → attribution → sae → circuit →
    evaluation → hypothesis → export → cli
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "circuitgraph"
LAYERS = [
    ("errors", "atomic", "files"),
    ("tasks",),
    ("models",),
    ("graph",),
    ("engine",),
    ("zoo",),
    ("attribution",),
    ("sae",),
    ("circuit",),
    ("evaluation",),
    ("hypothesis",),
    ("export",),
    ("cli",),
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}
# Third-party modules a function may import lazily: optional extras, or heavy and rarely needed.
OPTIONAL = {
    "matplotlib",
    "sae_lens",
    "hydra_plugins",
    "submitit",
    "ray",
    "webbrowser",
    "pyvis",
    "transformer_lens",
    "transformers",
    "tokenizers",
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _resolve(node: ast.ImportFrom | ast.Import, module: str, is_package: bool) -> list[str]:
    """The circuitgraph modules an import statement loads (a ``from pkg import sub`` loads ``pkg.sub``)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.startswith("circuitgraph")]
    base = node.module or ""
    if node.level:
        parent = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
        base = ".".join(parent + ([base] if base else []))
    if not base.startswith("circuitgraph"):
        return []
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]


def _imports() -> dict[str, list[tuple[str, ast.stmt, bool]]]:
    """module → [(imported circuitgraph module, statement, inside a function?)]"""
    out: dict[str, list[tuple[str, ast.stmt, bool]]] = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        local = {
            id(n)
            for f in ast.walk(tree)
            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
            for n in ast.walk(f)
            if isinstance(n, (ast.Import, ast.ImportFrom))
        }
        found = []
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _resolve(node, module, path.name == "__init__.py"):
                    found.append((target, node, id(node) in local))
        out[module] = found
    return out


IMPORTS = _imports()


def _edges() -> dict[str, set[str]]:
    """Import edges, with the packages whose ``__init__`` an import runs on the way (except the
    top-level package's face, which imports everything for users, and the importer's own
    packages, which are already being imported when it runs)."""
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, found in IMPORTS.items():
        own = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
        for target, _, _ in found:
            parts = target.split(".")
            for i in range(2, len(parts) + 1):
                name = ".".join(parts[:i])
                if name in MODULES and name != module and (name not in own or i == len(parts)):
                    edges[module].add(name)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in RANK else None


def test_the_layers_cover_the_package():
    tops = {m.split(".")[1] for m in MODULES if m.count(".") >= 1}
    assert tops - set(RANK) <= {"__main__"}, f"a new top-level module needs a layer: {sorted(tops - set(RANK))}"


def test_no_import_cycle():
    assert _cycles(_edges()) == []


def test_cycle_detection_finds_a_planted_cycle():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(edges) == [["a", "b", "c"]]


def test_imports_only_go_down_the_layers():
    upward = []
    for module, found in IMPORTS.items():
        here = _layer(module)
        if here is None:  # the package's face and __main__
            continue
        for target, node, _ in found:
            there = _layer(target)
            if there is not None and RANK[there] > RANK[here]:
                upward.append(f"{module}:{node.lineno} imports {target}")
    assert upward == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_function_local_imports_are_optional_dependencies_with_a_reason(module):
    path = MODULES[module]
    lines = path.read_text().splitlines()
    tree = ast.parse("\n".join(lines))
    bad = []
    local = sorted(
        {
            (n.lineno, n.end_lineno or n.lineno, n)
            for f in ast.walk(tree)
            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
            for n in ast.walk(f)
            if isinstance(n, (ast.Import, ast.ImportFrom))
        },
        key=lambda t: t[0],
    )
    explained_until = -1  # last line of a run of consecutive imports that a comment explains
    for start, end, node in local:
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or "."]
        roots = {n.split(".")[0] for n in names}
        # a comment on the statement or the line above it; or the statement continues an explained run
        explained = any("#" in lines[i] for i in range(max(0, start - 2), end)) or explained_until == start - 1
        explained_until = end if explained else -1
        if not roots <= OPTIONAL or not explained:
            bad.append(f"line {start}: {', '.join(names)}")
    assert bad == [], f"{module}: function-local imports must be optional dependencies with a comment"

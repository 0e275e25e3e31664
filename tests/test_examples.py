"""Every script under examples/ runs (with small settings) so that none of them rots."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


def run_example(*args: str, timeout: int = 240) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{args[0]} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def test_every_example_is_tested():
    scripts = sorted(p.name for p in EXAMPLES.glob("*.py"))
    assert scripts == [
        "01_python_api.py",
        "02_custom_task_jsonl.py",
        "03_sweep.py",
        "04_open_html.py",
        "05_feature_circuit.py",
    ]


def test_01_python_api(tmp_path):
    out = run_example("examples/01_python_api.py", "--limit", "8", "--out", str(tmp_path))
    assert "faithfulness" in out and "CPR" in out and "saved" in out
    assert (tmp_path / "circuit.json").is_file() and (tmp_path / "circuit.safetensors").is_file()


def test_02_custom_task_jsonl():
    out = run_example("examples/02_custom_task_jsonl.py", "--limit", "8", "--method", "eap")
    assert "task 'induction_repeats': 8 examples" in out and "Circuit(" in out


def test_task_file_matches_its_generator(tmp_path):
    data = EXAMPLES / "data" / "induction_repeats.jsonl"
    run_example("examples/data/make_induction_repeats.py", "--out", str(tmp_path / "x.jsonl"))
    assert (tmp_path / "x.jsonl").read_text() == data.read_text()
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    assert len({len(r["clean"]) for r in rows}) == 1 and all(r["clean"][0] == 0 for r in rows)


def test_03_sweep(tmp_path):
    out = run_example(
        "examples/03_sweep.py",
        "--quick",
        "--out",
        str(tmp_path / "sweep"),
        "--methods",
        "eap,eap-ig",
        "--targets",
        "0.9",
    )
    assert "| run | status |" in out and "| eap |" in out and "| eap-ig |" in out
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir()) == ["0", "1"]


def test_04_open_html(tmp_path):
    html = tmp_path / "view.html"
    out = run_example("examples/04_open_html.py", "--limit", "8", "--out", str(html))
    assert f"graph.html: {html.resolve()}" in out and "no display" in out
    assert html.is_file() and "<html" in html.read_text().lower()


def test_05_feature_circuit(tmp_path):
    """The feature-level circuit reaches its target when re-measured by patching, reloads with its
    SAE sites, and its HTML labels feature nodes with their top tokens."""
    import re

    import torch

    from circuitgraph import Circuit, zoo
    from circuitgraph.evaluation import faithfulness
    from circuitgraph.sae import zoo_saes

    out = run_example("examples/05_feature_circuit.py", "--limit", "8", "--steps", "3", "--out", str(tmp_path))
    measured = float(re.search(r"re-measured faithfulness ([0-9.]+)", out).group(1))
    assert measured >= 0.8, out
    kinds = re.search(r"circuit nodes by kind: (.*)", out).group(1)
    assert "'feature'" in kinds and "a1.h3.k" in out
    entry = zoo.load("induction", device="cpu")
    circuit = Circuit.load(tmp_path / "circuit.json", entry.model)
    assert [s.name for s in circuit.graph.sites] == ["attn_out0", "resid_pre1"]
    circuit.graph.attach_saes(zoo_saes("induction"))
    torch.set_num_threads(1)
    again = faithfulness(entry.model, circuit.graph, entry.task("induction").select(slice(0, 8)), circuit.mask)
    assert abs(again - measured) < 1e-3
    html = (tmp_path / "graph.html").read_text()
    assert '"topTokens"' in html and "SAE feature" in html and "resid_pre1.f" in html


@pytest.mark.skipif(not (EXAMPLES / "README.md").is_file(), reason="no examples/README.md")
def test_examples_readme_names_every_script():
    text = (EXAMPLES / "README.md").read_text()
    for p in EXAMPLES.glob("*.py"):
        assert p.name in text

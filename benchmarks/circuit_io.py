"""What the file checks cost: save and load time, and the loading process's peak memory, of a
circuit on the GPT-2-small shape (q/k/v split), with MLPs as nodes or split into neurons.

    python benchmarks/circuit_io.py            # one row per granularity, as JSON lines
    python benchmarks/circuit_io.py --neurons 0 256 512

Each circuit is built and saved in one process and loaded in a fresh one, so that the peak RSS is
the load's own (interpreter and torch included). Times are the minimum of ``--repeats`` runs;
``sha256_s`` is the part of a load spent hashing the tensor file (the pair binding).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from circuitgraph import Circuit, Graph, top_n
from circuitgraph.graph import Architecture


def build_and_save(neurons: int, path: Path, repeats: int) -> dict:
    torch.set_num_threads(1)
    split = {layer: list(range(0, 3072, 3072 // neurons)) for layer in range(12)} if neurons else None
    g = Graph(Architecture(12, 12, True, 768, 3072), neurons=split)
    g.scores = torch.randn(g.valid.shape, generator=torch.Generator().manual_seed(0)) * g.valid
    c = Circuit(g, top_n(g, 2000), metadata={"task": "benchmark"}, faithfulness=0.9)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        c.save(path)
        times.append(time.perf_counter() - t)
    return {
        "neurons_per_layer": neurons,
        "cells": g.valid.numel(),
        "tensor_mb": round(path.with_suffix(".safetensors").stat().st_size / 1e6, 1),
        "save_s": round(min(times), 3),
    }


def load(path: Path, repeats: int) -> dict:
    torch.set_num_threads(1)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        c = Circuit.load(path)
        times.append(time.perf_counter() - t)
        del c
    t = time.perf_counter()
    h = hashlib.sha256()  # what the pair binding's check reads (circuitgraph.files.sha256_file)
    with open(path.with_suffix(".safetensors"), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return {
        "load_s": round(min(times), 3),
        "sha256_s": round(time.perf_counter() - t, 3),
        "load_peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--neurons", type=int, nargs="*", default=[0, 256, 512], help="neurons per layer (0: MLP nodes)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--phase", choices=("save", "load"), help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.phase == "save":
        print(json.dumps(build_and_save(a.neurons[0], Path(a.path), a.repeats)))
        return
    if a.phase == "load":
        print(json.dumps(load(Path(a.path), a.repeats)))
        return
    for n in a.neurons:
        with tempfile.TemporaryDirectory() as d:
            path = str(Path(d) / "c.json")
            row = {}
            for phase in ("save", "load"):
                cmd = [sys.executable, __file__, "--phase", phase, "--path", path, "--neurons", str(n)]
                out = subprocess.run([*cmd, "--repeats", str(a.repeats)], capture_output=True, text=True, check=True)
                row.update(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()

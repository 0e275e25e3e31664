"""The TransformerBridge backend against the HookedTransformer on the same weights.

1. Parity: tiny random HF models of each supported family that HookedTransformer can load from a
   local folder (float64), loaded both ways from one folder; prints the largest relative difference
   of logits, of eap / eap-ig / exact scores, and of eap scores of the all-neuron graph. (Gemma-2/3
   run on the bridge only: TransformerLens 3.9's HookedTransformer cannot load a local Gemma folder;
   tests/test_bridge.py checks them for exactness.)
2. Speed: EAP on a GPT-2-like shape (6 layers, d_model 256, 8 heads, vocab 2000; batch 16 × 32
   tokens, float32, one thread) on each backend, median of 3 after a warm-up.

    python benchmarks/bridge.py          (about a minute on one CPU core; needs transformer-lens 3.x)
"""

from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path

import torch

import circuitgraph as cg
from circuitgraph.models import load_bridge
from circuitgraph.models.loading import load_local_model
from circuitgraph.models.tiny import save_tiny_hf

# (family, key/value heads): GPT-NeoX has parallel blocks, the others from Llama on gated MLPs
FAMILIES = [("gpt2", None), ("gpt_neox", None), ("llama", 2), ("qwen2", 2), ("mistral", 2)]


def hooked(folder: Path, dtype: torch.dtype):
    """The HookedTransformer of the folder with the weights as HF has them (as the bridge has them)."""
    return load_local_model(
        folder,
        "cpu",
        dtype,
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
    )


def task(vocab: int, n: int, seq: int) -> cg.Task:
    g = torch.Generator().manual_seed(0)
    ids = [torch.randint(4, vocab, shape, generator=g) for shape in ((n, seq), (n, seq), (n,), (n,))]
    return cg.Task(clean=ids[0], corrupted=ids[1], answer=ids[2], wrong=ids[3])


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def main() -> None:
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp())
    print("| family (tiny, float64) | logits | eap | eap-ig | exact | eap, neurons |\n|---|---|---|---|---|---|")
    for i, (family, kv) in enumerate(FAMILIES):
        folder = save_tiny_hf(family, root / f"m{i}", n_kv_heads=kv)  # (no family name in the path: see tests)
        b, h = load_bridge(folder, "cpu", torch.float64), hooked(folder, torch.float64)
        t = task(32, 4, 6)
        row = [rel(b(t.clean), h(t.clean))]
        for method in ("eap", "eap-ig", "exact"):
            gb, gh = cg.Graph.from_model(b), cg.Graph.from_model(h)
            sb = cg.attribute(b, gb, t, method=method, progress=False).clone()
            row.append(rel(sb, cg.attribute(h, gh, t, method=method, progress=False)))
        gb, gh = cg.Graph.from_model(b, neurons=True), cg.Graph.from_model(h, neurons=True)
        sb = cg.attribute(b, gb, t, method="eap", progress=False).clone()
        row.append(rel(sb, cg.attribute(h, gh, t, method="eap", progress=False)))
        print(f"| {family}{' (GQA)' if kv else ''} | " + " | ".join(f"{x:.1e}" for x in row) + " |")

    folder = save_tiny_hf("gpt2", root / "big", n_layers=6, d_model=256, n_heads=8, vocab=2000, n_ctx=64)
    t = task(2000, 16, 32)
    print("\n| backend | EAP median s |\n|---|---|")
    for name, model in (
        ("HookedTransformer", hooked(folder, torch.float32)),
        ("TransformerBridge", load_bridge(folder)),
    ):
        g = cg.Graph.from_model(model)
        cg.attribute(model, g, t, method="eap", progress=False)  # warm-up (and the bridge's hook probe)
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            cg.attribute(model, g, t, method="eap", progress=False)
            times.append(time.perf_counter() - t0)
        print(f"| {name} | {sorted(times)[1]:.3f} |")


if __name__ == "__main__":
    main()

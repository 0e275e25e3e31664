"""Graph size, attribution time and peak memory per granularity on the GPT-2-small shape.

Random weights (no download), d_vocab 50257, EAP with corrupted patching, batch 8 × 16 tokens.
Each granularity runs in its own subprocess so each peak RSS is its own. Usage:
    python benchmarks/scale.py [--granularity nodes neurons] [--threads 2] [--device cpu]
Prints one line per granularity: ``granularity=… nodes=… edges=… eap_s=… peak_rss_gb=…``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def run_one(granularity: str, device: str, threads: int, batch: int, seq: int) -> dict:
    torch.set_num_threads(threads)
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    import circuitgraph as cg

    cfg = HookedTransformerConfig(n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, n_ctx=1024,
                                  d_vocab=50257, act_fn="gelu_new", normalization_type="LN", device=device, seed=0)
    model = HookedTransformer(cfg).eval()
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, cfg.d_vocab, (batch, seq), generator=g).to(device)
    corrupted = torch.randint(0, cfg.d_vocab, (batch, seq), generator=g).to(device)
    answer = torch.randint(0, cfg.d_vocab, (batch,), generator=g).to(device)
    task = cg.Task(clean=clean, corrupted=corrupted, answer=answer, wrong=(answer + 1) % cfg.d_vocab, name="bench")
    t0 = time.perf_counter()
    graph = cg.Graph.from_model(model, neurons=(granularity == "neurons") or None)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    cg.attribute(model, graph, task, method="eap", progress=False)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    eap_s = time.perf_counter() - t0
    return {"granularity": granularity, "nodes": graph.n_src + 1, "sources": graph.n_src, "destinations": graph.n_dst,
            "edges": graph.n_edges, "build_s": round(build_s, 2), "eap_s": round(eap_s, 2),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2),
            "batch": f"{batch}x{seq}", "device": device, "threads": threads}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--granularity", nargs="+", default=["nodes", "neurons"], choices=["nodes", "neurons"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=16)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.device, args.threads, args.batch, args.seq)))
        return
    for gran in args.granularity:
        out = subprocess.run([sys.executable, __file__, "--one", gran, "--device", args.device, "--threads", str(args.threads),
                              "--batch", str(args.batch), "--seq", str(args.seq)], capture_output=True, text=True)
        if out.returncode:
            print(f"granularity={gran} FAILED\n{out.stderr[-2000:]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(" ".join(f"{k}={v}" for k, v in r.items()))


if __name__ == "__main__":
    main()

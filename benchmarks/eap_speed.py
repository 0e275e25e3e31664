"""EAP cost against the floor of the passes it needs, on the GPT-2-small shape.

Random weights (no download), d_vocab 50257, batch 32 × 16 tokens, q/k/v split graph (32,491
edges), corrupted patching, logit-difference metric, ``torch.set_num_threads(1)`` on CPU.

floor: one clean forward + one corrupted forward (no grad) + one backward of the metric to the
activations (weights frozen, as attribution needs no weight gradients), no hooks. For reference we
also print the floor with weight gradients (a plain ``loss.backward()``).
EAP: ``attribute(model, graph, task, method="eap")`` end to end, scores for every edge.

The last line is ``eap_s=… floor_s=… ratio_to_floor=… peak_rss_gb=…``. Usage:
    python benchmarks/eap_speed.py [--device cpu|cuda] [--repeats 3] [--method eap]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time

import torch


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux: KiB


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--method", default="eap")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    import circuitgraph as cg

    cfg = HookedTransformerConfig(
        n_layers=12,
        d_model=768,
        n_heads=12,
        d_head=64,
        d_mlp=3072,
        n_ctx=1024,
        d_vocab=50257,
        act_fn="gelu_new",
        normalization_type="LN",
        device=args.device,
        seed=0,
    )
    model = HookedTransformer(cfg).eval()
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, cfg.d_vocab, (args.batch, args.seq), generator=g).to(args.device)
    corrupted = torch.randint(0, cfg.d_vocab, (args.batch, args.seq), generator=g).to(args.device)
    answer = torch.randint(0, cfg.d_vocab, (args.batch,), generator=g).to(args.device)
    task = cg.Task(clean=clean, corrupted=corrupted, answer=answer, wrong=(answer + 1) % cfg.d_vocab, name="bench")
    graph = cg.Graph.from_model(model)

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def floor(weight_grads: bool) -> float:
        sync()
        t0 = time.perf_counter()
        with torch.no_grad():
            model(task.corrupted)
        if weight_grads:
            task.score(model(task.clean)).mean().backward()
            model.zero_grad(set_to_none=True)
        else:
            for p in model.parameters():
                p.requires_grad_(False)
            x = {}

            def leaf(t, hook):
                x["e"] = t.detach().requires_grad_(True)
                return x["e"]

            with model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", leaf)]):
                task.score(model(task.clean)).mean().backward()
            for p in model.parameters():
                p.requires_grad_(True)
        sync()
        return time.perf_counter() - t0

    def eap() -> float:
        sync()
        t0 = time.perf_counter()
        cg.attribute(model, graph, task, method=args.method, progress=False, batch_size=args.batch)
        sync()
        return time.perf_counter() - t0

    floor(False)  # warm-up (allocator, kernels)
    eap()
    floors, floors_w, eaps = [], [], []
    for _ in range(args.repeats):  # interleaved so drift affects both alike
        floors.append(floor(False))
        eaps.append(eap())
        floors_w.append(floor(True))
    f, e, fw = statistics.median(floors), statistics.median(eaps), statistics.median(floors_w)
    print(
        f"device={args.device} threads={args.threads} batch={args.batch}x{args.seq} edges={graph.n_edges} "
        f"method={args.method} repeats={args.repeats}",
        file=sys.stderr,
    )
    print(f"floor_with_weight_grads_s={fw:.3f} (for reference)", file=sys.stderr)
    print(f"eap_s={e:.3f} floor_s={f:.3f} ratio_to_floor={e / f:.3f} peak_rss_gb={peak_rss_gb():.2f}")


if __name__ == "__main__":
    main()

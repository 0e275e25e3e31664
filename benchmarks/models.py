"""EAP and EAP-IG at the published shapes of the models researchers study, against their floors.

Random weights (no download) with the published configs of Pythia-160M (parallel attention+MLP,
25 % rotary), Qwen2.5-0.5B and Llama-3.2-1B (SwiGLU, RMS, grouped keys/values) and Gemma-2-2B
(GeGLU, norms before and after each sublayer, soft-caps, local/global layers); ``llama-3.1-8b``
(bf16) is for GPUs. ``n_ctx`` is 2,048 for all (only the attention-mask buffers depend on it).
Batch 8 × 32 tokens, a q/k/v-split heads + MLPs graph, corrupted patching, logit difference. A
model runs in float32 unless its float32 weights exceed half of 24 GB (then bf16: Gemma-2-2B).

Per model, in one process (so the peak RSS is that model's):

* ``nodes``, ``edges`` of the graph;
* ``eap_s`` and its floor: one corrupted forward (no grad), one clean forward and one backward to
  the activations (weights frozen), no hooks: the passes EAP cannot avoid;
* ``ig_s`` (EAP-IG, 5 steps) and its floor: the corrupted and clean forwards (no grad) and 5
  forward+backward passes;
* ``ratio``: time over floor, each floor measured in the same run, interleaved with its method,
  the fastest of ``--repeats`` for both (another process's load only ever adds time); an untimed
  attribution first pays the one-time set-up (``setup_s``: ungrouping keys/values, first calls);
* ``peak_gb``: peak RSS of the process once the model is built (CUDA: peak allocated memory),
  against ``fwd_gb``, the peak of one clean forward with its activations kept for a backward
  (weights + one forward's activations), measured first.

The floors run on the model as the user built it. Attribution ungroups grouped keys/values (the
graph scores each query head's k and v), and the extra k/v projections this costs are charged to
EAP.

Usage:
    python benchmarks/models.py [--models pythia-160m qwen2.5-0.5b llama-3.2-1b gemma-2-2b]
        [--device cpu|cuda] [--threads 2] [--batch 8] [--seq 32] [--repeats 2] [--dtype auto]
        [--quick] [--results benchmarks/RESULTS.md]
``--quick`` keeps each model's widths and vocabulary but only its first 2 layers (for a smoke
test, or a machine too slow for the full depth: say so next to any figure it gives).
``--results`` appends the table, with the command and machine, to that Markdown file.
``--malloc heap`` runs each model's process with glibc's allocator serving every size from its
heap (``MALLOC_MMAP_MAX_=0``, no trimming): TransformerLens copies its gated-MLP and unembedding
weights transposed on every call (up to 1.2 GB each), and by default each copy is a fresh mapping
whose pages fault in again; that costs a method and its floor alike, but varies by 30 % from pass
to pass. The setting is the process's, not circuitgraph's; it applies to methods and floors alike.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import shlex
import subprocess
import sys
import time

import torch

PUBLISHED = {
    "pythia-160m": dict(
        n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, d_vocab=50304, act_fn="gelu",
        normalization_type="LN", positional_embedding_type="rotary", rotary_dim=16, parallel_attn_mlp=True,
        rotary_adjacent_pairs=False, original_architecture="GPTNeoXForCausalLM",
    ),
    "qwen2.5-0.5b": dict(
        n_layers=24, d_model=896, n_heads=14, n_key_value_heads=2, d_head=64, d_mlp=4864, d_vocab=151936,
        act_fn="silu", gated_mlp=True, normalization_type="RMS", positional_embedding_type="rotary",
        rotary_dim=64, rotary_base=1_000_000, eps=1e-6, original_architecture="Qwen2ForCausalLM",
    ),
    "llama-3.2-1b": dict(
        n_layers=16, d_model=2048, n_heads=32, n_key_value_heads=8, d_head=64, d_mlp=8192, d_vocab=128256,
        act_fn="silu", gated_mlp=True, normalization_type="RMS", positional_embedding_type="rotary",
        rotary_dim=64, rotary_base=500_000, eps=1e-5, original_architecture="LlamaForCausalLM",
    ),
    "gemma-2-2b": dict(
        n_layers=26, d_model=2304, n_heads=8, n_key_value_heads=4, d_head=256, d_mlp=9216, d_vocab=256000,
        act_fn="gelu_pytorch_tanh", gated_mlp=True, normalization_type="RMS",
        use_normalization_before_and_after=True, attn_scores_soft_cap=50.0, output_logits_soft_cap=30.0,
        use_local_attn=True, window_size=4096, attn_types=["local", "global"] * 13, attn_scale=16.0,
        positional_embedding_type="rotary", rotary_dim=256, eps=1e-6, original_architecture="Gemma2ForCausalLM",
    ),
    "llama-3.1-8b": dict(
        n_layers=32, d_model=4096, n_heads=32, n_key_value_heads=8, d_head=128, d_mlp=14336, d_vocab=128256,
        act_fn="silu", gated_mlp=True, normalization_type="RMS", positional_embedding_type="rotary",
        rotary_dim=128, rotary_base=500_000, eps=1e-5, original_architecture="LlamaForCausalLM",
    ),
}  # fmt: skip
DEFAULT_MODELS = ["pythia-160m", "qwen2.5-0.5b", "llama-3.2-1b", "gemma-2-2b"]
# bf16 where float32 does not fit 24 GB: a model runs in float32 when its float32 weights take at most
# half of that (Gemma-2-2B's 12.8 GB of float32 weights peaked at 22 GB in one forward + backward,
# before any attribution: TransformerLens copies W_U's transpose in every forward)
FLOAT32_BUDGET = 24e9
# glibc: every allocation from the heap, which is never trimmed (ignored by other allocators)
HEAP_MALLOC = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**40)}


def n_params(cfg: dict) -> int:
    """Parameters of the HookedTransformer (which keeps W_U apart from W_E even where tied)."""
    d, L, V = cfg["d_model"], cfg["n_layers"], cfg["d_vocab"]
    H, kv, e, m = cfg["n_heads"], cfg.get("n_key_value_heads") or cfg["n_heads"], cfg["d_head"], cfg["d_mlp"]
    attn = d * e * (2 * H + 2 * kv)
    mlp = d * m * (3 if cfg.get("gated_mlp") else 2)
    return 2 * V * d + L * (attn + mlp)


def choose_dtype(cfg: dict, dtype: str) -> torch.dtype:
    if dtype != "auto":
        return getattr(torch, dtype)
    return torch.float32 if 4 * n_params(cfg) <= FLOAT32_BUDGET / 2 else torch.bfloat16


def reset_peak(device: str) -> None:
    """Start a new peak (Linux: clears the process's VmHWM; CUDA: the allocator's peak)."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:  # (not Linux: the peak then includes building the model)
        pass


def peak_gb(device: str) -> float:
    """Peak memory since :func:`reset_peak`: CUDA allocated memory, or the process's peak RSS."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 1e9
    try:
        with open("/proc/self/status") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
        return kib / 1024**2
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux: KiB → GiB


def build(name: str, args: argparse.Namespace):
    """The random-weight model of ``name``'s published config, and a random task for it."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    import circuitgraph as cg

    spec = dict(PUBLISHED[name])
    if args.quick:
        spec["n_layers"] = 2
        if "attn_types" in spec:
            spec["attn_types"] = spec["attn_types"][:2]
    cfg = HookedTransformerConfig(n_ctx=2048, device=args.device, dtype=choose_dtype(spec, args.dtype), seed=0, **spec)
    model = HookedTransformer(cfg).eval()
    for p in model.parameters():  # attribution needs no weight gradients, and neither do the floors
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    V = cfg.d_vocab
    clean, corrupted = (torch.randint(0, V, (args.batch, args.seq), generator=g).to(args.device) for _ in range(2))
    answer = torch.randint(0, V, (args.batch,), generator=g).to(args.device)
    task = cg.Task(clean=clean, corrupted=corrupted, answer=answer, wrong=(answer + 1) % V, name="bench")
    return spec, model, task


class Passes:
    """The passes a method cannot avoid, timed on the model as the user built it."""

    def __init__(self, model, task, device: str) -> None:
        self.model, self.task, self.device = model, task, device

    def sync(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def forward(self, tokens):
        """A clean forward whose embedding is a leaf: its activations are kept for a backward."""
        leaf = {}

        def as_leaf(t, hook):
            leaf["e"] = t.detach().requires_grad_(True)
            return leaf["e"]

        with self.model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", as_leaf)]):
            return self.task.score(self.model(tokens)).mean()

    def timed(self, fn) -> tuple[float, float]:
        """``(wall seconds, CPU seconds of this process)`` of ``fn()``. CPU time counts the work
        done whatever else the machine runs, so on a shared machine it is the steadier of the two."""
        self.sync()
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        self.sync()
        return time.perf_counter() - wall, time.process_time() - cpu

    def floor(self, steps: int) -> tuple[float, float]:
        """EAP (steps 1): corrupted forward, clean forward + backward. EAP-IG: corrupted and clean
        forwards without grad, then ``steps`` forwards + backwards."""

        def run():
            with torch.no_grad():
                self.model(self.task.corrupted)
                if steps > 1:  # EAP-IG's clean sources (its gradients come from the interpolated runs)
                    self.model(self.task.clean)
            for _ in range(steps):
                self.forward(self.task.clean).backward()

        return self.timed(run)


def run_one(name: str, args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    import circuitgraph as cg

    t0 = time.perf_counter()
    spec, model, task = build(name, args)
    build_s = time.perf_counter() - t0
    passes = Passes(model, task, args.device)
    reset_peak(args.device)  # (building the model is not attribution's memory)
    kept = passes.forward(task.clean)  # weights + one forward's activations (kept for a backward)
    fwd_gb = peak_gb(args.device)
    del kept
    passes.floor(1)  # warm-up (allocator, kernels), untimed
    floors = {"eap": [passes.floor(1)], "eap-ig": [passes.floor(5)]}  # (before attribution ungroups k/v)
    graph = cg.Graph.from_model(model)
    # One untimed attribution first: its one-time set-up (ungrouping grouped keys/values, first
    # calls' allocations) is paid once per model, not per batch, and is reported as setup_s.
    setup = passes.timed(lambda: cg.attribute(model, graph, task, method="eap", progress=False, batch_size=args.batch))
    times: dict[str, list[tuple[float, float]]] = {"eap": [], "eap-ig": []}
    for r in range(args.repeats):  # interleaved, so that drift affects a method and its floor alike
        for m, steps in (("eap", 1), ("eap-ig", 5)):
            if r:
                floors[m].append(passes.floor(steps))
            times[m].append(
                passes.timed(
                    lambda m=m, steps=steps: cg.attribute(
                        model, graph, task, method=m, steps=steps, progress=False, batch_size=args.batch
                    )
                )
            )
    out = dict(
        model=name + (" (quick: 2 layers)" if args.quick else ""),
        dtype=str(next(model.parameters()).dtype).replace("torch.", ""),
        params_b=round(n_params(spec) / 1e9, 3),
        nodes=graph.n_src + 1,
        edges=graph.n_edges,
        build_s=round(build_s, 1),
        setup_s=round(setup[0], 1),
    )
    for m, key in (("eap", "eap"), ("eap-ig", "ig")):
        for i, suffix in ((0, ""), (1, "_cpu")):  # wall time, process CPU time
            # the fastest of the interleaved repeats: another process's load only ever adds time
            t = min(x[i] for x in times[m])
            f = min(x[i] for x in floors[m])
            out |= {f"{key}{suffix}_s": round(t, 2), f"{key}{suffix}_floor_s": round(f, 2)}
            out[f"{key}{suffix}_ratio"] = round(t / f, 3)
        runs = [f"{a:.1f}/{b:.1f}" for a, b in zip((x[0] for x in times[m]), (x[0] for x in floors[m]))]
        out[f"{key}_runs"] = " ".join(runs)  # wall seconds, method/floor, per repeat
    peak = peak_gb(args.device)
    out |= dict(fwd_gb=round(fwd_gb, 2), peak_gb=round(peak, 2), mem_ratio=round(peak / fwd_gb, 3))
    return out


TARGETS = {"eap_cpu_ratio": 1.5, "ig_cpu_ratio": 1.3, "eap_ratio": 1.5, "ig_ratio": 1.3, "mem_ratio": 1.3}


def markdown(rows: list[dict], args: argparse.Namespace, command: str) -> str:
    cuda = args.device.startswith("cuda") and torch.cuda.is_available()
    device = f"CUDA, {torch.cuda.get_device_name()}" if cuda else f"CPU, {args.threads} threads"
    load = "" if cuda else f", load average {os.getloadavg()[0]:.1f} at the end"
    malloc = ", glibc malloc from the heap (`--malloc heap`)" if args.malloc == "heap" and not cuda else ""
    head = (
        f"\n### {datetime.date.today()}: {device}, batch {args.batch} × {args.seq}{load}{malloc}\n\n"
        f"Command: `{command}`\n\n"
        "| model | dtype | nodes | edges | EAP | floor | ratio (≤ 1.5) | EAP-IG (5 steps) | floor | ratio (≤ 1.3) "
        "| fwd peak | peak | ratio (≤ 1.3) |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | failed: {r['error']} |" + " |" * 11)
            continue

        def mark(key, r=r):
            return f"**{r[key]}**" if r[key] > TARGETS[key] else str(r[key])

        def pair(key, r=r):  # CPU time, then wall time in brackets
            return f"{r[key.replace('_', '_cpu_', 1)]} s ({r[key]} s)"

        lines.append(
            f"| {r['model']} | {r['dtype']} | {r['nodes']} | {r['edges']:,} | {pair('eap_s')} | {pair('eap_floor_s')} "
            f"| {mark('eap_cpu_ratio')} ({mark('eap_ratio')}) | {pair('ig_s')} | {pair('ig_floor_s')} "
            f"| {mark('ig_cpu_ratio')} ({mark('ig_ratio')}) | {r['fwd_gb']} GB | {r['peak_gb']} GB | {mark('mem_ratio')} |"
        )
    unit = "peak allocated CUDA memory (GB)" if cuda else "peak RSS (GiB)"
    return (
        head
        + "\n".join(lines)
        + f"\n\nTimes are the fastest of the interleaved repeats: process CPU time, with wall time in brackets. Memory is {unit}. "
        "Bold marks a figure over its target.\n"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=DEFAULT_MODELS, choices=list(PUBLISHED))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    ap.add_argument("--quick", action="store_true", help="2 layers of each model (widths and vocabulary kept)")
    ap.add_argument("--results", help="append the table to this Markdown file")
    ap.add_argument(
        "--malloc", default="default", choices=["default", "heap"], help="glibc allocator setting (see above)"
    )
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args)))
        return
    common = [
        *("--device", args.device, "--threads", str(args.threads), "--batch", str(args.batch)),
        *("--seq", str(args.seq), "--repeats", str(args.repeats), "--dtype", args.dtype),
    ] + (["--quick"] if args.quick else [])
    rows = []
    for name in args.models:  # one process per model: each peak is that model's own
        env = {**os.environ, **HEAP_MALLOC} if args.malloc == "heap" else None
        out = subprocess.run(
            [sys.executable, __file__, "--one", name, *common], capture_output=True, text=True, env=env
        )
        if out.returncode:
            print(f"model={name} FAILED (exit {out.returncode})\n{out.stderr[-4000:]}", flush=True)
            rows.append({"model": name, "error": f"exit {out.returncode}"})
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(r)
        print(" ".join(f"{k}={v}" for k, v in r.items()), flush=True)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    table = markdown(rows, args, command)
    print(table)
    if args.results:
        with open(args.results, "a") as f:
            f.write(table)


if __name__ == "__main__":
    main()

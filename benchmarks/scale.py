"""Graph size, attribution time and peak memory per granularity on the GPT-2-small shape.

Random weights (no download), d_vocab 50257, EAP with corrupted patching, batch 8 × 16 tokens.
Granularities: ``nodes`` (heads + MLPs), ``neurons`` (every MLP neuron) and ``sae`` (a 16× SAE,
d_sae 12,288, on every layer's ``hook_resid_pre``, one run per ``--features`` choice). The SAEs
are random but sparse like trained ones: unit-norm random decoder rows, a tied encoder, ``b_dec``
the mean activation, and per-feature biases set on separate calibration prompts so that feature
firing frequencies are log-normal (σ ``--spread``, default 0.75 decades; at most 10 %) with mean
L0 ``--l0`` (default 32).
Each configuration runs in its own subprocess so each peak RSS is its own. Usage:
    python benchmarks/scale.py [--granularity nodes neurons sae] [--features active 2048] [--l0 32]
                               [--spread 0.75] [--threads 2] [--device cpu] [--eap-batch N]
                               [--layout auto|dense|blocks] [--minimal] [--curve] [--memory-gb G]
Prints one line per configuration: ``granularity=… nodes=… edges=… build_s=… eap_s=… peak_rss_gb=…``
(``eap_batch``: examples per EAP chunk, the engine's choice unless ``--eap-batch`` is given;
``--scores-dtype bfloat16`` halves the score matrix; ``--patch`` adds ``patch_s``, the time to measure
the top 1,000 edges' faithfulness by patched forwards);
``top1000_prune_s`` is the time of ``prune(graph, top_n(graph, 1000))`` on the scores;
``--minimal`` adds ``minimal_s`` and the minimal circuit (``minimal_edges``, ``minimal_faithfulness``;
target ``--target``, ``--grid`` sizes); ``--curve`` adds ``curve_s``, CPR and CMD of a 10-point
faithfulness curve (MIB's 0.1 %…100 %); ``--probe N …`` adds ``probe_s``, the time of one patched
forward of the top N edges for each N. ``peak_*_gb`` is the peak RSS (VmHWM) after each phase
(``peak_eap_gb``: up to the end of EAP).
``scores_mb`` is the score store as attribution kept it (``--layout``: ``auto`` keeps edge blocks
above 2²⁶ entries), ``blocks_mb`` / ``dense_mb`` what float32 edge blocks and a dense
``[n_src, n_dst]`` matrix take (``dense_over_blocks`` their ratio);
``sae`` lines add ``features`` (the choice), ``n_features`` (feature nodes, all sites),
``site_features`` and ``l0`` (measured mean active features per token on the task's clean and
corrupted prompts), per site. ``build_s`` includes choosing the features.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time

import torch


def random_saes(model, l0: float, expansion: int = 16, n_tokens: int = 4096, spread: float = 0.75) -> list:
    """Random SAEs on every layer's residual stream whose sparsity matches a trained SAE's: the
    graph size under ``features="active"`` depends on how many features fire, and how unevenly."""
    from circuitgraph.sae import SAE

    cfg = model.cfg
    d_sae = expansion * cfg.d_model
    g = torch.Generator().manual_seed(1)  # calibration prompts differ from the task's
    tokens = torch.randint(0, cfg.d_vocab, (n_tokens // 16, 16), generator=g).to(cfg.device)
    names = [f"blocks.{L}.hook_resid_pre" for L in range(cfg.n_layers)]
    resid: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    with torch.no_grad():
        for chunk in tokens.split(64):
            _, cache = model.run_with_cache(chunk, names_filter=names, stop_at_layer=cfg.n_layers)
            for n in names:
                resid[n].append(cache[n].flatten(0, 1))
    saes = []
    for n in names:
        x = torch.cat(resid[n])
        W_dec = torch.randn(d_sae, cfg.d_model, generator=g).to(x)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        freq = torch.exp(torch.randn(d_sae, generator=g).to(x) * spread * math.log(10))
        freq = (freq * l0 / d_sae / freq.mean()).clamp(max=0.1)
        # feature j fires on the top freq_j of calibration tokens: its threshold is that order statistic
        rank = (freq * len(x)).ceil().long().clamp(1, len(x))
        b_dec = x.mean(0)
        pre = (x - b_dec) @ W_dec.T
        threshold = pre.topk(int(rank.max()), dim=0).values.gather(0, rank[None] - 1)[0]
        sae = SAE(cfg.d_model, d_sae, n, device=cfg.device)
        with torch.no_grad():
            sae.W_dec.copy_(W_dec)
            sae.W_enc.copy_(W_dec.T)
            sae.b_dec.copy_(b_dec)
            sae.b_enc.copy_(-threshold)
        saes.append(sae.eval())
    return saes


@torch.no_grad()
def mean_l0(model, saes: list, task) -> list[float]:
    """Mean active features per token at each SAE, over the task's clean and corrupted prompts."""
    from circuitgraph.sae import splice

    counts: dict[str, list[torch.Tensor]] = {s.hook_name: [] for s in saes}
    with splice(model, saes) as sp:
        for tokens in (task.clean, task.corrupted):
            model(tokens, return_type=None)
            for s in saes:
                counts[s.hook_name].append((sp.acts[s.hook_name] != 0).sum(-1).flatten().float())
    return [round(float(torch.cat(counts[s.hook_name]).mean()), 1) for s in saes]


def peak_gb() -> float:
    """Peak resident memory so far (VmHWM, GiB)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024**2, 2)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2)


def phase(name: str, **figures) -> None:
    """One line per finished phase on stderr, so a long run shows its figures before it ends."""
    print(
        f"[{time.strftime('%H:%M:%S')}] {name}: " + " ".join(f"{k}={v}" for k, v in figures.items()),
        file=sys.stderr,
        flush=True,
    )


def run_one(
    granularity: str,
    features: str,
    l0: float,
    spread: float,
    device: str,
    threads: int,
    batch: int,
    seq: int,
    eap_batch: int | None,
    scores_dtype: str = "float32",
    patch: bool = False,
    layout: str = "auto",
    minimal: bool = False,
    curve: bool = False,
    memory_gb: float | None = None,
    target: float = 0.9,
    grid: int = 24,
    probe: list[int] | None = None,
) -> dict:
    torch.set_num_threads(threads)
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    import circuitgraph as cg
    from circuitgraph.engine import CircuitEvaluator
    from circuitgraph.engine.batching import auto_batch_size
    from circuitgraph.graph.blocks import EdgeBlocks, layout_of

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
        device=device,
        seed=0,
    )
    model = HookedTransformer(cfg).eval()
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, cfg.d_vocab, (batch, seq), generator=g).to(device)
    corrupted = torch.randint(0, cfg.d_vocab, (batch, seq), generator=g).to(device)
    answer = torch.randint(0, cfg.d_vocab, (batch,), generator=g).to(device)
    task = cg.Task(clean=clean, corrupted=corrupted, answer=answer, wrong=(answer + 1) % cfg.d_vocab, name="bench")
    saes = random_saes(model, l0, spread=spread) if granularity == "sae" else None
    t0 = time.perf_counter()
    if saes:
        choice = int(features) if features.isdigit() else features
        graph = cg.feature_graph(model, saes, task, features=choice)
    else:
        graph = cg.Graph.from_model(model, neurons=(granularity == "neurons") or None)
    build_s = time.perf_counter() - t0
    graph.edge_layout = layout
    peaks = {"peak_build_gb": peak_gb()}
    phase("build", build_s=round(build_s, 2), sources=graph.n_src, edges=graph.n_edges, peak_gb=peaks["peak_build_gb"])
    t0 = time.perf_counter()
    scores = cg.attribute(
        model,
        graph,
        task,
        method="eap",
        batch_size=eap_batch,
        progress=False,
        scores_dtype=getattr(torch, scores_dtype),
    )
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    eap_s = time.perf_counter() - t0
    peaks["peak_eap_gb"] = peak_gb()
    phase("eap", eap_s=round(eap_s, 2), peak_gb=peaks["peak_eap_gb"])
    t0 = time.perf_counter()
    selected = cg.prune(graph, cg.top_n(graph, 1000))  # (selection alone: no patched run)
    select = {"top1000_prune_s": round(time.perf_counter() - t0, 2)}
    del selected
    budget = None if memory_gb is None else memory_gb * 1e9
    patched: dict = {}
    if patch:  # verify a circuit causally: the top 1,000 edges, the full model and the empty circuit
        t0 = time.perf_counter()
        faith = cg.faithfulness(model, graph, task, cg.top_n(graph, 1000), memory_budget=budget)
        patched = {"patch_s": round(time.perf_counter() - t0, 2), "top1000_faithfulness": round(faith, 4)}
        peaks["peak_patch_gb"] = peak_gb()
        phase("patch", **patched, peak_gb=peaks["peak_patch_gb"])
    if minimal:
        t0 = time.perf_counter()
        c = cg.minimal_circuit(model, graph, task, target=target, grid=grid, memory_budget=budget)
        patched.update(
            minimal_s=round(time.perf_counter() - t0, 2),
            minimal_edges=c.n_edges,
            minimal_faithfulness=round(float(c.faithfulness or 0.0), 4),
            minimal_reached=bool(c.figures["reached_target"]),
            minimal_probes=len(c.figures["search"]),
        )
        del c
        peaks["peak_minimal_gb"] = peak_gb()
        phase(
            "minimal", **{k: v for k, v in patched.items() if k.startswith("minimal")}, peak_gb=peaks["peak_minimal_gb"]
        )
    if curve:
        from circuitgraph.evaluation.faithfulness import MIB_SCRIPT_PERCENTS

        t0 = time.perf_counter()
        fc = cg.faithfulness_curve(model, graph, task, percents=MIB_SCRIPT_PERCENTS, memory_budget=budget)
        patched.update(
            curve_s=round(time.perf_counter() - t0, 2),
            curve_points=len(fc.percents),
            cpr=round(fc.cpr, 4),
            cmd=round(fc.cmd, 4),
        )
        peaks["peak_curve_gb"] = peak_gb()
        phase(
            "curve", curve_s=patched["curve_s"], cpr=patched["cpr"], cmd=patched["cmd"], peak_gb=peaks["peak_curve_gb"]
        )
    if probe:  # one patched forward per circuit size (the evaluator built once, its ablations cached)
        run = CircuitEvaluator(model, graph, task, memory_budget=budget)
        times = {}
        for n in probe:
            mask = cg.top_n(graph, n)
            t0 = time.perf_counter()
            run(mask[None])
            times[n] = round(time.perf_counter() - t0, 2)
            phase(f"probe {n}", probe_s=times[n], peak_gb=peak_gb())
            del mask
        patched["probe_s"] = "/".join(f"{n}:{t}" for n, t in times.items())
        peaks["peak_probe_gb"] = peak_gb()
    blocks_bytes = layout_of(graph).n_entries() * 4
    dense_bytes = graph.n_src * graph.n_dst * 4
    stored = scores.nbytes() if isinstance(scores, EdgeBlocks) else scores.numel() * scores.element_size()
    out = {
        "granularity": granularity,
        "nodes": graph.n_src + 1,
        "sources": graph.n_src,
        "destinations": graph.n_dst,
        "edges": graph.n_edges,
        "build_s": round(build_s, 2),
        "eap_s": round(eap_s, 2),
        **select,
        **patched,
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2),
        **peaks,
        "layout": "blocks" if isinstance(scores, EdgeBlocks) else "dense",
        "scores_mb": round(stored / 1e6, 1),
        "blocks_mb": round(blocks_bytes / 1e6, 1),
        "dense_mb": round(dense_bytes / 1e6, 1),
        "dense_over_blocks": round(dense_bytes / blocks_bytes, 2),
        "memory_gb": memory_gb,
        "batch": f"{batch}x{seq}",
        "eap_batch": eap_batch or auto_batch_size(graph, task, lowrank=True),
        "scores_dtype": scores_dtype,
        "device": device,
        "threads": threads,
    }
    if saes:
        sizes = [len(site.features) for site in graph.sites]
        out.update(
            features=features,
            n_features=sum(sizes),
            site_features="/".join(map(str, sizes)),
            l0="/".join(map(str, mean_l0(model, saes, task))),
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--granularity", nargs="+", default=["nodes", "neurons", "sae"], choices=["nodes", "neurons", "sae"]
    )
    ap.add_argument(
        "--features",
        nargs="+",
        default=["active", "2048"],
        help="sae only: which features become nodes ('active', 'all' or k per site); one run each",
    )
    ap.add_argument("--l0", type=float, default=32.0, help="sae only: target mean active features per token")
    ap.add_argument(
        "--spread",
        type=float,
        default=0.75,
        help="sae only: σ of log10 feature firing frequency (0: every feature fires equally often)",
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=16)
    ap.add_argument("--eap-batch", type=int, help="examples per EAP chunk (default: the engine's auto_batch_size)")
    ap.add_argument(
        "--scores-dtype",
        default="float32",
        choices=["float32", "bfloat16"],
        help="dtype of the [n_src, n_dst] score matrix (bfloat16 halves it)",
    )
    ap.add_argument(
        "--patch",
        action="store_true",
        help="also measure the top 1,000 edges' faithfulness by patched forwards (patch_s)",
    )
    ap.add_argument("--layout", default="auto", choices=["auto", "dense", "blocks"], help="score/mask storage")
    ap.add_argument("--minimal", action="store_true", help="also find the minimal circuit (minimal_s)")
    ap.add_argument("--curve", action="store_true", help="also measure a 10-point faithfulness curve (curve_s)")
    ap.add_argument("--memory-gb", type=float, help="the evaluator's memory budget (GB; default 3)")
    ap.add_argument("--target", type=float, default=0.9, help="--minimal: target faithfulness")
    ap.add_argument("--grid", type=int, default=24, help="--minimal: geometric grid sizes before bisecting")
    ap.add_argument(
        "--probe",
        type=int,
        nargs="+",
        help="time one patched forward of the top N edges, for each N (probe_s)",
    )
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(
            json.dumps(
                run_one(
                    args.one,
                    args.features[0],
                    args.l0,
                    args.spread,
                    args.device,
                    args.threads,
                    args.batch,
                    args.seq,
                    args.eap_batch,
                    args.scores_dtype,
                    args.patch,
                    args.layout,
                    args.minimal,
                    args.curve,
                    args.memory_gb,
                    args.target,
                    args.grid,
                    args.probe,
                )
            )
        )
        return
    common = [
        "--l0",
        str(args.l0),
        "--spread",
        str(args.spread),
        "--device",
        args.device,
        "--threads",
        str(args.threads),
        "--batch",
        str(args.batch),
        "--seq",
        str(args.seq),
        "--scores-dtype",
        args.scores_dtype,
        "--layout",
        args.layout,
        "--target",
        str(args.target),
        "--grid",
        str(args.grid),
    ]
    common += ["--patch"] if args.patch else []
    common += ["--minimal"] if args.minimal else []
    common += ["--curve"] if args.curve else []
    common += ["--probe", *map(str, args.probe)] if args.probe else []
    common += ["--memory-gb", str(args.memory_gb)] if args.memory_gb else []
    common += ["--eap-batch", str(args.eap_batch)] if args.eap_batch else []
    for gran, features in [(g, f) for g in args.granularity for f in (args.features if g == "sae" else [None])]:
        extra = ["--features", features] if features else []
        # stderr passes through: the phase lines and any traceback show as the run goes
        out = subprocess.run(
            [sys.executable, __file__, "--one", gran, *extra, *common], stdout=subprocess.PIPE, text=True
        )
        if out.returncode:
            label = f"granularity={gran}" + (f" features={features}" if features else "")
            print(f"{label} FAILED (exit {out.returncode}; its traceback is above)")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(" ".join(f"{k}={v}" for k, v in r.items()), flush=True)


if __name__ == "__main__":
    main()

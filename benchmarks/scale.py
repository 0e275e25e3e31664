"""Graph size, attribution time and peak memory per granularity on the GPT-2-small shape.

Random weights (no download), d_vocab 50257, EAP with corrupted patching, batch 8 × 16 tokens,
12 layers (``--layers`` fewer, for a smoke test).
Granularities: ``nodes`` (heads + MLPs), ``neurons`` (every MLP neuron) and ``sae`` (a 16× SAE,
d_sae 12,288, on every layer's ``hook_resid_pre``, one run per ``--features`` choice and ``--l0``
value). The SAEs are random but sparse like trained ones: unit-norm random decoder rows, a tied
encoder, ``b_dec`` the mean activation, and per-feature biases set on separate calibration prompts
so that feature firing frequencies are log-normal (σ ``--spread``, default 0.75 decades; at most
10 %) with mean L0 ``--l0`` (default 32).
Each configuration runs in its own subprocess so each peak RSS is its own. Usage:
    python benchmarks/scale.py [--granularity nodes neurons sae] [--features active 2048] [--l0 32 64]
                               [--spread 0.75] [--threads 2] [--device cpu] [--layers 12] [--eap-batch N]
                               [--layout auto|dense|blocks] [--minimal] [--curve] [--memory-gb G]
                               [--ig] [--floor] [--offload auto|true|false] [--results FILE]
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
``--ig`` adds ``ig_s``, EAP-IG with 5 steps, run after every other phase (attribution replaces
the graph's scores, and the circuits above are EAP's). ``--floor`` adds ``eap_floor_s`` (and
``ig_floor_s``) and ``eap_ratio`` (``ig_ratio``): the passes each method cannot avoid, as
benchmarks/models.py defines and times them (weights frozen; on a feature graph with the SAEs
spliced in, as attribution runs them), measured once before EAP after an untimed warm-up.
On CUDA, ``cuda_<phase>_gb`` is each phase's own peak allocated memory
(``torch.cuda.max_memory_allocated``, reset as each phase ends; GB), and the figures say how the
evaluator kept its ablation cache: ``offload`` (the choice; ``--offload`` forces it for every
evaluator the phases build, CPU runs report it only when given), ``offloaded`` (whether the cache
went to host memory) and ``cache_gb``.
``scores_mb`` is the score store as attribution kept it (``--layout``: ``auto`` keeps edge blocks
above 2²⁶ entries), ``blocks_mb`` / ``dense_mb`` what float32 edge blocks and a dense
``[n_src, n_dst]`` matrix take (``dense_over_blocks`` their ratio);
``sae`` lines add ``features`` (the choice), ``n_features`` (feature nodes, all sites),
``site_features`` and ``l0`` (measured mean active features per token on the task's clean and
corrupted prompts), per site. ``build_s`` includes choosing the features.
``--results FILE`` appends the runs as a Markdown table (device, torch, date and the command) to
FILE; benchmarks/gpu.sh runs this script on a GPU that way.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import resource
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

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


class DevicePeaks:
    """Peak allocated accelerator memory per phase (GB): ``torch.cuda.max_memory_allocated``,
    reset as each phase ends, so each figure is that phase's own. Nothing off CUDA."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.figures: dict[str, float] = {}

    def end(self, name: str) -> dict[str, float]:
        """Record the peak of the phase just ended as ``cuda_<name>_gb`` and start the next one."""
        if not self.cuda:
            return {}
        torch.cuda.synchronize()
        key = f"cuda_{name}_gb"
        self.figures[key] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
        torch.cuda.reset_peak_memory_stats()
        return {key: self.figures[key]}


def seconds(t: float) -> float:
    """A time as printed: 2 decimals, or 3 significant digits under a second (GPU phases take ms)."""
    return round(t, 2) if t >= 1 else float(f"{t:.3g}")


def floors(model, saes: list | None, task, device: str, ig: bool) -> dict[str, float]:
    """Seconds of the passes EAP (and, with ``ig``, EAP-IG with 5 steps) cannot avoid, timed as
    benchmarks/models.py defines them (its ``Passes``): weights frozen, no hooks but the SAEs, which
    a feature graph's attribution runs through; after one untimed warm-up (allocator, kernels)."""
    from models import Passes  # benchmarks/models.py (this script's folder is on sys.path)

    from circuitgraph.engine.tensors import frozen_params
    from circuitgraph.sae import splice

    passes = Passes(model, task, device)
    spliced = splice(model, saes, store=False) if saes else nullcontext()
    with frozen_params(model, *(saes or [])), spliced:
        passes.floor(1)
        out = {"eap": passes.floor(1)[0]}
        if ig:
            out["ig"] = passes.floor(5)[0]
    return out


@contextmanager
def evaluator_decisions(decisions: list[tuple[bool, float]]) -> Iterator[None]:
    """Record, for every :class:`CircuitEvaluator` built inside, ``(cache offloaded, cache bytes)``
    in ``decisions`` (measurement only: the phases pass ``offload=`` themselves)."""
    from circuitgraph.engine import CircuitEvaluator

    init = CircuitEvaluator.__init__

    def recorded(self, *args, **kw) -> None:
        init(self, *args, **kw)
        decisions.append((bool(self.offload) and self.cache_bytes > 0, self.cache_bytes))

    CircuitEvaluator.__init__ = recorded  # type: ignore[method-assign]
    try:
        yield
    finally:
        CircuitEvaluator.__init__ = init  # type: ignore[method-assign]


def gpt2_small(device: str, layers: int, batch: int, seq: int):
    """The random-weight GPT-2-small shape (``layers`` deep) and a random task for it."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    import circuitgraph as cg

    cfg = HookedTransformerConfig(
        n_layers=layers,
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
    return model, task


def patched_phases(
    model,
    graph,
    task,
    peaks: dict,
    device_peaks: DevicePeaks,
    patch: bool,
    minimal: bool,
    curve: bool,
    probe: list[int] | None,
    budget: float | None,
    target: float,
    grid: int,
    offload: bool | str = "auto",
) -> dict:
    """The phases that measure circuits by patched forwards, on the scores the graph holds; every
    evaluator keeps its ablation cache as ``offload`` says."""
    import circuitgraph as cg
    from circuitgraph.engine import CircuitEvaluator

    patched: dict = {}
    if patch:  # verify a circuit causally: the top 1,000 edges, the full model and the empty circuit
        t0 = time.perf_counter()
        faith = cg.faithfulness(model, graph, task, cg.top_n(graph, 1000), memory_budget=budget, offload=offload)
        patched = {"patch_s": round(time.perf_counter() - t0, 2), "top1000_faithfulness": round(faith, 4)}
        peaks["peak_patch_gb"] = peak_gb()
        phase("patch", **patched, peak_gb=peaks["peak_patch_gb"], **device_peaks.end("patch"))
    if minimal:
        t0 = time.perf_counter()
        c = cg.minimal_circuit(model, graph, task, target=target, grid=grid, memory_budget=budget, offload=offload)
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
            "minimal",
            **{k: v for k, v in patched.items() if k.startswith("minimal")},
            peak_gb=peaks["peak_minimal_gb"],
            **device_peaks.end("minimal"),
        )
    if curve:
        from circuitgraph.evaluation.faithfulness import MIB_SCRIPT_PERCENTS

        t0 = time.perf_counter()
        fc = cg.faithfulness_curve(
            model, graph, task, percents=MIB_SCRIPT_PERCENTS, memory_budget=budget, offload=offload
        )
        patched.update(
            curve_s=round(time.perf_counter() - t0, 2),
            curve_points=len(fc.percents),
            cpr=round(fc.cpr, 4),
            cmd=round(fc.cmd, 4),
        )
        peaks["peak_curve_gb"] = peak_gb()
        phase(
            "curve",
            curve_s=patched["curve_s"],
            cpr=patched["cpr"],
            cmd=patched["cmd"],
            peak_gb=peaks["peak_curve_gb"],
            **device_peaks.end("curve"),
        )
    if probe:  # one patched forward per circuit size (the evaluator built once, its ablations cached)
        run = CircuitEvaluator(model, graph, task, memory_budget=budget, offload=offload)
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
        device_peaks.end("probe")
    return patched


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
    ig: bool = False,
    floor: bool = False,
    offload: bool | str | None = None,
    layers: int = 12,
) -> dict:
    torch.set_num_threads(threads)
    import circuitgraph as cg
    from circuitgraph.engine.batching import auto_batch_size
    from circuitgraph.graph.blocks import EdgeBlocks, layout_of

    device_peaks = DevicePeaks(device)
    model, task = gpt2_small(device, layers, batch, seq)
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
    phase(
        "build",
        build_s=round(build_s, 2),
        sources=graph.n_src,
        edges=graph.n_edges,
        peak_gb=peaks["peak_build_gb"],
        **device_peaks.end("build"),
    )
    floor_s = {}
    if floor:  # (before EAP, whose time then includes no first-call set-up either)
        floor_s = floors(model, saes, task, device, ig)
        phase("floors", **{f"{m}_floor_s": seconds(t) for m, t in floor_s.items()}, **device_peaks.end("floors"))

    def attribute(method: str):
        """``(scores, seconds)`` of one attribution (5 steps for EAP-IG), synchronised on CUDA."""
        t0 = time.perf_counter()
        scores = cg.attribute(
            model,
            graph,
            task,
            method=method,
            steps=5,
            batch_size=eap_batch,
            progress=False,
            scores_dtype=getattr(torch, scores_dtype),
        )
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return scores, time.perf_counter() - t0

    scores, eap_s = attribute("eap")
    peaks["peak_eap_gb"] = peak_gb()
    phase("eap", eap_s=seconds(eap_s), peak_gb=peaks["peak_eap_gb"], **device_peaks.end("eap"))
    timing = {"eap_s": seconds(eap_s)}
    if floor:
        timing |= {"eap_floor_s": seconds(floor_s["eap"]), "eap_ratio": round(eap_s / floor_s["eap"], 2)}
    t0 = time.perf_counter()
    selected = cg.prune(graph, cg.top_n(graph, 1000))  # (selection alone: no patched run)
    select = {"top1000_prune_s": round(time.perf_counter() - t0, 2)}
    del selected
    budget = None if memory_gb is None else memory_gb * 1e9
    decisions: list[tuple[bool, float]] = []  # (cache offloaded, cache bytes) per evaluator
    offload_given = offload is not None
    offload = "auto" if offload is None else offload
    with evaluator_decisions(decisions):
        patched = patched_phases(
            model, graph, task, peaks, device_peaks, patch, minimal, curve, probe, budget, target, grid, offload
        )
    if decisions and (offload_given or device.startswith("cuda")):  # (on CUDA "auto" is a real choice)
        patched.update(
            offload=offload,
            offloaded=any(off for off, _ in decisions),
            cache_gb=round(max(b for _, b in decisions) / 1e9, 3),
        )
    blocks_bytes = layout_of(graph).n_entries() * 4
    dense_bytes = graph.n_src * graph.n_dst * 4
    stored = scores.nbytes() if isinstance(scores, EdgeBlocks) else scores.numel() * scores.element_size()
    layout_kept = "blocks" if isinstance(scores, EdgeBlocks) else "dense"
    if ig:  # last, so the phases above measure EAP's circuits (attribution replaces the graph's scores)
        del scores
        _, ig_s = attribute("eap-ig")
        timing["ig_s"] = seconds(ig_s)
        if floor:
            timing |= {"ig_floor_s": seconds(floor_s["ig"]), "ig_ratio": round(ig_s / floor_s["ig"], 2)}
        peaks["peak_ig_gb"] = peak_gb()
        phase("eap-ig", ig_s=timing["ig_s"], peak_gb=peaks["peak_ig_gb"], **device_peaks.end("ig"))
    out = {
        "granularity": granularity,
        "nodes": graph.n_src + 1,
        "sources": graph.n_src,
        "destinations": graph.n_dst,
        "edges": graph.n_edges,
        "build_s": round(build_s, 2),
        **timing,
        **select,
        **patched,
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2),
        **peaks,
        **device_peaks.figures,
        "layout": layout_kept,
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
    if layers != 12:
        out["layers"] = layers
    if device.startswith("cuda"):
        out["device_name"] = torch.cuda.get_device_name()
    if saes:
        sizes = [len(site.features) for site in graph.sites]
        out.update(
            features=features,
            n_features=sum(sizes),
            site_features="/".join(map(str, sizes)),
            l0="/".join(map(str, mean_l0(model, saes, task))),
        )
    return out


GRAPHS = {"nodes": "heads + MLPs", "neurons": "heads + MLP neurons", "sae": "SAE features"}


def cell(r: dict, key: str, unit: str = "") -> str:
    """A table cell: the figure with its unit, or a dash where the run did not measure it."""
    return "–" if r.get(key) is None else f"{r[key]}{unit}"


def markdown(rows: list[dict], args: argparse.Namespace, command: str) -> str:
    """The runs as a Markdown table, headed by the machine, torch, the date and the command."""
    cuda = args.device.startswith("cuda")
    name = next((r["device_name"] for r in rows if "device_name" in r), None)
    device = f"CUDA, {name or args.device}" if cuda else f"CPU, {args.threads} thread{'s' if args.threads > 1 else ''}"
    load = "" if cuda else f", load average {os.getloadavg()[0]:.1f} at the end"
    memory = "peak allocated CUDA memory, GB, each phase's own" if cuda else "peak RSS so far, GiB"
    head = (
        f"\n### {datetime.date.today()}: GPT-2-small shape, {args.layers} layers, random weights; {device}; "
        f"torch {torch.__version__}; batch {args.batch} × {args.seq}{load}\n\n"
        f"Command: `{command}`\n\n"
        "| graph | nodes | edges | EAP | floor | ratio | EAP-IG (5 steps) | floor | ratio "
        f"| minimal circuit | curve: CPR / CMD | ablation cache | memory ({memory}): build / EAP / minimal / curve / EAP-IG |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        label = GRAPHS[r["granularity"]] + (f": {r['features']}, L0 {r['l0_target']:g}" if r["features"] else "")
        if "error" in r:
            lines.append(f"| {label} | failed: {r['error']} |" + " |" * 11)
            continue
        if r["granularity"] == "sae":  # the measured mean L0, averaged over sites
            sites = [float(x) for x in r["l0"].split("/")]
            label += f" (measured {sum(sites) / len(sites):.1f})"
        if r["scores_dtype"] != "float32":
            label += f", {r['scores_dtype']} scores"
        minimal = (
            f"{r['minimal_s']} s: {r['minimal_edges']:,} edges, faithfulness {r['minimal_faithfulness']}"
            if "minimal_s" in r
            else "–"
        )
        curve = f"{r['curve_s']} s: {r['cpr']} / {r['cmd']}" if "curve_s" in r else "–"
        cache = (
            f"offload {str(r['offload']).lower()}: {'offloaded' if r['offloaded'] else 'kept on device'}, {r['cache_gb']} GB"
            if "offload" in r
            else "–"
        )
        prefix = "cuda" if cuda else "peak"
        mem = " / ".join(cell(r, f"{prefix}_{p}_gb") for p in ("build", "eap", "minimal", "curve", "ig"))
        lines.append(
            f"| {label} | {r['nodes']:,} | {r['edges']:,} | {cell(r, 'eap_s', ' s')} | {cell(r, 'eap_floor_s', ' s')} "
            f"| {cell(r, 'eap_ratio')} | {cell(r, 'ig_s', ' s')} | {cell(r, 'ig_floor_s', ' s')} | {cell(r, 'ig_ratio')} "
            f"| {minimal} | {curve} | {cache} | {mem} |"
        )
    return (
        head
        + "\n".join(lines)
        + "\n\nWall times, one run each; a floor is the passes its method cannot avoid (benchmarks/models.py), "
        "measured in the same process before EAP.\n"
    )


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
    ap.add_argument(
        "--l0",
        type=float,
        nargs="+",
        default=[32.0],
        help="sae only: target mean active features per token; one run each",
    )
    ap.add_argument(
        "--spread",
        type=float,
        default=0.75,
        help="sae only: σ of log10 feature firing frequency (0: every feature fires equally often)",
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layers", type=int, default=12, help="model depth (fewer for a smoke test)")
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
    ap.add_argument("--ig", action="store_true", help="also time EAP-IG with 5 steps (ig_s), after the other phases")
    ap.add_argument("--floor", action="store_true", help="also time each method's floor (eap_floor_s, eap_ratio, ...)")
    ap.add_argument("--minimal", action="store_true", help="also find the minimal circuit (minimal_s)")
    ap.add_argument("--curve", action="store_true", help="also measure a 10-point faithfulness curve (curve_s)")
    ap.add_argument("--memory-gb", type=float, help="the evaluator's memory budget (GB; default 3)")
    ap.add_argument(
        "--offload",
        choices=["auto", "true", "false"],
        help="the evaluator's offload of its ablation cache to host memory (default: the engine's, auto)",
    )
    ap.add_argument("--target", type=float, default=0.9, help="--minimal: target faithfulness")
    ap.add_argument("--grid", type=int, default=24, help="--minimal: geometric grid sizes before bisecting")
    ap.add_argument(
        "--probe",
        type=int,
        nargs="+",
        help="time one patched forward of the top N edges, for each N (probe_s)",
    )
    ap.add_argument("--results", help="append the runs as a Markdown table to this file")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        offload = {"auto": "auto", "true": True, "false": False, None: None}[args.offload]
        print(
            json.dumps(
                run_one(
                    args.one,
                    args.features[0],
                    args.l0[0],
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
                    args.ig,
                    args.floor,
                    offload,
                    args.layers,
                )
            )
        )
        return
    common = [
        "--spread",
        str(args.spread),
        "--device",
        args.device,
        "--threads",
        str(args.threads),
        "--layers",
        str(args.layers),
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
    common += ["--ig"] if args.ig else []
    common += ["--floor"] if args.floor else []
    common += ["--offload", args.offload] if args.offload else []
    common += ["--probe", *map(str, args.probe)] if args.probe else []
    common += ["--memory-gb", str(args.memory_gb)] if args.memory_gb else []
    common += ["--eap-batch", str(args.eap_batch)] if args.eap_batch else []
    runs = [
        (g, f, l0)
        for g in args.granularity
        for f in (args.features if g == "sae" else [None])
        for l0 in (args.l0 if g == "sae" else [args.l0[0]])
    ]
    rows = []
    for gran, features, l0 in runs:
        extra = ["--features", features] if features else []
        # stderr passes through: the phase lines and any traceback show as the run goes
        out = subprocess.run(
            [sys.executable, __file__, "--one", gran, *extra, "--l0", str(l0), *common],
            stdout=subprocess.PIPE,
            text=True,
        )
        if out.returncode:
            label = f"granularity={gran}" + (f" features={features} l0={l0}" if features else "")
            print(f"{label} FAILED (exit {out.returncode}; its traceback is above)")
            rows.append({"granularity": gran, "features": features, "l0_target": l0, "error": f"exit {out.returncode}"})
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(" ".join(f"{k}={v}" for k, v in r.items()), flush=True)
        rows.append({**r, "features": features, "l0_target": l0})
    if args.results:
        command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
        with open(args.results, "a") as f:
            f.write(markdown(rows, args, command))
        print(f"table appended to {args.results}", file=sys.stderr)


if __name__ == "__main__":
    main()

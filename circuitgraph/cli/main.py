"""``python -m circuitgraph`` / ``circuitgraph``: one Hydra run = one circuit, with its files.

A run loads a model (zoo entry, TransformerLens pretrained name, or a local HuggingFace folder),
a task, scores the edges (EAP, EAP-IG, exact; or runs ACDC), selects the circuit (minimal for a
target faithfulness, top-n or threshold), re-measures its faithfulness by patching, and writes to
Hydra's run directory (``outputs/<date>/<time>/``; with ``-m``, ``outputs/multirun/<date>/<time>/<n>/``):

=====================  ========================================================================
circuit.json           the circuit (``Circuit.save``), with ``circuit.safetensors`` beside it
scores.safetensors     the full ``scores [n_src, n_dst]``, the ``valid`` and circuit ``mask``
                       tensors; node names and provenance in the header metadata
faithfulness.png       the faithfulness curve, CPR and CMD in the title
graph.html             the interactive circuit viewer
summary.json           the figures of the run, written last: a run without it did not finish
.hydra/                Hydra's record of the config and the overrides
=====================  ========================================================================

Every file is written to a temporary name in the same folder and renamed into place, so an
interrupted run never leaves a half-written file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from circuitgraph.atomic import atomic_write
from circuitgraph.cli.config import (
    ConfigError,
    check_overrides,
    check_sweep,
    register_configs,
    to_container,
    validate,
)

log = logging.getLogger("circuitgraph")

SUMMARY_SCHEMA = "circuitgraph.run/1"
SCORES_SCHEMA = "circuitgraph.scores/1"
FILES = {
    "circuit": "circuit.json",
    "circuit_tensors": "circuit.safetensors",
    "scores": "scores.safetensors",
    "png": "faithfulness.png",
    "html": "graph.html",
    "graphml": "circuit.graphml",
    "mib_json": "circuit.mib.json",
    "hypothesis": "hypothesis.json",
    "summary": "summary.json",
}


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """Console entry point (``circuitgraph`` and ``python -m circuitgraph``).

    Checks the command line's keys against the schema first (so a typo names the valid keys),
    then hands over to Hydra."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        check_overrides(args)
        check_sweep(args)
    except ConfigError as e:
        _fail(e)
    register_configs()
    if argv is None:
        _hydra_main()
        return
    saved, sys.argv = sys.argv, [sys.argv[0], *args]  # Hydra reads the command line from sys.argv
    try:
        _hydra_main()
    finally:
        sys.argv = saved


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> dict:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    try:
        return run(cfg, Path(hc.runtime.output_dir), overrides=list(hc.overrides.task))
    except ConfigError as e:
        if hc.mode == RunMode.RUN:
            _fail(e)
        # in a sweep, say it plainly, then let the launcher record the failed job
        print(f"circuitgraph: configuration error in job {hc.job.num} "
              f"({' '.join(hc.overrides.task)}): {e}", file=sys.stderr)
        raise


def _fail(e: Exception) -> None:
    print(f"circuitgraph: configuration error: {e}", file=sys.stderr)
    raise SystemExit(2)


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def run(cfg: DictConfig, out_dir: str | Path, overrides: list[str] | None = None) -> dict:
    """Run one configuration and write its files into ``out_dir``; returns the summary dict.

    Raises :class:`~circuitgraph.cli.config.ConfigError` (before loading anything) when the
    configuration is invalid."""
    t_start = time.perf_counter()
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.structured(cfg)
    validate(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    import torch

    import circuitgraph as cg
    from circuitgraph.circuit import build_circuit

    timings: dict[str, float] = {}
    _seed(cfg.seed)
    threads = resolve_threads(cfg)
    if threads:
        torch.set_num_threads(threads)
    device = resolve_device(cfg.device)

    t = time.perf_counter()
    model, entry, model_label = load_model(cfg.model, device)
    task = load_run_task(cfg.task, model, entry)
    timings["load"] = time.perf_counter() - t
    log.info("model %s (%s) on %s; task %r: %d examples × %d tokens, metric %s", model_label,
             cfg.model.source, device, task.name, task.n_examples, task.seq_len, task.metric_name)

    graph = build_graph(cfg.graph, model, entry, task, device)
    ablation = cg.Ablation(kind=cfg.ablation.kind,
                           seed=cfg.seed if cfg.ablation.seed is None else int(cfg.ablation.seed))
    m, sel = cfg.method, cfg.circuit
    bs = m.batch_size

    # --- scores and selection
    t = time.perf_counter()
    if m.name == "acdc":
        from circuitgraph.circuit.acdc import acdc

        circuit = acdc(model, graph, task, threshold=float(m.threshold), ablation=ablation,
                       metric=m.metric, absolute=bool(m.absolute), batch_size=bs,
                       progress=bool(cfg.progress))
        timings["attribute"] = time.perf_counter() - t
        timings["select"] = 0.0
        selection = {"kind": "acdc", "threshold": float(m.threshold), "metric": m.metric,
                     "absolute": bool(m.absolute)}
    else:
        cg.attribute(model, graph, task, method=m.name, ablation=ablation, steps=int(m.steps),
                     batch_size=bs, edge_batch=m.edge_batch, progress=bool(cfg.progress))
        timings["attribute"] = time.perf_counter() - t
        if not bool(graph.scores.abs().sum()):
            raise ValueError(
                f"method={m.name} scored every edge 0 on task {task.name!r} (metric "
                f"{task.metric_name}); a gradient method sees nothing when the metric is flat at the "
                "clean run (kl and l2 to the clean output are). Use method=exact or method=acdc, or "
                "a metric such as logit_diff (task.metric=...)"
            )
        t = time.perf_counter()
        if sel.kind == "minimal":
            circuit = cg.minimal_circuit(model, graph, task, target=float(sel.target), method=None,
                                         ablation=ablation, absolute=bool(sel.absolute),
                                         grid=int(sel.grid), batch_size=bs)
            selection = {"kind": "minimal", "target": float(sel.target), "absolute": bool(sel.absolute)}
        else:
            if sel.kind == "top-n":
                mask = cg.top_n(graph, int(sel.n), absolute=bool(sel.absolute))
                selection = {"kind": "top-n", "n": int(sel.n)}
            else:
                mask = cg.threshold(graph, float(sel.tau), absolute=bool(sel.absolute))
                selection = {"kind": "threshold", "tau": float(sel.tau)}
            selection.update(absolute=bool(sel.absolute), prune=bool(sel.prune))
            if sel.prune:
                mask = cg.prune(graph, mask)
            circuit = build_circuit(graph, mask, task, ablation, selection)
        timings["select"] = time.perf_counter() - t

    # --- verification: re-measure the chosen circuit by patching, then the curve
    t = time.perf_counter()
    faith = float(cg.faithfulness(model, graph, task, circuit.mask, ablation, batch_size=bs))
    search_faith = circuit.faithfulness
    circuit.faithfulness = faith
    circuit.figures = dict(circuit.figures or {})
    circuit.figures["verified_faithfulness"] = faith
    curve = None
    if cfg.export.curve:
        curve = cg.faithfulness_curve(model, graph, task, ablation, batch_size=bs)
        circuit.figures.update(cpr=curve.cpr, cmd=curve.cmd, curve=curve.to_dict())
    timings["verify"] = time.perf_counter() - t
    circuit.metadata = dict(circuit.metadata or {})
    circuit.metadata["run"] = {"method": m.name, "selection": selection, "seed": int(cfg.seed),
                               "device": str(device), "overrides": list(overrides or [])}

    # --- causal scrubbing: the circuit as a hypothesis, and any hypothesis file given
    t = time.perf_counter()
    scrubbed: dict[str, Any] = {}
    hypothesis = None
    plain = not (graph.node_graph.sites or graph.neurons or getattr(graph, "positions", None))
    if cfg.export.hypothesis or cfg.get("hypothesis"):
        from circuitgraph.hypothesis import Hypothesis, scrub

        samples = cfg.export.scrub_samples
        if cfg.export.hypothesis and plain:
            hypothesis = Hypothesis.from_circuit(circuit, name=f"{model_label} circuit ({m.name})")
            scrubbed["circuit"] = scrub(model, hypothesis, task, n_samples=samples, seed=int(cfg.seed),
                                        warn_vacuous=False).to_dict()
        if cfg.get("hypothesis"):
            path = Path(str(cfg.hypothesis)).expanduser()
            tested = Hypothesis.load(path, model=model)
            scrubbed["file"] = {"path": str(path), **scrub(model, tested, task, n_samples=samples,
                                                           seed=int(cfg.seed)).to_dict()}
    timings["scrub"] = time.perf_counter() - t

    # --- files (summary.json last)
    t = time.perf_counter()
    files: dict[str, str] = {}
    skipped: dict[str, str] = {}
    if cfg.export.hypothesis and not plain:
        skipped["hypothesis"] = ("causal-scrubbing hypotheses cover heads and MLPs so far; this graph has "
                                 "neuron, position or SAE nodes")
    if hypothesis is not None:
        atomic_write(out / FILES["hypothesis"], lambda p: hypothesis.save(p))
        files["hypothesis"] = FILES["hypothesis"]
    if cfg.export.scores:
        write_scores(out / FILES["scores"], graph, circuit, model_label)
        files["scores"] = FILES["scores"]
    circuit.save(out / FILES["circuit"])
    files["circuit"] = FILES["circuit"]
    files["circuit_tensors"] = FILES["circuit_tensors"]
    target = float(sel.target) if (m.name != "acdc" and sel.kind == "minimal") else None
    title = cfg.export.title or default_title(model_label, task.name, m.name, circuit, graph)
    if cfg.export.png and curve is not None:
        try:
            write_curve_png(out / FILES["png"], curve, circuit, graph,
                            title=_png_title(model_label, task.name, m.name, curve), target=target)
            files["png"] = FILES["png"]
        except ImportError as e:  # matplotlib is a dependency, but keep the run's other files
            skipped["png"] = f"matplotlib is not installed ({e}); pip install matplotlib"
            log.warning("not writing %s: %s", FILES["png"], skipped["png"])
    for key, writer in (("graphml", "to_graphml"), ("mib_json", "to_mib_json")):
        if cfg.export[key]:
            from circuitgraph import export

            try:
                atomic_write(out / FILES[key], lambda p, w=getattr(export, writer): w(circuit, p))
                files[key] = FILES[key]
            except ValueError as e:  # e.g. the MIB layout cannot hold an attention-only model
                skipped[key] = str(e)
                log.warning("not writing %s: %s", FILES[key], e)
    if cfg.export.html:
        from circuitgraph.export import write_html

        info = None
        if graph.node_graph.sites:  # label feature nodes with their top-activating tokens
            from circuitgraph.sae import feature_labels

            info = feature_labels(model, graph, task)
        atomic_write(out / FILES["html"], lambda p: write_html(circuit, p, title=title, node_info=info))
        files["html"] = FILES["html"]
    timings["export"] = time.perf_counter() - t

    wall = time.perf_counter() - t_start
    summary = build_summary(cfg, circuit, graph, task, model_label, device, selection, faith,
                            search_faith, curve, target, timings, wall, files, skipped, overrides)
    if scrubbed:
        summary["scrubbing"] = scrubbed
        rec = scrubbed.get("circuit", {}).get("loss_recovered")
        if rec is not None and cfg.ablation.kind != "resample":
            scrubbed["note"] = (
                "causal scrubbing computes uncovered edges on random other prompts (resampling), while this "
                f"circuit was selected under {cfg.ablation.kind} ablation: edges that carry no clean/ablated "
                "difference there (e.g. a query token the corrupted prompt shares) are left out, so the circuit "
                "can recover much less under scrubbing than its faithfulness; ablation=resample selects a "
                "circuit meant to pass scrubbing")
            if faith - rec > 0.3:
                log.warning("the circuit recovers %.3f of the loss under causal scrubbing but has faithfulness %.3f "
                            "under %s ablation: %s", rec, faith, cfg.ablation.kind, scrubbed["note"])
    files["summary"] = FILES["summary"]
    summary["files"] = dict(files)
    atomic_write(out / FILES["summary"], lambda p: Path(p).write_text(json.dumps(summary, indent=1)))

    report(summary, out)
    if cfg.export.html and cfg.export.open_browser:
        open_in_browser(out / FILES["html"])
    return summary


# ---------------------------------------------------------------------------------------------
# Pieces (public so that scripts and tests can reuse them)
# ---------------------------------------------------------------------------------------------


def build_graph(gcfg, model, entry, task, device):
    """The run's graph: heads and MLPs, or neurons, token positions or SAE features (``graph.*``)."""
    import circuitgraph as cg

    if gcfg.saes is not None:
        from circuitgraph.sae import load_saes, zoo_saes

        saes = zoo_saes(entry.name, device=device) if gcfg.saes == "zoo" else \
            load_saes(Path(str(gcfg.saes)).expanduser(), device=device)
        if not saes:
            raise ValueError(f"graph.saes=zoo: the zoo model {entry.name!r} ships no SAEs (the induction model does)")
        features = int(gcfg.features) if str(gcfg.features).isdigit() else str(gcfg.features)
        graph = cg.Graph.from_model(model, split_qkv=bool(gcfg.split_qkv), saes=saes, task=task, features=features)
        log.info("SAE sites: %s", ", ".join(f"{s.hook_name} ({len(s.features)} feature nodes)" for s in graph.sites))
        return graph
    if gcfg.positions:
        return cg.PositionalGraph.from_model(model, positions=task.seq_len, split_qkv=bool(gcfg.split_qkv))
    return cg.Graph.from_model(model, split_qkv=bool(gcfg.split_qkv), neurons=bool(gcfg.neurons) or None)


def resolve_device(device: str):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_threads(cfg) -> int | None:
    """torch CPU threads: ``threads`` if set; else 1 for zoo models (tiny: thread start-up and
    contention cost more than they give, badly so on a shared machine), torch's default otherwise."""
    if cfg.threads is not None:
        return int(cfg.threads)
    return 1 if cfg.model.source == "zoo" else None


def _seed(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_model(mcfg, device) -> tuple[Any, Any, str]:
    """``(model, zoo_entry_or_None, label)`` for a model config (after :func:`validate`)."""
    if mcfg.source == "zoo":
        from circuitgraph import zoo

        entry = zoo.load(mcfg.name, device=device)
        return entry.model, entry, mcfg.name
    import torch

    dtype = getattr(torch, mcfg.dtype)
    if mcfg.source == "pretrained":
        from transformer_lens import HookedTransformer

        model = HookedTransformer.from_pretrained(
            mcfg.name, device=str(device), dtype=dtype, fold_ln=mcfg.fold_ln,
            center_writing_weights=mcfg.center_writing_weights, center_unembed=mcfg.center_unembed)
        model.eval()
        return model, None, mcfg.name
    path = Path(mcfg.path).expanduser().resolve()
    return load_local_model(path, device, dtype, mcfg), None, (mcfg.name or path.name)


def load_local_model(path: Path, device, dtype, mcfg=None):
    """A HuggingFace-format folder → ``HookedTransformer``, without touching the network.

    ``HookedTransformer.from_pretrained`` insists on a name from TransformerLens' list, so this
    does its steps directly: read the folder's config and weights with transformers, convert them
    with TransformerLens' converters, and apply the same weight processing."""
    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as loading
    from transformers import AutoModelForCausalLM, AutoTokenizer

    fold_ln = True if mcfg is None else bool(mcfg.fold_ln)
    cww = True if mcfg is None else bool(mcfg.center_writing_weights)
    cu = True if mcfg is None else bool(mcfg.center_unembed)
    p = str(path)
    hf = AutoModelForCausalLM.from_pretrained(p, dtype=dtype, local_files_only=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(p, local_files_only=True)
    except Exception:  # a folder without tokenizer files: token-id tasks still work
        tokenizer = None
    cfg = loading.get_pretrained_model_config(p, hf_cfg=hf.config.to_dict(), fold_ln=fold_ln,
                                              device=str(device), dtype=dtype)
    cfg.tokenizer_name = None if tokenizer is None else cfg.tokenizer_name
    state = loading.get_pretrained_state_dict(p, cfg, hf, dtype=dtype)
    del hf
    model = HookedTransformer(cfg, tokenizer, move_to_device=False)
    model.load_and_process_state_dict(state, fold_ln=fold_ln, center_writing_weights=cww,
                                      center_unembed=cu, fold_value_biases=True,
                                      refactor_factored_attn_matrices=False)
    model.move_model_modules_to_device()
    model.eval()
    return model


def load_run_task(tcfg, model, entry):
    """The task of a run: a zoo task or a file, with the metric and example limit applied."""
    import circuitgraph as cg

    if tcfg.source == "file":
        task = cg.load_task(Path(tcfg.path).expanduser(), model, metric=tcfg.metric or "logit_diff",
                            name=tcfg.name)
    else:
        task = entry.task(tcfg.name)
        if tcfg.metric is not None and tcfg.metric != task.metric_name:
            task = dataclasses.replace(task, metric=tcfg.metric, clean_reference=None)
    if tcfg.limit is not None and tcfg.limit < task.n_examples:
        task = task.select(slice(0, int(tcfg.limit)))
    return task


def default_title(model_label: str, task_name: str, method: str, circuit, graph) -> str:
    f = circuit.faithfulness
    fs = f", faithfulness {f:.3f}" if f is not None else ""
    return f"{model_label} · {task_name} · {method} · {circuit.n_edges} of {graph.n_edges} edges{fs}"


def _png_title(model_label: str, task_name: str, method: str, curve) -> str:
    return f"{model_label} / {task_name} / {method}:  CPR = {curve.cpr:.3f}   CMD = {curve.cmd:.3f}"



def write_scores(path: Path, graph, circuit, model_label: str) -> Path:
    """``scores.safetensors``: ``scores`` (float32), ``valid`` and ``mask`` (bool), all
    ``[n_src, n_dst]``; the header metadata holds the node names (JSON lists) and provenance."""
    from safetensors.torch import save_file

    tensors = {
        "scores": graph.scores.detach().float().cpu().contiguous(),
        "valid": graph.valid.cpu().contiguous(),
        "mask": circuit.mask.cpu().contiguous(),
    }
    meta = {
        "schema": SCORES_SCHEMA,
        "src_names": json.dumps(list(graph.src_names)),
        "dst_names": json.dumps(list(graph.dst_names)),
        "model": str(model_label),
        "model_name": str(graph.model_name),
        "config_hash": str(graph.model_hash),
        "score_info": json.dumps(graph.score_info, default=str),
    }
    return atomic_write(path, lambda p: save_file(tensors, str(p), metadata=meta))


def read_scores(path: str | Path) -> dict:
    """Read a ``scores.safetensors``: ``{"scores", "valid", "mask", "src_names", "dst_names",
    "metadata"}``."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        out = {k: f.get_tensor(k) for k in f.keys()}
    out["src_names"] = json.loads(meta.get("src_names", "[]"))
    out["dst_names"] = json.loads(meta.get("dst_names", "[]"))
    out["metadata"] = meta
    return out


def write_curve_png(path: Path, curve, circuit, graph, title: str, target: float | None = None) -> Path:
    """Plot the faithfulness curve (edges ranked by helpfulness and by |score|) with the chosen
    circuit marked. Uses matplotlib's Agg canvas directly: no pyplot state, no display."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    x = list(curve.percents)
    ax.plot(x, curve.signed, "o-", color="#1f77b4", label="ranked by helpfulness (CPR: area)")
    ax.plot(x, curve.absolute, "s--", color="#ff7f0e", label="ranked by |score| (CMD: area of |1 − f|)")
    ax.axhline(1.0, color="0.4", lw=0.8)
    ax.axhline(0.0, color="0.7", lw=0.8)
    if target is not None:
        ax.axhline(target, color="#2ca02c", lw=0.8, ls=":", label=f"target {target:g}")
    if circuit.faithfulness is not None and graph.n_edges:
        pct = max(100.0 * circuit.n_edges / graph.n_edges, min(x))
        ax.plot([pct], [circuit.faithfulness], "*", ms=14, color="#d62728",
                label=f"circuit: {circuit.n_edges} edges, f = {circuit.faithfulness:.3f}")
    ax.set_xscale("log")
    ax.set_xlabel("edges kept (% of all edges, log scale)")
    ax.set_ylabel("faithfulness")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return atomic_write(path, lambda p: fig.savefig(str(p), format="png"))


def build_summary(cfg, circuit, graph, task, model_label, device, selection, faith, search_faith,
                  curve, target, timings, wall, files, skipped, overrides) -> dict:
    import torch

    import circuitgraph

    from importlib.metadata import PackageNotFoundError, version

    try:
        tl_version = version("transformer-lens")
    except PackageNotFoundError:  # pragma: no cover
        tl_version = None
    figs = circuit.figures or {}
    return {
        "schema": SUMMARY_SCHEMA,
        "status": "ok",
        "model": model_label,
        "model_source": cfg.model.source,
        "config_hash": graph.model_hash,
        "task": task.name,
        "metric": task.metric_name,
        "n_examples": task.n_examples,
        "method": cfg.method.name,
        "ablation": cfg.ablation.kind,
        "selection": selection,
        "edges_kept": circuit.n_edges,
        "edges_total": graph.n_edges,
        "fraction_kept": circuit.n_edges / graph.n_edges if graph.n_edges else 0.0,
        "nodes": len(circuit.nodes()),
        "graph": {"sources": graph.n_src, "destinations": graph.n_dst, "split_qkv": graph.split_qkv,
                  "neuron_layers": sorted(graph.neurons), "positions": getattr(graph, "positions", None),
                  "sae_sites": {s.hook_name: len(s.features) for s in graph.node_graph.sites}},
        "faithfulness": faith,
        "search_faithfulness": search_faith,
        "target": target,
        "reached_target": (faith >= target) if target is not None else None,
        "cpr": curve.cpr if curve is not None else None,
        "cmd": curve.cmd if curve is not None else None,
        "metric_full": curve.full if curve is not None else figs.get("metric_full"),
        "metric_empty": curve.empty if curve is not None else figs.get("metric_empty"),
        "wall_time_s": wall,
        "timings_s": timings,
        "device": str(device),
        "seed": int(cfg.seed),
        "overrides": list(overrides or []),
        "skipped": skipped,
        "config": to_container(cfg),
        "versions": {"circuitgraph": circuitgraph.__version__, "torch": torch.__version__,
                     "transformer_lens": tl_version, "python": sys.version.split()[0]},
    }


def _scrub_text(summary: dict) -> str:
    parts = []
    for key, label in (("circuit", "circuit"), ("file", "hypothesis file")):
        r = summary.get("scrubbing", {}).get(key)
        if r:
            parts.append(f"{label} recovers {r['loss_recovered']:.3f} of the loss "
                         f"[{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] under scrubbing")
    return (", " + ", ".join(parts)) if parts else ""


def report(summary: dict, out: Path) -> None:
    tgt = f" (target {summary['target']:g})" if summary.get("target") is not None else ""
    cpr = (f", CPR {summary['cpr']:.3f}, CMD {summary['cmd']:.3f}" if summary.get("cpr") is not None else "")
    line = (f"circuitgraph: {summary['model']} / {summary['task']} / {summary['method']}: "
            f"{summary['edges_kept']} of {summary['edges_total']} edges, faithfulness "
            f"{summary['faithfulness']:.3f}{tgt}{cpr}{_scrub_text(summary)}; "
            f"{summary['wall_time_s']:.1f} s on {summary['device']}")
    log.info(line)
    print(line)
    print(f"run directory: {out.resolve()}")
    if "html" in summary["files"]:
        print(f"graph.html: {(out / summary['files']['html']).resolve()}")


def display_available() -> bool:
    """Whether a browser window can be opened (a desktop session, not a headless shell)."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def open_in_browser(path: Path) -> bool:
    if not display_available():
        log.info("no display: not opening a browser (open %s yourself)", path)
        return False
    import webbrowser

    return bool(webbrowser.open(Path(path).resolve().as_uri()))


if __name__ == "__main__":
    main()

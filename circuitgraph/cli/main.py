"""``python -m circuitgraph`` / ``circuitgraph``: one Hydra run = one circuit, with its files.

A run loads a model (zoo entry, TransformerLens pretrained name, or a local HuggingFace folder),
a task, scores the edges (EAP, EAP-IG, exact; or runs ACDC), selects the circuit (minimal for a
target faithfulness, top-n or threshold), re-measures its faithfulness by patching, and writes to
Hydra's run directory (``outputs/<date>/<time>/``; with ``-m``, ``outputs/multirun/<date>/<time>/<n>/``):

=====================  ========================================================================
circuit.json           the circuit (``Circuit.save``), with ``circuit.safetensors`` beside it
scores.safetensors     every edge's score, the ``valid`` and circuit ``mask`` (dense, or per block)
                       tensors; node names and provenance in the header metadata
faithfulness.png       the faithfulness curve, CPR and CMD in the title
graph.html             the interactive circuit viewer
hypothesis.json        the circuit as a causal-scrubbing hypothesis (heads and MLPs only)
summary.json           the figures of the run and every file's SHA-256, written last: a run
                       without it did not finish
.hydra/                Hydra's record of the config and the overrides
=====================  ========================================================================

Every file is written to a temporary name in the same folder and renamed into place, so an
interrupted run never leaves a half-written file. A run holds an exclusive lock on its directory
and retires the previous ``summary.json`` before it writes anything (``circuitgraph.files.rundir``),
so a directory never shows a stale result. The terminal gets the headline (what was found,
against the zoo's known circuit when there is one, faithfulness, scrubbing) once; caveats go to
summary.json with one line on the terminal. ``circuitgraph show RUN_DIR`` prints the circuit and
whether the directory holds a complete run.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import random
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from tqdm.contrib.logging import logging_redirect_tqdm

import circuitgraph as cg
from circuitgraph import export, zoo
from circuitgraph.atomic import atomic_write
from circuitgraph.attribution.diagnosis import zero_score_diagnosis
from circuitgraph.circuit import Circuit, build_circuit
from circuitgraph.circuit.learned import learned_circuit
from circuitgraph.circuit.summary import describe, ground_truth_text
from circuitgraph.cli.config import (
    ConfigError,
    check_overrides,
    check_sweep,
    register_configs,
    to_container,
    validate,
)
from circuitgraph.cli.show import main as show_main
from circuitgraph.engine.progress import phase
from circuitgraph.errors import CircuitGraphError, GraphError, RunDirectoryBusyError, TaskError
from circuitgraph.evaluation import FaithfulnessCurve, choose_ground_truth, compare_with_ground_truth
from circuitgraph.export.plots import curve_title, write_curve_png
from circuitgraph.export.scores import SCORES_SCHEMA, read_scores, write_scores  # noqa: F401  (moved; re-exported)
from circuitgraph.files import rundir
from circuitgraph.hypothesis.caveats import hypothesis_unsupported, large_scrubbing_gap, scrubbing_caveat
from circuitgraph.hypothesis.pruning import minimal_hypothesis
from circuitgraph.models import as_backend, loading
from circuitgraph.models.loading import load_local_model  # noqa: F401  (moved from this module; re-exported)
from circuitgraph.sae import decode_tokens, feature_labels, load_saes, zoo_saes
from circuitgraph.tasks import Task

log = logging.getLogger("circuitgraph")

SUMMARY_SCHEMA = rundir.RUN_SCHEMA
EXIT_BUSY = 3  # exit status when another run holds the run directory
FILES = {
    "circuit": "circuit.json",
    "circuit_tensors": "circuit.safetensors",
    "scores": "scores.safetensors",
    "png": "faithfulness.png",
    "html": "graph.html",
    "graphml": "circuit.graphml",
    "mib_json": "circuit.mib.json",
    "neuronpedia": "circuit.neuronpedia.json",
    "hypothesis": "hypothesis.json",
    "summary": "summary.json",
}


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """Console entry point (``circuitgraph`` and ``python -m circuitgraph``).

    Checks the command line's keys against the schema first (so a typo names the valid keys),
    then hands over to Hydra. ``circuitgraph show PATH`` prints a saved circuit instead."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["show"]:
        raise SystemExit(show_main(args[1:]))
    try:
        check_overrides(args)
        check_sweep(args)
    except ConfigError as e:
        _fail(e)
    register_configs()
    # Lock an explicit run directory before Hydra writes its .hydra/ record into it, so that a
    # second run into a busy directory changes nothing there; run() takes the same lock again.
    run_dir = literal_run_dir(args)
    if run_dir is not None:
        try:
            rundir.acquire(run_dir)
        except RunDirectoryBusyError as e:
            _busy(e)
    saved = sys.argv
    try:
        if argv is not None:
            sys.argv = [sys.argv[0], *args]  # Hydra reads the command line from sys.argv
        _hydra_main()
    finally:
        sys.argv = saved
        if run_dir is not None:
            rundir.release(run_dir)


def literal_run_dir(args: list[str]) -> Path | None:
    """The run directory a single run's ``hydra.run.dir=...`` names literally (no interpolation);
    None for sweeps, help and config printing, or a computed directory (run() locks those)."""
    if any(a in ("-m", "--multirun", "--help", "-h", "--hydra-help", "--info", "-i", "--cfg", "-c") for a in args):
        return None
    for a in args:
        k, sep, v = a.lstrip("+").partition("=")
        if sep and k == "hydra.run.dir" and v and not any(c in v for c in "${}'\"\\"):
            return Path(v).expanduser()
    return None


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> dict:
    hc = HydraConfig.get()
    try:
        return run(cfg, Path(hc.runtime.output_dir), overrides=list(hc.overrides.task))
    except RunDirectoryBusyError as e:
        if hc.mode == RunMode.RUN:
            _busy(e)
        raise
    except CircuitGraphError as e:
        if hc.mode == RunMode.RUN:
            _fail(e)
        # in a sweep, say it plainly, then let the launcher record the failed job
        print(f"circuitgraph: {_kind(e)} in job {hc.job.num} ({' '.join(hc.overrides.task)}): {e}", file=sys.stderr)
        raise


def _kind(e: Exception) -> str:
    """``configuration error``, ``task error``, … for a message's first words."""
    if isinstance(e, ConfigError):
        return "configuration error"
    name = type(e).__name__.removesuffix("Error")
    return "".join(f" {c.lower()}" if c.isupper() else c for c in name).strip() + " error"


def _fail(e: Exception) -> None:
    """A problem the user can fix: its message, no traceback; exit status 2 for the configuration
    (nothing ran), 1 for what went wrong after loading."""
    print(f"circuitgraph: {_kind(e)}: {e}", file=sys.stderr)
    raise SystemExit(2 if isinstance(e, ConfigError) else 1)


def _busy(e: RunDirectoryBusyError) -> None:
    print(f"circuitgraph: {e}", file=sys.stderr)
    raise SystemExit(EXIT_BUSY)


# ---------------------------------------------------------------------------------------------
# The run: one step per stage, each timed into ``timings``
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Loaded:
    """The model and task of a run: what every step after loading reads."""

    model: Any  # transformer_lens.HookedTransformer
    entry: Any  # the zoo entry (circuitgraph.zoo.ZooModel), or None
    label: str
    task: Task
    device: torch.device


@contextmanager
def _timed(timings: dict[str, float], key: str, progress: bool | None = None) -> Iterator[None]:
    """Time a step into ``timings[key]``; with ``progress`` set, also show it as a progress phase
    (one bar named after the step) and log its time when it took a while."""
    t = time.perf_counter()
    if progress is None:
        yield
    else:
        with phase(key, enabled=progress):
            yield
    timings[key] = time.perf_counter() - t
    if progress and timings[key] >= 2.0:
        log.info("%s: %.1f s", key, timings[key])


def run(cfg: DictConfig, out_dir: str | Path, overrides: list[str] | None = None) -> dict:
    """Run one configuration and write its files into ``out_dir``; returns the summary dict.

    Raises :class:`~circuitgraph.errors.ConfigError` (before loading anything) when the
    configuration is invalid, and :class:`~circuitgraph.errors.RunDirectoryBusyError` (before
    writing anything) when another run holds ``out_dir``."""
    t_start = time.perf_counter()
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.structured(cfg)
    validate(cfg)
    out = Path(out_dir)
    with rundir.locked(out):
        rundir.begin_run(out)
        return _run_locked(cfg, out, overrides, t_start)


def _run_locked(cfg: DictConfig, out: Path, overrides: list[str] | None, t_start: float) -> dict:
    """The run itself, in a run directory this process has locked and cleaned."""
    timings: dict[str, float] = {}
    device = prepare_torch(cfg)
    with logging_redirect_tqdm():  # log lines print above a progress bar instead of through it
        ld, graph, circuit, selection, faith, search_faith, curve, hypothesis, scrubbed, extra = _find_and_measure(
            cfg, device, overrides, timings
        )
        target = selection_target(cfg)
        with _timed(timings, "export"):
            files, skipped = write_outputs(cfg, out, ld, graph, circuit, curve, hypothesis, target)

    summary = build_summary(
        cfg,
        circuit,
        graph,
        ld.task,
        ld.label,
        device,
        selection,
        faith,
        search_faith,
        curve,
        target,
        timings,
        time.perf_counter() - t_start,
        files,
        skipped,
        overrides,
    )
    if scrubbed:
        summary["scrubbing"] = add_scrubbing_caveat(scrubbed, cfg.ablation.kind, faith)
    if extra["pruned"] is not None:
        summary["prune"] = extra["pruned"]
    if extra["stability"] is not None:
        summary["stability"] = extra["stability"]
    if extra["ablation"].kind == "optimal":
        summary["optimal_ablation"] = dict(extra["ablation"].fit)
    summary["circuit_in_words"] = describe(circuit)
    summary["ground_truth"] = (circuit.figures or {}).get("ground_truth") or _no_ground_truth(ld, circuit)
    summary["caveats"] = caveats(summary)
    write_summary(out, summary, files)
    report(summary, out)
    if cfg.export.html and cfg.export.open_browser:
        open_in_browser(out / FILES["html"])
    return summary


def _find_and_measure(cfg: DictConfig, device: torch.device, overrides: list[str] | None, timings: dict[str, float]):
    """Load, score, select, verify, measure the curve, compare with the ground truth and scrub."""
    progress = bool(cfg.progress)
    with _timed(timings, "load"):
        model, entry, model_label = load_model(cfg.model, device)
        if cfg.model.get("device_map") is not None:  # split across devices: the run works on the embedding's
            device = as_backend(model).device
        ld = Loaded(model, entry, model_label, load_run_task(cfg.task, model, entry), device)
    log.info(
        "model %s (%s) on %s; task %r: %d examples × %d tokens, metric %s",
        ld.label,
        cfg.model.source,
        device,
        ld.task.name,
        ld.task.n_examples,
        ld.task.seq_len,
        ld.task.metric_name,
    )
    graph = build_graph(cfg.graph, model, entry, ld.task, device)
    ablation = make_ablation(cfg)
    circuit, selection = find_circuit(cfg, ld, graph, ablation, timings)
    pruned = None
    if cfg.prune.kind == "scrubbing":
        with _timed(timings, "prune", progress):
            circuit, selection, pruned = prune_by_scrubbing(cfg, ld, graph, ablation, selection)
    with _timed(timings, "verify", progress):
        faith, search_faith = verify_circuit(cfg, ld, graph, circuit, ablation)
    with _timed(timings, "curve", progress):
        curve = measure_curve(cfg, ld, graph, circuit, ablation)
    circuit.metadata = {**(circuit.metadata or {}), "run": run_record(cfg, selection, device, overrides)}
    if _roles(entry):  # known head roles travel with the circuit, for summaries made without the zoo
        circuit.metadata["roles"] = _roles(entry)
    truth = ground_truth_comparison(ld, circuit, cfg.ablation.kind)
    if truth is not None:
        circuit.figures = {**(circuit.figures or {}), "ground_truth": truth}
    stab = None
    if cfg.export.stability:
        with _timed(timings, "stability", progress):
            stab = circuit_stability(cfg, ld, graph, circuit, ablation)
    with _timed(timings, "scrub", progress):
        hypothesis, scrubbed = scrub_circuit(cfg, ld, graph, circuit)
    extra = {"pruned": pruned, "stability": stab, "ablation": ablation}
    return ld, graph, circuit, selection, faith, search_faith, curve, hypothesis, scrubbed, extra


def prepare_torch(cfg: DictConfig) -> torch.device:
    """Seed every generator and set torch's threads before anything random runs; the device."""
    _seed(cfg.seed)
    threads = resolve_threads(cfg)
    if threads:
        torch.set_num_threads(threads)
    return resolve_device(cfg.device)


def make_ablation(cfg: DictConfig) -> cg.Ablation:
    """The run's ablation; resampling is seeded with the run's seed unless ``ablation.seed`` is set."""
    seed = cfg.seed if cfg.ablation.seed is None else int(cfg.ablation.seed)
    return cg.Ablation(kind=cfg.ablation.kind, seed=seed)


def find_circuit(
    cfg: DictConfig, ld: Loaded, graph, ablation: cg.Ablation, timings: dict[str, float]
) -> tuple[Circuit, dict]:
    """Score the edges, then select the circuit: ``(circuit, selection record)``.

    ACDC does both at once (its time is booked as ``attribute``, ``select`` is 0)."""
    progress = bool(cfg.progress)
    if cfg.method.name in ("acdc", "edge-pruning"):
        with _timed(timings, "attribute", progress):
            found = (
                run_acdc(cfg, ld, graph, ablation)
                if cfg.method.name == "acdc"
                else run_learned(cfg, ld, graph, ablation)
            )
        timings["select"] = 0.0
        return found
    with _timed(timings, "attribute", progress):
        attribute_edges(cfg, ld, graph, ablation)
    with _timed(timings, "select", progress):
        return select_circuit(cfg.circuit, ld, graph, ablation, cfg.method.batch_size, memory_budget(cfg))


def run_acdc(cfg: DictConfig, ld: Loaded, graph, ablation: cg.Ablation) -> tuple[Circuit, dict]:
    """ACDC's circuit (it prunes edges itself, so ``circuit.*`` is not read) and its record."""
    m = cfg.method
    circuit = cg.acdc(
        ld.model,
        graph,
        ld.task,
        threshold=float(m.threshold),
        ablation=ablation,
        metric=m.metric,
        absolute=bool(m.absolute),
        batch_size=m.batch_size,
        progress=bool(cfg.progress),
    )
    return circuit, {"kind": "acdc", "threshold": float(m.threshold), "metric": m.metric, "absolute": bool(m.absolute)}


def run_learned(cfg: DictConfig, ld: Loaded, graph, ablation: cg.Ablation) -> tuple[Circuit, dict]:
    """Learned edge masks: the smallest circuit of the λ sweep reaching ``circuit.target``."""
    m = cfg.method
    kw: dict[str, Any] = {"steps": int(m.train_steps), "estimator": str(m.estimator), "seed": int(cfg.seed)}
    if m.lambdas is not None:
        kw["lambdas"] = [float(x) for x in m.lambdas]
    target = float(cfg.circuit.target)
    circuit = learned_circuit(ld.model, graph, ld.task, target=target, ablation=ablation, batch_size=m.batch_size, **kw)
    return circuit, {"kind": "edge-pruning", "target": target, "estimator": str(m.estimator)}


def prune_by_scrubbing(
    cfg: DictConfig, ld: Loaded, graph, ablation: cg.Ablation, selection: dict
) -> tuple[Circuit, dict, dict]:
    """``prune=scrubbing``: every edge ranked by the method's scores, the smallest circuit whose
    scrubbed loss recovered is ≥ ``prune.target`` (verified on a fresh seed)."""
    res = minimal_hypothesis(
        ld.model,
        Circuit(graph, graph.valid.clone()),
        ld.task,
        target=float(cfg.prune.target),
        seed=int(cfg.seed),
        n_samples=cfg.export.scrub_samples,
    )
    assert res.circuit is not None  # (an edge search)
    if not res.reached_target:
        log.warning(
            "scrubbing-guided pruning: the circuit recovers %.3f of the loss on a fresh seed, below the target %g",
            res.verified.loss_recovered,
            float(cfg.prune.target),
        )
    record = {"kind": "scrubbing", "target": float(cfg.prune.target), "ranked_by": cfg.method.name, "was": selection}
    res.circuit.metadata["ablation"] = ablation.to_dict()
    return res.circuit, record, res.to_dict()


def circuit_stability(cfg: DictConfig, ld: Loaded, graph, circuit: Circuit, ablation: cg.Ablation) -> dict:
    """Bootstrap stability of the run's method (same selection rule): every edge's inclusion
    frequency goes into the circuit's figures (the viewer shows it) and the summary."""
    m = cfg.method
    kw: dict[str, Any] = {}
    if m.name == "acdc":
        kw = {"tau": float(m.threshold), "metric": m.metric, "absolute": bool(m.absolute)}
    elif m.name == "edge-pruning":
        kw = {"train_steps": int(m.train_steps), "estimator": str(m.estimator)}
    saved = (graph.scores, graph.score_info)
    st = cg.stability(
        ld.model,
        graph,
        ld.task,
        method=m.name,
        n_boot=int(cfg.export.stability),
        n_edges=circuit.n_edges if m.name not in ("acdc", "edge-pruning") else None,
        target=float(cfg.circuit.target),
        ablation=ablation,
        steps=int(m.steps),
        seed=int(cfg.seed),
        **kw,
    )
    graph.scores, graph.score_info = saved
    figures = st.to_dict(graph)
    circuit.figures = dict(circuit.figures or {})
    circuit.figures["stability"] = figures
    return figures


def attribute_edges(cfg: DictConfig, ld: Loaded, graph, ablation: cg.Ablation) -> None:
    """Fill ``graph.scores``; a TaskError if every score is 0 (no ranking to select from)."""
    m = cfg.method
    cg.attribute(
        ld.model,
        graph,
        ld.task,
        method=m.name,
        ablation=ablation,
        steps=int(m.steps),
        batch_size=m.batch_size,
        edge_batch=m.edge_batch,
        progress=bool(cfg.progress),
    )
    problem = zero_score_diagnosis(
        float(graph.scores.abs().sum()), method=m.name, task_name=ld.task.name, metric_name=ld.task.metric_name
    )
    if problem:
        raise TaskError(problem)


def memory_budget(cfg: DictConfig) -> float | None:
    """``memory_gb`` in bytes (None: the evaluator's default)."""
    gb = cfg.get("memory_gb")
    return None if gb is None else float(gb) * 1e9


def select_circuit(
    sel: DictConfig, ld: Loaded, graph, ablation: cg.Ablation, batch_size: int | None, budget: float | None = None
) -> tuple[Circuit, dict]:
    """The circuit the ``circuit.*`` config asks for, from the scored graph."""
    if sel.kind == "minimal":
        circuit = cg.minimal_circuit(
            ld.model,
            graph,
            ld.task,
            target=float(sel.target),
            method=None,
            ablation=ablation,
            absolute=bool(sel.absolute),
            grid=int(sel.grid),
            batch_size=batch_size,
            memory_budget=budget,
        )
        return circuit, {"kind": "minimal", "target": float(sel.target), "absolute": bool(sel.absolute)}
    if sel.kind == "top-n":
        mask = cg.top_n(graph, int(sel.n), absolute=bool(sel.absolute))
        selection: dict[str, Any] = {"kind": "top-n", "n": int(sel.n)}
    else:
        mask = cg.threshold(graph, float(sel.tau), absolute=bool(sel.absolute))
        selection = {"kind": "threshold", "tau": float(sel.tau)}
    selection.update(absolute=bool(sel.absolute), prune=bool(sel.prune))
    if sel.prune:
        mask = cg.prune(graph, mask)
    return build_circuit(graph, mask, ld.task, ablation, selection), selection


def run_record(cfg: DictConfig, selection: dict, device: torch.device, overrides: list[str] | None) -> dict:
    """How the circuit was made, stored in its metadata so circuit.json alone says it."""
    return {
        "method": cfg.method.name,
        "selection": selection,
        "seed": int(cfg.seed),
        "device": str(device),
        "overrides": list(overrides or []),
    }


def selection_target(cfg: DictConfig) -> float | None:
    """The faithfulness target the selection aimed at (minimal selection only)."""
    if cfg.prune.kind == "scrubbing":
        return None  # (the target is a loss recovered, reported under "prune")
    if cfg.method.name == "edge-pruning" or (cfg.method.name != "acdc" and cfg.circuit.kind == "minimal"):
        return float(cfg.circuit.target)
    return None


def verify_circuit(
    cfg: DictConfig, ld: Loaded, graph, circuit: Circuit, ablation: cg.Ablation
) -> tuple[float, float | None]:
    """Re-measure the chosen circuit by patching (the search's own figure may be an estimate):
    ``(verified, search's faithfulness)``. The circuit's ``faithfulness`` and ``figures`` are
    updated in place."""
    bs = cfg.method.batch_size
    faith = float(
        cg.faithfulness(
            ld.model, graph, ld.task, circuit.mask, ablation, batch_size=bs, memory_budget=memory_budget(cfg)
        )
    )
    search_faith = circuit.faithfulness
    circuit.faithfulness = faith
    circuit.figures = dict(circuit.figures or {})
    circuit.figures["verified_faithfulness"] = faith
    return faith, search_faith


def measure_curve(
    cfg: DictConfig, ld: Loaded, graph, circuit: Circuit, ablation: cg.Ablation
) -> FaithfulnessCurve | None:
    """The faithfulness curve, CPR and CMD (``export.curve``), also kept in ``circuit.figures``."""
    if not cfg.export.curve:
        return None
    curve = cg.faithfulness_curve(
        ld.model, graph, ld.task, ablation, batch_size=cfg.method.batch_size, memory_budget=memory_budget(cfg)
    )
    circuit.figures.update(cpr=curve.cpr, cmd=curve.cmd, curve=curve.to_dict())
    return curve


def _roles(entry) -> dict[str, str]:
    return entry.head_roles() if entry is not None else {}


def ground_truth_comparison(ld: Loaded, circuit: Circuit, ablation: str) -> dict | None:
    """The circuit against the zoo's known circuit for this task (precision, recall, ROC AUC), or
    None when the model has no ground truth for the task or its graph cannot hold one."""
    if ld.entry is None:
        return None
    chosen = choose_ground_truth(ld.entry.ground_truth, ablation, ld.task.name)
    if chosen is None:
        return None
    convention, gt = chosen
    try:
        found = compare_with_ground_truth(circuit, gt, convention)
    except ConfigError:  # e.g. a position- or feature-resolved graph: the truth names other nodes
        return None
    return {"source": f"zoo {ld.entry.name}", **found}


def _no_ground_truth(ld: Loaded, circuit: Circuit) -> dict | None:
    """Why a zoo run has no ground-truth comparison (None for models outside the zoo)."""
    if ld.entry is None:
        return None
    have = {c: gt.task for c, gt in ld.entry.ground_truth.items()}
    if not any(t == ld.task.name for t in have.values()):
        why = f"the zoo has no ground truth for task {ld.task.name!r} (it has {sorted(set(have.values()))})"
    else:
        why = "the ground truth names heads and MLPs, and this graph resolves positions, neurons or features"
    return {"available": sorted(have), "compared": False, "why": why}


def _hypothesis_blocker(graph) -> str | None:
    return hypothesis_unsupported(
        neurons=bool(graph.neurons),
        positions=bool(graph.positions),
        features=bool(graph.node_graph.sites),
        post_norms=graph.arch.post_norms,
    )


def scrub_circuit(cfg: DictConfig, ld: Loaded, graph, circuit: Circuit) -> tuple[cg.Hypothesis | None, dict]:
    """Causal scrubbing: the circuit as a hypothesis (when the graph allows it) and any hypothesis
    file given with ``+hypothesis=``. Returns ``(circuit's hypothesis or None, results)``."""
    scrubbed: dict[str, Any] = {}
    hypothesis = None
    samples, seed = cfg.export.scrub_samples, int(cfg.seed)
    if cfg.export.hypothesis and _hypothesis_blocker(graph) is None:
        hypothesis = cg.Hypothesis.from_circuit(circuit, name=f"{ld.label} circuit ({cfg.method.name})")
        scrubbed["circuit"] = cg.scrub(
            ld.model, hypothesis, ld.task, n_samples=samples, seed=seed, warn_vacuous=False
        ).to_dict()
    if cfg.get("hypothesis"):
        path = Path(str(cfg.hypothesis)).expanduser()
        tested = cg.Hypothesis.load(path, model=ld.model)
        scrubbed["file"] = {
            "path": str(path),
            **cg.scrub(ld.model, tested, ld.task, n_samples=samples, seed=seed).to_dict(),
        }
    return hypothesis, scrubbed


def add_scrubbing_caveat(scrubbed: dict, ablation: str, faith: float) -> dict:
    """``scrubbed`` with the caveat (``note``) on comparing it with the faithfulness, if one applies,
    and ``large_gap`` when the two disagree by much (reported among the run's caveats)."""
    rec = scrubbed.get("circuit", {}).get("loss_recovered")
    note = scrubbing_caveat(ablation, rec)
    if note:
        scrubbed["note"] = note
        scrubbed["large_gap"] = bool(large_scrubbing_gap(faith, rec))
    return scrubbed


def caveats(summary: dict) -> dict[str, str]:
    """What a reader of the run's figures should know, by topic (summary.json's ``caveats``)."""
    out: dict[str, str] = {}
    sc = summary.get("scrubbing") or {}
    if sc.get("note"):
        rec = sc.get("circuit", {}).get("loss_recovered")
        gap = f" (here faithfulness {summary['faithfulness']:.3f}, scrubbing {rec:.3f})" if sc.get("large_gap") else ""
        out["scrubbing"] = sc["note"] + gap
    gt = summary.get("ground_truth") or {}
    if gt.get("compared", True) and gt and not gt.get("matches_ablation", True):
        out["ground_truth"] = (
            f"the zoo has no ground truth under {summary['ablation']} ablation; the circuit is compared with "
            f"the {gt.get('convention')!r} ground truth, found under {gt.get('ablation')} ablation"
        )
    if summary.get("reached_target") is False:
        out["target"] = (
            f"no circuit reached the target faithfulness {summary['target']:g}; the best found has "
            f"{summary['faithfulness']:.3f} (a larger circuit.grid or another method may reach it)"
        )
    for key, why in (summary.get("skipped") or {}).items():
        out[f"skipped_{key}"] = why
    return out


# ---------------------------------------------------------------------------------------------
# Files (summary.json last)
# ---------------------------------------------------------------------------------------------


def write_outputs(
    cfg: DictConfig,
    out: Path,
    ld: Loaded,
    graph,
    circuit: Circuit,
    curve: FaithfulnessCurve | None,
    hypothesis: cg.Hypothesis | None,
    target: float | None,
) -> tuple[dict[str, str], dict[str, str]]:
    """Every file but summary.json: ``(files written, {file: why skipped})``."""
    files: dict[str, str] = {}
    skipped: dict[str, str] = {}
    blocker = _hypothesis_blocker(graph) if cfg.export.hypothesis else None
    if blocker:
        skipped["hypothesis"] = blocker
    if hypothesis is not None:
        atomic_write(out / FILES["hypothesis"], lambda p: hypothesis.save(p))
        files["hypothesis"] = FILES["hypothesis"]
    circuit.save(out / FILES["circuit"])
    files["circuit"] = FILES["circuit"]
    files["circuit_tensors"] = FILES["circuit_tensors"]
    if cfg.export.scores:  # after the circuit: its header records the circuit's pair id
        write_scores(out / FILES["scores"], graph, circuit, ld.label)
        files["scores"] = FILES["scores"]
    if cfg.export.png and curve is not None:
        _write_png(
            out,
            curve,
            circuit,
            graph,
            curve_title(ld.label, ld.task.name, cfg.method.name, curve),
            target,
            files,
            skipped,
        )
    _write_exchange_formats(cfg, out, circuit, files, skipped)
    if cfg.export.mib_submission:
        _write_mib_submission(out, ld, circuit, files, skipped)
    if cfg.export.html or cfg.export.neuronpedia:
        info, tokens = _viewer_labels(ld, graph)
        if cfg.export.neuronpedia:
            atomic_write(
                out / FILES["neuronpedia"],
                lambda p: export.to_neuronpedia_json(circuit, p, node_info=info, tokens=tokens),
            )
            files["neuronpedia"] = FILES["neuronpedia"]
        if cfg.export.html:
            title = cfg.export.title or default_title(ld.label, ld.task.name, cfg.method.name, circuit, graph)
            atomic_write(
                out / FILES["html"],
                lambda p: export.write_html(circuit, p, title=title, node_info=info, tokens=tokens),
            )
            files["html"] = FILES["html"]
    return files, skipped


def _write_png(
    out: Path,
    curve: FaithfulnessCurve,
    circuit: Circuit,
    graph,
    title: str,
    target: float | None,
    files: dict[str, str],
    skipped: dict[str, str],
) -> None:
    try:
        write_curve_png(out / FILES["png"], curve, circuit, graph, title=title, target=target)
        files["png"] = FILES["png"]
    except ImportError as e:  # matplotlib is a dependency, but keep the run's other files
        skipped["png"] = f"matplotlib is not installed ({e}); pip install matplotlib"
        log.warning("not writing %s: %s", FILES["png"], skipped["png"])


def _write_exchange_formats(
    cfg: DictConfig, out: Path, circuit: Circuit, files: dict[str, str], skipped: dict[str, str]
) -> None:
    """GraphML and MIB JSON, when asked for; a layout that cannot hold the circuit is skipped."""
    for key, writer in (("graphml", "to_graphml"), ("mib_json", "to_mib_json")):
        if not cfg.export[key]:
            continue
        try:
            atomic_write(out / FILES[key], functools.partial(getattr(export, writer), circuit))
            files[key] = FILES[key]
        except ValueError as e:  # e.g. the MIB layout cannot hold an attention-only model
            skipped[key] = str(e)
            log.warning("not writing %s: %s", FILES[key], e)


def _write_mib_submission(
    out: Path, ld: Loaded, circuit: Circuit, files: dict[str, str], skipped: dict[str, str]
) -> None:
    """``mib/<task>_<model>/importances.json``: the run's scores as MIB's circuit track reads them."""
    task_name = "".join(ch if ch.isalnum() or ch in ".-" else "-" for ch in str(ld.task.name))
    model_name = "".join(ch if ch.isalnum() or ch in ".-" else "-" for ch in str(ld.label))
    try:
        folder = export.write_mib_submission(circuit, out / "mib", task_name, model_name)
        files["mib_submission"] = str(folder.relative_to(out) / "importances.json")
    except ValueError as e:  # e.g. an attention-only model: the MIB layout has MLP nodes
        skipped["mib_submission"] = str(e)
        log.warning("not writing the MIB submission folder: %s", e)


def _viewer_labels(ld: Loaded, graph) -> tuple[dict | None, list[str] | None]:
    """What the viewers show beside names: feature nodes' top-activating tokens (SAE graphs) and
    the first clean prompt's tokens under the columns of a position-resolved graph."""
    info = feature_labels(ld.model, graph, ld.task) if graph.node_graph.sites else None
    tokens = decode_tokens(ld.model, ld.task.clean[0]) if graph.positions is not None else None
    return info, tokens


def write_summary(out: Path, summary: dict, files: dict[str, str]) -> None:
    """summary.json, written last: a run folder without it did not finish. Before it, the result
    files of an earlier run into the folder that this run did not rewrite are removed, and the
    summary lists every file of the run with its SHA-256 (``manifest``)."""
    files["summary"] = FILES["summary"]
    summary["files"] = dict(files)
    rundir.finish_run(out, files.values(), FILES.values())
    summary["manifest"] = rundir.manifest(out, [name for key, name in files.items() if key != "summary"])
    atomic_write(out / FILES["summary"], lambda p: Path(p).write_text(json.dumps(summary, indent=1)))


# ---------------------------------------------------------------------------------------------
# Pieces (public so that scripts and tests can reuse them)
# ---------------------------------------------------------------------------------------------


def build_graph(gcfg: DictConfig, model, entry, task: Task, device: torch.device) -> cg.Graph:
    """The run's graph: heads and MLPs, split into neurons, SAE features and token positions as
    ``graph.*`` asks (any combination)."""
    neurons = bool(gcfg.neurons) or None
    if gcfg.saes is not None:
        saes = (
            zoo_saes(entry.name, device=device)
            if gcfg.saes == "zoo"
            else load_saes(Path(str(gcfg.saes)).expanduser(), device=device)
        )
        if not saes:
            raise GraphError(f"graph.saes=zoo: the zoo model {entry.name!r} ships no SAEs (the induction model does)")
        features = int(gcfg.features) if str(gcfg.features).isdigit() else str(gcfg.features)
        graph = cg.feature_graph(model, saes, task, features=features, split_qkv=bool(gcfg.split_qkv), neurons=neurons)
        log.info("SAE sites: %s", ", ".join(f"{s.hook_name} ({len(s.features)} feature nodes)" for s in graph.sites))
    else:
        graph = cg.Graph.from_model(model, split_qkv=bool(gcfg.split_qkv), neurons=neurons)
    if gcfg.positions:
        causal = getattr(model.cfg, "attention_dir", "causal") == "causal"
        return cg.PositionalGraph(graph, positions=task.seq_len, causal=causal)
    return graph


def resolve_device(device: str) -> torch.device:
    """``auto`` → cuda when available, else cpu; anything else as given (validated already)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_threads(cfg: DictConfig) -> int | None:
    """torch CPU threads: ``threads`` if set; else 1 for zoo models (tiny: thread start-up and
    contention cost more than they give, badly so on a shared machine), torch's default otherwise."""
    if cfg.threads is not None:
        return int(cfg.threads)
    return 1 if cfg.model.source == "zoo" else None


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_model(mcfg: DictConfig, device: torch.device) -> tuple[Any, Any, str]:
    """``(model, zoo_entry_or_None, label)`` for a model config (after :func:`validate`): a zoo
    entry as shipped, a pretrained / local model with the config's dtype and weight processing, or
    an HF folder booted through the TransformerBridge (``hf``; also ``pretrained`` when
    transformer-lens has no HookedTransformer). The label is the name, or for a folder its name."""
    if mcfg.source == "zoo":
        entry = zoo.load(mcfg.name, device=device)
        return entry.model, entry, mcfg.name
    dtype = getattr(torch, mcfg.dtype)
    processing = dict(
        fold_ln=bool(mcfg.fold_ln),
        center_writing_weights=bool(mcfg.center_writing_weights),
        center_unembed=bool(mcfg.center_unembed),
    )
    if mcfg.source == "pretrained":
        if not loading.has_hooked_transformer():  # transformer-lens 4.x: the hub model through the bridge
            return loading.load_bridge(mcfg.name, device, dtype, local_files_only=False), None, mcfg.name
        return loading.load_pretrained(mcfg.name, device, dtype, **processing), None, mcfg.name
    folder = Path(mcfg.path).expanduser().resolve()
    if mcfg.source == "hf":
        bridge = loading.load_bridge(folder, device, dtype, device_map=mcfg.get("device_map"))
        return bridge, None, (mcfg.name or folder.name)
    return loading.load_local_model(folder, device, dtype, **processing), None, (mcfg.name or folder.name)


def load_run_task(tcfg: DictConfig, model, entry) -> Task:
    """The task of a run: a zoo task or a file, with the metric and example limit applied."""
    if tcfg.source == "file":
        task = cg.load_task(Path(tcfg.path).expanduser(), model, metric=tcfg.metric or "logit_diff", name=tcfg.name)
    else:
        task = entry.task(tcfg.name)
        if tcfg.metric is not None and tcfg.metric != task.metric_name:
            task = dataclasses.replace(task, metric=tcfg.metric, clean_reference=None)
    if tcfg.limit is not None and tcfg.limit < task.n_examples:
        task = task.select(slice(0, int(tcfg.limit)))
    return task


def default_title(model_label: str, task_name: str, method: str, circuit: Circuit, graph) -> str:
    """graph.html's title when ``export.title`` is not set: what ran, and what it found."""
    f = circuit.faithfulness
    fs = f", faithfulness {f:.3f}" if f is not None else ""
    return f"{model_label} · {task_name} · {method} · {circuit.n_edges} of {graph.n_edges} edges{fs}"


def build_summary(
    cfg,
    circuit,
    graph,
    task,
    model_label,
    device,
    selection,
    faith,
    search_faith,
    curve,
    target,
    timings,
    wall,
    files,
    skipped,
    overrides,
) -> dict:
    """summary.json's content: the run's figures, timings, config and versions."""
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
        "graph": {
            "sources": graph.n_src,
            "destinations": graph.n_dst,
            "split_qkv": graph.split_qkv,
            "neuron_layers": sorted(graph.neurons),
            "positions": graph.positions,
            "sae_sites": {s.hook_name: len(s.features) for s in graph.node_graph.sites},
        },
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
        "versions": {
            "circuitgraph": cg.__version__,
            "torch": torch.__version__,
            "transformer_lens": tl_version,
            "python": sys.version.split()[0],
        },
    }


def _scrub_lines(summary: dict) -> list[str]:
    lines = []
    for key, label in (("circuit", "the circuit"), ("file", "the hypothesis file")):
        r = summary.get("scrubbing", {}).get(key)
        if r:
            lines.append(
                f"causal scrubbing: {label} recovers {r['loss_recovered']:.3f} of the loss "
                f"[{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]"
            )
    return lines


def headline(summary: dict) -> list[str]:
    """The run's result, leading with what was found: the circuit in words, against the zoo's
    known circuit, faithfulness, scrubbing; then one line for any caveats."""
    tgt = f" (target {summary['target']:g})" if summary.get("target") is not None else ""
    cpr = f"; CPR {summary['cpr']:.3f}, CMD {summary['cmd']:.3f}" if summary.get("cpr") is not None else ""
    lines = [
        f"circuitgraph: {summary['model']} / {summary['task']}, {summary['method']} under "
        f"{summary['ablation']} ablation ({summary['wall_time_s']:.1f} s on {summary['device']})",
        f"found: {summary['circuit_in_words']}",
    ]
    gt = summary.get("ground_truth") or {}
    if gt.get("level"):
        lines.append("vs the zoo's known circuit: " + ground_truth_text(gt))
    lines.append(
        f"faithfulness {summary['faithfulness']:.3f}{tgt} with {summary['edges_kept']} of "
        f"{summary['edges_total']} edges{cpr}"
    )
    lines += _scrub_lines(summary)
    if summary.get("caveats"):
        n = len(summary["caveats"])
        lines.append(f"{n} caveat{'s' if n > 1 else ''} in summary.json: {', '.join(summary['caveats'])}")
    return lines


def report(summary: dict, out: Path) -> None:
    """The headline on stdout, once (the log file gets it too), and where the files are."""
    lines = [
        *headline(summary),
        f"run directory: {out.resolve()}   (circuitgraph show {out.resolve()} prints the circuit)",
    ]
    if "html" in summary["files"]:
        lines.append(f"graph.html: {(out / summary['files']['html']).resolve()}")
    _to_log_files("\n".join(lines))
    print("\n".join(lines), flush=True)


def _to_log_files(text: str) -> None:
    """Write ``text`` to the run's log file(s) only: the terminal gets it from ``print``."""
    record = log.makeRecord(log.name, logging.INFO, __file__, 0, text, (), None)
    for handler in (*logging.getLogger().handlers, *log.handlers):
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def display_available() -> bool:
    """Whether a browser window can be opened (a desktop session, not a headless shell)."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def open_in_browser(path: Path) -> bool:
    """Open ``path`` in a browser when a display exists; whether one was opened."""
    if not display_available():
        log.info("no display: not opening a browser (open %s yourself)", path)
        return False
    import webbrowser  # only desktop runs open a browser; headless runs never load it

    return bool(webbrowser.open(Path(path).resolve().as_uri()))


if __name__ == "__main__":
    main()

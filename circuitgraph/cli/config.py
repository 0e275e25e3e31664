"""Structured configs for ``python -m circuitgraph``: the schema every YAML file under
``circuitgraph/cli/conf/`` is merged into, and the checks that run before any model is loaded.

The schema is closed (Hydra "struct" mode): a key that is not a field below is an error, both in a
YAML file and on the command line. :func:`check_overrides` turns such a typo into a message that
lists the valid keys (Hydra's own message does not), and :func:`validate` checks values — method
and ablation names, targets, devices, model names and files — without loading a model.

Config groups (one YAML file per option, selected with ``group=option``):

==========  ====================================================================================
model       a zoo entry (``induction``, ``tracr_reverse``, …, or ``zoo model.name=NAME``),
            ``pretrained model.name=gpt2`` (TransformerLens name; needs the HF hub or its cache),
            ``local model.path=DIR`` (a HuggingFace-format folder on disk → HookedTransformer),
            ``hf model.path=DIR`` (the same folder booted through TransformerLens's TransformerBridge)
task        ``zoo`` (the zoo entry's task; ``task.name`` picks one) or ``file task.path=F``
            (JSONL/CSV read by :func:`circuitgraph.load_task`)
method      ``eap``, ``eap-ig``, ``eap-ig-activations``, ``exact``, ``acdc``, ``edge-pruning``
            (learned edge masks)
ablation    ``resample`` (default), ``corrupted``, ``zero``, ``mean``, ``optimal`` (fitted constants)
circuit     ``minimal`` (smallest top-n with measured faithfulness ≥ target), ``top-n``,
            ``threshold`` (ignored by ``method=acdc``, which selects its own edges;
            ``method=edge-pruning`` reads ``circuit.target`` only)
prune       ``none``, ``scrubbing`` (the smallest circuit whose scrubbed loss recovered is ≥
            ``prune.target``, ranked by the method's scores; replaces the ``circuit`` selection)
export      ``default`` (every file), ``minimal`` (circuit + summary only)
==========  ====================================================================================
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
import math
import os
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from huggingface_hub import constants as hf_constants
from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from circuitgraph.attribution import METHODS as ATTRIBUTION_METHODS
from circuitgraph.circuit import SEARCH_METHODS
from circuitgraph.circuit.minimal import check_target
from circuitgraph.engine import ABLATIONS
from circuitgraph.errors import (
    ConfigError,  # re-exported: ``circuitgraph.cli.config.ConfigError``
    TaskError,
)
from circuitgraph.models.loading import check_hf_folder
from circuitgraph.tasks.io import check_task_file
from circuitgraph.tasks.metrics import METRICS as METRIC_FUNCTIONS

# ---------------------------------------------------------------------------------------------
# Valid values. Methods, ablations and metrics come from the modules that implement them, so a
# new one is accepted here without a second list to update; the rest belong to the CLI.
# ---------------------------------------------------------------------------------------------

METHODS = (*ATTRIBUTION_METHODS, *SEARCH_METHODS)  # acdc and learned masks select circuits themselves
ESTIMATORS = ("hard-concrete", "sampled")
PRUNE_KINDS = ("none", "scrubbing")
METRICS = tuple(METRIC_FUNCTIONS)
CIRCUIT_KINDS = ("minimal", "top-n", "threshold")
MODEL_SOURCES = ("zoo", "pretrained", "local", "hf")
TASK_SOURCES = ("zoo", "file")
DTYPES = ("float32", "float64", "bfloat16", "float16")
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")  # Hugging Face's placements by name
TASK_FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv")

ENV_HUB_OFFLINE = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")

# Hydra launchers by the plugin package that provides them (``hydra/launcher=NAME``): our presets
# (local_parallel, slurm, ray_local) and the plugins' own names.
LAUNCHER_PLUGINS = {
    "local_parallel": ("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher"),
    "joblib": ("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher"),
    "slurm": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
    "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
    "ray_local": ("hydra_plugins.hydra_ray_launcher", "hydra-ray-launcher"),
    "ray": ("hydra_plugins.hydra_ray_launcher", "hydra-ray-launcher"),
}
# What a plugin imports only when its jobs start: a plugin installed without it would fail after
# the sweep began, so it is checked with the plugin.
LAUNCHER_RUNTIME = {"hydra-submitit-launcher": "submitit", "hydra-ray-launcher": "ray"}


# ---------------------------------------------------------------------------------------------
# Schema
# ---------------------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    """Which model to analyse.

    source                  zoo | pretrained | local | hf
    name                    zoo entry name, or TransformerLens model name (``gpt2``), or a label
                            for a local model (default: the folder name)
    path                    local/hf only: a HuggingFace-format folder (config.json + weights;
                            hf also needs the tokenizer files)
    dtype                   pretrained/local/hf: float32 (default), float64, bfloat16, float16
    fold_ln, center_writing_weights, center_unembed
                            pretrained/local: TransformerLens weight processing (its defaults);
                            hf keeps the weights as Hugging Face has them (scores do not depend
                            on it)
    device_map              hf only: split a model too big for one device across the visible
                            ones as Hugging Face places it (auto | balanced | balanced_low_0 |
                            sequential); the run then works on the embedding's device
                            (docs/scaling-out.md)
    """

    source: str = "zoo"
    name: str | None = None
    path: str | None = None
    dtype: str = "float32"
    fold_ln: bool = True
    center_writing_weights: bool = True
    center_unembed: bool = True
    device_map: str | None = None


@dataclass
class TaskConfig:
    """What the circuit must do.

    source   zoo (a task shipped with the zoo model) | file (JSONL/CSV)
    name     zoo: which of the entry's tasks (default: its first); file: a label (default: stem)
    path     file only: the task file (columns clean, corrupted, answer[, wrong])
    metric   logit_diff | prob_diff | kl | cross_entropy | l2 (default: the zoo task's own metric,
             logit_diff for files)
    limit    use only the first ``limit`` examples (quick runs)
    """

    source: str = "zoo"
    name: str | None = None
    path: str | None = None
    metric: str | None = None
    limit: int | None = None


@dataclass
class MethodConfig:
    """How edges are scored (or, for ACDC, selected).

    name        eap | eap-ig | eap-ig-activations | exact | acdc
    steps       eap-ig*: interpolation steps
    batch_size  examples per forward pass (default: chosen from a memory budget)
    edge_batch  exact: single-edge patches run together
    threshold   acdc: τ, an edge is removed when removing it changes the tracked metric by < τ
    metric      acdc: the quantity ACDC tracks (kl by default; null = the task's metric)
    absolute    acdc: compare |change| with τ
    lambdas     edge-pruning: the L0 weights swept (null: 0.001 … 0.3)
    train_steps edge-pruning: optimisation steps
    estimator   edge-pruning: hard-concrete (relaxed gates, Edge Pruning) | sampled (binary gates,
                score-function gradient; for models with saturated attention such as tracr's)
    """

    name: str = "eap-ig"
    steps: int = 5
    batch_size: int | None = None
    edge_batch: int | None = None
    threshold: float = 0.01
    metric: str | None = "kl"
    absolute: bool = False
    lambdas: list[float] | None = None
    train_steps: int = 200
    estimator: str = "hard-concrete"


@dataclass
class AblationConfig:
    """What an ablated edge carries: resample (default) | corrupted | zero | mean (seed: resample's
    partners; default the run's seed). Resampling is what causal scrubbing does to the edges a
    hypothesis leaves out, so a circuit selected under it has a faithfulness and a scrubbing result
    that measure the same thing."""

    kind: str = "resample"
    seed: int | None = None


@dataclass
class CircuitConfig:
    """How the circuit is chosen from the scores (not used by acdc).

    kind      minimal | top-n | threshold
    target    minimal: the faithfulness to reach, in (0, 1] (1 = the whole model's effect)
    n         top-n: number of edges
    tau       threshold: keep edges with |score| ≥ tau
    absolute  rank by |score| (true) or by helpfulness, −score (false)
    prune     top-n/threshold: drop edges on no input→logits path (minimal always prunes)
    grid      minimal: number of geometric grid sizes measured before bisecting
    """

    kind: str = "minimal"
    target: float = 0.9
    n: int = 20
    tau: float = 0.0
    absolute: bool = True
    prune: bool = True
    grid: int = 24


@dataclass
class PruneConfig:
    """Pruning after the method's scores: none | scrubbing (the smallest circuit whose causal-
    scrubbing loss recovered stays ≥ ``target``, verified on a fresh seed; heads and MLPs only)."""

    kind: str = "none"
    target: float = 0.9


@dataclass
class GraphConfig:
    """Which nodes the graph has (neurons, positions and saes combine freely).

    split_qkv  a head's query, key and value inputs are separate destinations
    neurons    split every MLP into single-neuron nodes
    positions  one node per token position (prompts of one template length, no padding)
    saes       SAE feature nodes, with a rest and an error node per site: "zoo" (the SAEs shipped
               with a zoo model) or a folder in the SAELens layout (cfg.json +
               sae_weights.safetensors), or a folder of such folders, one per hook point
    features   which SAE features become nodes: active (non-zero on some prompt) | all | k (the
               top k per site by node attribution)
    """

    split_qkv: bool = True
    neurons: bool = False
    positions: bool = False
    saes: str | None = None
    features: str = "active"


@dataclass
class ExportConfig:
    """Which files a run writes besides circuit.json and summary.json (always written)."""

    scores: bool = True  # scores.safetensors: the full score matrix, valid mask, node names
    html: bool = True  # graph.html: the interactive viewer
    png: bool = True  # faithfulness.png: the faithfulness curve
    curve: bool = True  # measure the faithfulness curve, CPR and CMD (needed for png)
    graphml: bool = False  # circuit.graphml
    mib_json: bool = False  # circuit.mib.json (EAP-IG / MIB layout)
    neuronpedia: bool = False  # circuit.neuronpedia.json (Neuronpedia / circuit-tracer graph JSON)
    title: str | None = None  # title of graph.html (default: model · task · method · figures)
    open_browser: bool = False  # open graph.html when a display is available
    hypothesis: bool = True  # hypothesis.json: the circuit as a causal-scrubbing hypothesis, scrubbed
    # root samples for scrubbing (null: one per example). 1024 makes its 95% CI about ±0.01 on the
    # induction demo (±0.05 with one per example) for about a second.
    scrub_samples: int | None = 1024
    stability: int = 0  # bootstrap resamples for each edge's inclusion frequency (0: off)
    mib_submission: bool = False  # mib/<task>_<model>/importances.json (MIB circuit-track layout)


@dataclass
class Config:
    """A whole run. ``device``: auto (cuda if available, else cpu) | cpu | cuda | cuda:N | mps."""

    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    ablation: AblationConfig = field(default_factory=AblationConfig)
    circuit: CircuitConfig = field(default_factory=CircuitConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    device: str = "auto"
    seed: int = 0
    threads: int | None = None  # torch CPU threads; null: 1 for zoo models, else torch's default
    progress: bool = True  # progress bars for long stages
    # GB for what patched evaluation holds besides the model (mask batches, the ablation cache);
    # null: 3. The progress line of select/verify/curve says what it allows.
    memory_gb: float | None = None


GROUP_SCHEMAS: dict[str, type] = {
    "model": ModelConfig,
    "task": TaskConfig,
    "method": MethodConfig,
    "ablation": AblationConfig,
    "circuit": CircuitConfig,
    "prune": PruneConfig,
    "graph": GraphConfig,
    "export": ExportConfig,
}
TOP_LEVEL_KEYS = tuple(f.name for f in dataclasses.fields(Config))


def register_configs() -> None:
    """Put the schema into Hydra's ConfigStore (``base_config``, ``<group>/base``).

    ``config.yaml`` lists ``base_config`` first in its defaults, so every YAML file and every
    command-line override is merged into these typed, closed nodes."""
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config, provider="circuitgraph")
    # Zoo entries without their own YAML file still work as ``model=<name>``.
    for name in _zoo_names():
        if not (CONF_DIR / "model" / f"{name}.yaml").exists():
            cs.store(group="model", name=name, node=ModelConfig(source="zoo", name=name), provider="circuitgraph.zoo")


CONF_DIR = Path(__file__).resolve().parent / "conf"


# ---------------------------------------------------------------------------------------------
# Command-line key check (before Hydra composes anything)
# ---------------------------------------------------------------------------------------------


def _fields(schema: type) -> list[str]:
    return [f.name for f in dataclasses.fields(schema)]


def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def check_overrides(args: list[str]) -> None:
    """Reject command-line overrides whose key is not in the schema, listing the valid keys.

    Hydra refuses them too, but says only "Key 'x' is not in struct"; this names the valid keys
    and the closest one. Hydra's own flags and ``hydra.*`` / ``hydra/...`` overrides are left to
    Hydra."""
    extra_dirs = _config_dirs(args)
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue
        raw, value = arg.split("=", 1)
        key = raw.lstrip("+~")
        if key == "hydra/launcher":
            _check_launcher(value)
        if not key or key.startswith("hydra") or "@" in key or "/" in key:
            continue
        parts = key.split(".")
        if len(parts) == 1 and (raw.startswith("+") or any((d / key).is_dir() for d in extra_dirs[1:])):
            continue  # a config group of the user's own (``+experiment=x``, ``--config-dir``)
        _check_override_key(arg, key, parts)
        if len(parts) == 1 and key in GROUP_SCHEMAS:
            _check_group_option(arg, key, value, extra_dirs)


def _check_override_key(arg: str, key: str, parts: list[str]) -> None:
    """One override's dotted key against the schema (``arg`` is quoted in the message)."""
    head = parts[0]
    if head not in TOP_LEVEL_KEYS:
        raise ConfigError(
            f"unknown config key {head!r} in override {arg!r}.{_suggest(head, TOP_LEVEL_KEYS)} "
            f"Valid top-level keys: {', '.join(TOP_LEVEL_KEYS)} (the config groups are "
            f"{', '.join(GROUP_SCHEMAS)}: pick an option with e.g. method=eap, set a field "
            "with e.g. method.steps=10)."
        )
    if len(parts) < 2:
        return
    if head not in GROUP_SCHEMAS:
        raise ConfigError(f"{head!r} is a plain value and has no key {parts[1]!r} (override {arg!r})")
    valid = _fields(GROUP_SCHEMAS[head])
    if parts[1] not in valid:
        raise ConfigError(
            f"unknown key {key!r} in override {arg!r}.{_suggest(parts[1], valid)} "
            f"Valid keys of {head}: {', '.join(valid)}."
        )
    if len(parts) > 2:
        raise ConfigError(f"{key!r} is too deep: {head}.{parts[1]} is a plain value")


def group_options(group: str, config_dirs: list[Path] | None = None) -> list[str]:
    """The options of a config group: its YAML files in the shipped folder and any ``--config-dir``
    (for ``model`` also every zoo entry)."""
    names = {p.stem for d in (config_dirs or [CONF_DIR]) for p in (d / group).glob("*.y*ml")}
    if group == "model":
        names |= set(_zoo_names())
    return sorted(names)


def _check_group_option(arg: str, group: str, value: str, config_dirs: list[Path]) -> None:
    """``group=option`` (or a sweep ``group=a,b``): each option must exist, else name the closest."""
    if not (CONF_DIR / group).is_dir() or any(c in value for c in "$([{'\"") or value in ("null", ""):
        return  # no shipped options, or a value only Hydra's grammar can read
    options = group_options(group, config_dirs)
    for option in (v.strip() for v in value.split(",")):
        if option not in options:
            raise ConfigError(
                f"unknown {group} {option!r} in {arg!r}.{_suggest(option, options)} "
                f"Options of {group}: {', '.join(options)}."
            )


def _check_launcher(name: str) -> None:
    """A launcher whose plugin is not installed: say which package to install."""
    plugin = LAUNCHER_PLUGINS.get(name)
    if plugin is None:
        return  # basic, or a launcher of the user's own: Hydra reports what it cannot find
    module, package = plugin
    runtime = LAUNCHER_RUNTIME.get(package)
    missing = [m for m in (module, runtime) if m is not None and not _importable(m)]
    if missing:
        what = f"the Hydra plugin {package}" + (f" (with {runtime})" if runtime else "")
        raise ConfigError(
            f"hydra/launcher={name} needs {what}, which is not installed here "
            f"(cannot import {', '.join(missing)}). "
            f"Install it with pip install 'circuitgraph[launchers]' (or pip install {package}), "
            "or drop hydra/launcher=... to run the sweep's jobs one after another."
        )


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package (e.g. the hydra_plugins namespace) is missing
        return False


def _config_dirs(args: list[str]) -> list[Path]:
    """Config folders named with ``--config-dir``/``-cd`` (plus the shipped one)."""
    dirs = [CONF_DIR]
    for i, a in enumerate(args):
        if a in ("--config-dir", "-cd") and i + 1 < len(args):
            dirs.append(Path(args[i + 1]).expanduser())
        elif a.startswith("--config-dir="):
            dirs.append(Path(a.split("=", 1)[1]).expanduser())
    return dirs


def check_sweep(args: list[str]) -> None:
    """For ``-m`` runs: validate every value of every swept key before the first job starts.

    Each value is checked in a config composed with the other swept keys at their first value
    (one composition per value, not per job), so ``circuit.target=0.9,-1`` fails at once instead
    of after the first job. Sweeps that depend on configs this cannot see (``--config-dir``,
    ``+group=...``, the sweeper's own params) are left to the per-job check."""
    if not any(a in ("-m", "--multirun") for a in args):
        return
    if any(a.startswith(("--config-dir", "-cd", "--config-name", "-cn", "--config-path", "-cp")) for a in args):
        return
    overrides = [a for a in args if not a.startswith("-") and "=" in a and not a.lstrip("+~").startswith("hydra")]
    if any(a.startswith("+") for a in overrides):
        return
    split = _split_sweep(overrides)
    if split is not None and split[1]:
        _check_sweep_values(*split)


def _split_sweep(overrides: list[str]) -> tuple[list[str], list[tuple[str, list[str]]]] | None:
    """``(fixed overrides, [(swept key, its values)])``, or None when Hydra's parser cannot
    enumerate the sweep (malformed overrides, which Hydra reports itself, or an interval sweep
    meant for an optimising sweeper)."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # Hydra reports malformed overrides itself
        return None
    fixed: list[str] = []
    swept: list[tuple[str, list[str]]] = []
    for o in parsed:
        if not o.is_sweep_override():
            assert o.input_line is not None  # (the parser records every override's text)
            fixed.append(o.input_line)
            continue
        try:
            swept.append((o.get_key_element(), list(o.sweep_string_iterator())))
        except Exception:  # e.g. an interval sweep, meant for an optimising sweeper
            return None
    return fixed, swept


def _check_sweep_values(fixed: list[str], swept: list[tuple[str, list[str]]]) -> None:
    """Compose and validate each swept value, the other swept keys at their first value."""
    first = [f"{k}={v[0]}" for k, v in swept]
    for i, (key, values) in enumerate(swept):
        for v in values:
            trial = fixed + first[:i] + [f"{key}={v}"] + first[i + 1 :]
            try:
                cfg = _compose(trial)
            except Exception as e:  # e.g. method=foo: the job would fail to compose
                cause = f"\n{e.__cause__}" if e.__cause__ is not None else ""
                raise ConfigError(f"in the sweep value {key}={v}: {e}{cause}") from None
            try:
                validate(cfg, check_hub=False)
            except ConfigError as e:
                raise ConfigError(f"in the sweep value {key}={v}: {e}") from None


def _compose(overrides: list[str]) -> DictConfig:
    register_configs()
    with initialize_config_module(config_module="circuitgraph.cli.conf", version_base="1.3"):
        return compose("config", overrides=overrides)


# ---------------------------------------------------------------------------------------------
# Value checks (after composition, before loading)
# ---------------------------------------------------------------------------------------------


def _choice(what: str, value, valid) -> None:
    if value not in valid:
        raise ConfigError(f"unknown {what} {value!r}.{_suggest(str(value), valid)} Valid choices: {', '.join(valid)}.")


def _zoo_names() -> list[str]:
    """Zoo entries (folder names), read without importing torch."""
    root = Path(__file__).resolve().parents[1] / "zoo" / "data"
    if not root.is_dir():
        return []
    return sorted(
        p.name
        for p in root.iterdir()
        if p.is_dir() and (p / "model.json").is_file() and (p / "model.safetensors").is_file()
    )


def _get(cfg, dotted: str):
    """A value, or MISSING's sentinel error turned into a ConfigError naming the key."""
    node, key = dotted.rsplit(".", 1) if "." in dotted else ("", dotted)
    parent = OmegaConf.select(cfg, node) if node else cfg
    if OmegaConf.is_missing(parent, key):
        raise ConfigError(f"{dotted} is required but not set; add {dotted}=... to the command line")
    return parent[key]


def validate(cfg: DictConfig | Config, *, check_hub: bool = True) -> None:
    """Check a composed config without loading anything heavy. Raises :class:`ConfigError`."""
    conf: DictConfig = cfg if isinstance(cfg, DictConfig) else OmegaConf.structured(cfg)
    _check_method(conf)
    _choice("ablation (ablation.kind)", _get(conf, "ablation.kind"), ABLATIONS)
    _check_circuit(conf)
    _check_graph(conf)
    _check_run(conf)
    # --- model, task, and last the hub (the only check that may touch the network)
    official = _check_model(conf)
    _check_task(conf)
    if official is not None and check_hub:
        check_hub_access(official, conf.model.name)


def _check_method(cfg: DictConfig) -> None:
    _choice("method (method.name)", _get(cfg, "method.name"), METHODS)
    if cfg.method.name == "acdc" and importlib.util.find_spec("circuitgraph.circuit.acdc") is None:
        raise ConfigError(
            "method=acdc is not available in this install of circuitgraph "
            "(circuitgraph.circuit.acdc is missing); choose one of "
            f"{', '.join(m for m in METHODS if m != 'acdc')}"
        )
    if cfg.method.steps < 1:
        raise ConfigError(f"method.steps must be ≥ 1, got {cfg.method.steps}")
    for k in ("batch_size", "edge_batch"):
        v = cfg.method[k]
        if v is not None and v < 1:
            raise ConfigError(f"method.{k} must be ≥ 1 (or null for automatic), got {v}")
    if cfg.method.name == "edge-pruning":
        if cfg.method.train_steps < 1:
            raise ConfigError(f"method.train_steps must be ≥ 1, got {cfg.method.train_steps}")
        _choice("method.estimator", cfg.method.estimator, ESTIMATORS)
        lams = cfg.method.lambdas
        if lams is not None and (not len(lams) or any(not math.isfinite(x) or x < 0 for x in lams)):
            raise ConfigError(f"method.lambdas must be a non-empty list of numbers ≥ 0, got {list(lams)}")
    if cfg.method.name == "acdc":
        if not math.isfinite(cfg.method.threshold) or cfg.method.threshold < 0:
            raise ConfigError(f"method.threshold (ACDC's τ) must be a finite number ≥ 0, got {cfg.method.threshold}")
        if cfg.method.metric is not None:
            _choice("method.metric (ACDC's tracked metric)", cfg.method.metric, METRICS)


def _check_circuit(cfg: DictConfig) -> None:
    _choice("circuit selection (circuit.kind)", _get(cfg, "circuit.kind"), CIRCUIT_KINDS)
    c = cfg.circuit
    if c.kind == "minimal":
        try:
            check_target(c.target)
        except ConfigError as e:
            raise ConfigError(f"circuit.target: {e}") from None
    if c.kind == "top-n" and c.n < 1:
        raise ConfigError(f"circuit.n must be ≥ 1, got {c.n}")
    if c.kind == "threshold" and not (math.isfinite(c.tau) and c.tau >= 0):
        raise ConfigError(f"circuit.tau must be a finite number ≥ 0, got {c.tau}")
    if c.grid < 2:
        raise ConfigError(f"circuit.grid must be ≥ 2, got {c.grid}")
    _choice("pruning (prune.kind)", _get(cfg, "prune.kind"), PRUNE_KINDS)
    if cfg.prune.kind != "none" and not (math.isfinite(cfg.prune.target) and 0 < cfg.prune.target <= 1.5):
        raise ConfigError(f"prune.target must be a loss recovered in (0, 1.5], got {cfg.prune.target}")
    if cfg.prune.kind == "scrubbing" and any(cfg.graph[k] for k in ("neurons", "positions", "saes")):
        raise ConfigError(
            "prune=scrubbing scrubs heads and MLPs only; drop graph.neurons / graph.positions / graph.saes"
        )


def _check_run(cfg: DictConfig) -> None:
    """Threads, device, exported files and a hypothesis file to test."""
    if cfg.threads is not None and cfg.threads < 1:
        raise ConfigError(f"threads must be ≥ 1 (or null), got {cfg.threads}")
    if cfg.memory_gb is not None and not (math.isfinite(cfg.memory_gb) and cfg.memory_gb > 0):
        raise ConfigError(f"memory_gb must be a positive number of gigabytes (or null for 3), got {cfg.memory_gb}")
    _check_device(cfg.device)
    if cfg.export.png and not cfg.export.curve:
        raise ConfigError("export.png needs the faithfulness curve: set export.curve=true or export.png=false")
    if cfg.export.stability < 0 or cfg.export.stability == 1:
        raise ConfigError(
            f"export.stability is a number of bootstrap resamples ≥ 2 (or 0: off), got {cfg.export.stability}"
        )
    if cfg.export.scrub_samples is not None and cfg.export.scrub_samples < 2:
        raise ConfigError(f"export.scrub_samples must be ≥ 2 (or null), got {cfg.export.scrub_samples}")
    hyp = cfg.get("hypothesis")  # added with +hypothesis=path.json: a hypothesis file to test
    if hyp is not None:
        path = Path(str(hyp)).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"+hypothesis={hyp}: no such file; give the path of a saved hypothesis "
                "(Hypothesis.save, or the hypothesis.json of an earlier run)"
            )


def _check_graph(cfg: DictConfig) -> None:
    g = cfg.graph
    if g.saes is not None:
        if g.saes == "zoo":
            if cfg.model.source != "zoo":
                raise ConfigError(
                    "graph.saes=zoo uses the SAEs shipped with a zoo model, but model.source is "
                    f"{cfg.model.source!r}; give graph.saes=<folder of SAELens-format SAEs>"
                )
        elif not Path(str(g.saes)).expanduser().is_dir():
            raise ConfigError(
                f"graph.saes={g.saes}: no such folder; give 'zoo' or a folder holding cfg.json + "
                "sae_weights.safetensors (or one such folder per hook point)"
            )
    if not (g.features in ("active", "all") or str(g.features).isdigit()):
        raise ConfigError(f"graph.features must be active, all or a number of features per site, got {g.features!r}")


def _check_device(device: str) -> None:
    base = device.split(":", 1)[0]
    _choice("device", base, ("auto", "cpu", "cuda", "mps"))
    if base in ("auto", "cpu"):
        if ":" in device:
            raise ConfigError(f"device {device!r}: only cuda takes an index (cuda:0)")
        return
    if base == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device={device} but no CUDA device is available; use device=auto or device=cpu")
        if ":" in device:
            idx = device.split(":", 1)[1]
            if not idx.isdigit() or int(idx) >= torch.cuda.device_count():
                raise ConfigError(f"device {device!r}: there are {torch.cuda.device_count()} CUDA device(s)")
    if base == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("device=mps but MPS is not available; use device=auto or device=cpu")


def _check_task(cfg) -> None:
    t = cfg.task
    _choice("task source (task.source)", t.source, TASK_SOURCES)
    if t.metric is not None:
        _choice("task.metric", t.metric, METRICS)
    if t.limit is not None and t.limit < 1:
        raise ConfigError(f"task.limit must be ≥ 1 (or null for every example), got {t.limit}")
    n: int | None
    if t.source == "file":
        n = _check_task_file(t.path, t.metric or "logit_diff")
    else:
        n = _check_zoo_task(cfg)
    if n is not None and t.limit is not None:
        n = min(n, int(t.limit))
    if cfg.ablation.kind == "resample" and n is not None and n < 2:
        raise ConfigError(
            f"ablation=resample takes each ablated activation from another example, but the task has {n} "
            "example; give at least 2 examples or choose ablation=corrupted"
        )


def _check_task_file(path: str | None, metric: str) -> int:
    """The task file's number of examples, after checking it without a model (columns, cells, ids)."""
    if not path:
        raise ConfigError(
            "task=file needs task.path=FILE (a .jsonl or .csv file with columns clean, corrupted, answer[, wrong])"
        )
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(
            f"task file {str(p)!r} does not exist (relative paths are relative to "
            f"the directory you ran from, {os.getcwd()!r})"
        )
    if p.suffix.lower() not in TASK_FILE_SUFFIXES:
        raise ConfigError(f"task file {str(p)!r} has suffix {p.suffix!r}; use one of {', '.join(TASK_FILE_SUFFIXES)}")
    try:
        return len(check_task_file(p, metric=metric))
    except TaskError as e:
        raise ConfigError(str(e)) from None


def _check_zoo_task(cfg: DictConfig) -> int | None:
    """task=zoo: the model must be a zoo entry, and a named task one of its tasks; the task's
    number of examples when its file says it."""
    t = cfg.task
    if cfg.model.source != "zoo":
        raise ConfigError(
            f"model={cfg.model.source} has no built-in tasks: give one with "
            "task=file task.path=FILE (JSONL or CSV with columns clean, corrupted, answer[, wrong]; "
            "see examples/data/)"
        )
    if t.path is not None:
        raise ConfigError("task.path is only read with task=file; add task=file")
    if t.name is not None and cfg.model.name in _zoo_names():
        names = _zoo_task_names(cfg.model.name)
        if names is not None and t.name not in names:
            raise ConfigError(
                f"zoo model {cfg.model.name!r} has no task {t.name!r}.{_suggest(t.name, names)} "
                f"Its tasks: {', '.join(names)} (or task=file task.path=FILE for your own)."
            )
    return _zoo_task_size(cfg.model.name, t.name)


def _zoo_task_size(model: str, task: str | None) -> int | None:
    """Examples in a zoo task, read from its model.json (no model is built); None if unknown."""
    try:
        doc = json.loads((Path(__file__).resolve().parents[1] / "zoo" / "data" / model / "model.json").read_text())
        tasks = doc["tasks"]
        return len(tasks[task or next(iter(tasks))]["clean"])
    except (OSError, ValueError, KeyError, TypeError, StopIteration):
        return None  # the loader reports a broken entry properly


def _zoo_task_names(model: str) -> list[str] | None:
    """Task names of a zoo entry, read from its model.json (no model is built)."""
    try:
        doc = json.loads((Path(__file__).resolve().parents[1] / "zoo" / "data" / model / "model.json").read_text())
        return list(doc["tasks"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # the loader reports a broken entry properly


def _check_model(cfg) -> str | None:
    """Check the model config; for a pretrained model return its official hub name."""
    m = cfg.model
    _choice("model source (model.source)", m.source, MODEL_SOURCES)
    _choice("model.dtype", m.dtype, DTYPES)
    if m.get("device_map") is not None:
        if m.source != "hf":
            raise ConfigError(
                f"model.device_map splits a model across devices through the TransformerBridge; use it with "
                f"model=hf model.path=DIR (this run has model.source={m.source})"
            )
        _choice("model.device_map", m.device_map, DEVICE_MAPS)
    if m.source == "zoo":
        names = _zoo_names()
        name = _get(cfg, "model.name")
        if name not in names:
            raise ConfigError(
                f"unknown zoo model {name!r}.{_suggest(str(name), names)} Shipped models: "
                f"{', '.join(names) or '(none)'}. For a TransformerLens model use "
                "model=pretrained model.name=NAME; for a HuggingFace folder on disk, "
                "model=local model.path=DIR."
            )
        if m.path is not None:
            raise ConfigError("model.path is only read with model=local or model=hf")
        return None
    if m.source == "hf":
        path = m.path if not OmegaConf.is_missing(m, "path") else None
        if not path:
            raise ConfigError(
                "model=hf needs model.path=DIR, a HuggingFace-format folder (config.json, the weights and the "
                "tokenizer files, as save_pretrained() writes them)"
            )
        check_hf_folder(Path(path).expanduser())
        return None
    if m.source == "local":
        path = m.path if not OmegaConf.is_missing(m, "path") else None
        if not path:
            raise ConfigError(
                "model=local needs model.path=DIR, a HuggingFace-format folder "
                "(config.json plus model.safetensors or pytorch_model.bin)"
            )
        p = Path(path).expanduser()
        if not (p / "config.json").is_file():
            raise ConfigError(
                f"model.path {str(p)!r} is not a HuggingFace model folder: it has no config.json. "
                "Save one with model.save_pretrained(DIR) (transformers) and point model.path at it."
            )
        return None
    # pretrained
    name = _get(cfg, "model.name")
    if not name:
        raise ConfigError("model=pretrained needs model.name=NAME (a TransformerLens model name, e.g. gpt2)")
    if m.path is not None:
        raise ConfigError("model.path is only read with model=local or model=hf; for a folder on disk use one of them")
    return _official_name(name)


def _official_name(name: str) -> str:
    """The hub name TransformerLens maps ``name`` to; a ConfigError naming close names if none."""
    try:  # transformer_lens takes seconds to import: only pretrained models pay for it, and only here
        from transformer_lens.loading_from_pretrained import get_official_model_name, make_model_alias_map
    except ImportError:  # transformer-lens 4.x: no HookedTransformer name list; the bridge takes hub names
        return name

    try:
        return get_official_model_name(name)
    except ValueError:
        known = sorted(make_model_alias_map())
        close = difflib.get_close_matches(name.lower(), known, n=3, cutoff=0.6)
        hint = f" Close names: {', '.join(close)}." if close else ""
        raise ConfigError(
            f"{name!r} is not a TransformerLens model name.{hint} model=pretrained takes a name "
            "from TransformerLens' list of supported models; for another HuggingFace model saved "
            "on disk use model=local model.path=DIR, for a shipped model model=induction "
            f"(zoo: {', '.join(_zoo_names())})."
        ) from None


def _truthy(v: str | None) -> bool:
    return (v or "").strip().lower() in ("1", "true", "yes", "on")


def hub_cache_dir() -> Path:
    """Where the Hugging Face hub cache lives (HF_HUB_CACHE / HF_HOME, as huggingface_hub reads them)."""
    return Path(hf_constants.HF_HUB_CACHE)


def is_cached(repo_id: str) -> bool:
    """Whether the HF cache holds a snapshot of ``repo_id`` (enough to load it offline)."""
    snaps = hub_cache_dir() / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    return snaps.is_dir() and any(snaps.iterdir())


def hub_reachable(timeout: float = 3.0) -> tuple[bool, str]:
    """Can we open a TCP connection to the hub? (DNS and connect bounded by ``timeout``.)"""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    u = urlparse(endpoint)
    host, port = u.hostname or "huggingface.co", u.port or (443 if u.scheme != "http" else 80)
    result: dict[str, Any] = {}

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result["ok"] = True
        except OSError as e:
            result["err"] = f"{type(e).__name__}: {e}"

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    if result.get("ok"):
        return True, host
    return False, f"{host}:{port} ({result.get('err', f'no answer in {timeout:.0f} s')})"


def check_hub_access(repo_id: str, asked: str | None = None) -> None:
    """Fail fast when a pretrained model is neither in the HF cache nor downloadable."""
    if is_cached(repo_id):
        return
    asked = asked or repo_id
    what_to_do = (
        "What to do: (1) use a model shipped with circuitgraph, e.g. model=induction or "
        f"model=tracr_reverse (all: {', '.join(_zoo_names())}); (2) load a HuggingFace-format "
        "folder you already have with model=local model.path=DIR; or (3) on a machine with "
        f'network, run `python -c "from transformer_lens import HookedTransformer; '
        f"HookedTransformer.from_pretrained('{asked}')\"` and copy its Hugging Face cache "
        f"(HF_HOME, here {str(hub_cache_dir())!r}) to this machine; with HF_HUB_OFFLINE=1 "
        "circuitgraph and transformers then load from that cache without touching the network."
    )
    offline = [v for v in ENV_HUB_OFFLINE if _truthy(os.environ.get(v))]
    if offline:
        raise ConfigError(
            f"model {asked!r} ({repo_id}) is not in the local Hugging Face cache "
            f"({str(hub_cache_dir())!r}) and {offline[0]}=1 forbids downloading it. " + what_to_do
        )
    ok, where = hub_reachable()
    if not ok:
        raise ConfigError(
            f"model {asked!r} ({repo_id}) must be downloaded from the Hugging Face hub, but the hub "
            f"cannot be reached from this machine ({where}) and the model is not in the local "
            f"cache ({str(hub_cache_dir())!r}). " + what_to_do + " Setting HF_HUB_OFFLINE=1 also "
            "makes this check answer at once instead of waiting for the network."
        )


def to_container(cfg) -> dict:
    """A plain dict of the config (for summary.json)."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]

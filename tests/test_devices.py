"""Models split across devices (:mod:`circuitgraph.models.devices`): the backend that moves tensors
across the seam for a split model, and a bridge booted with a ``device_map``.

What a CPU-only machine can show, and what it cannot:

* a simulated second device: the tiny model's blocks, final norm and unembedding hold tensors of
  class ``Elsewhere``, which report device ``cpu:1`` and raise, as torch does across devices, on
  any op that mixes them with an ordinary floating tensor. The engine then runs every method, the
  full and empty circuits, EAP against finite differences, a minimal circuit and a curve on the
  first device without one mixed op and with the numbers of the unsplit model. Dropping any move
  at the seam (a hook's result, a weight, a norm gain, a norm module) makes it fail;
* not simulated: gradients (autograd makes them ordinary tensors, so a missing move in a backward
  hook goes unseen), devices' own kernels, memory, and a bridge's forward (Hugging Face builds
  float masks inside it that the simulation would take for a mix). A bridge booted with a
  ``device_map`` is loaded for real, on the CPU only;
* a real split over two GPUs: none was lent to this work.
"""

from __future__ import annotations

import json

import pytest
import torch
from checks import full_and_empty, source_fd_error
from conftest import tiny_model, tiny_task
from hydra import compose, initialize_config_module
from torch.utils._pytree import tree_leaves
from torch.utils._pytree import tree_map_only as map_only

import circuitgraph as cg
from circuitgraph.cli import main as cli
from circuitgraph.cli.config import ConfigError, register_configs, validate
from circuitgraph.models import Backend, HookedTransformerBackend, SplitModelBackend, as_backend, load_bridge
from circuitgraph.models import devices as devices_mod
from circuitgraph.models.devices import is_split, parameter_devices

METHODS = ("eap", "eap-ig", "exact")


def compose_cfg(*overrides: str):
    register_configs()
    with initialize_config_module(config_module="circuitgraph.cli.conf", version_base="1.3"):
        return compose("config", overrides=list(overrides))


def _as_if_split(monkeypatch) -> None:
    """Every model treated as split, and every crossing of the seam a copy."""
    monkeypatch.setattr(devices_mod, "is_split", lambda model: True)
    monkeypatch.setattr(devices_mod, "_move", lambda t, device: t.to(device, copy=True))


# ---------------------------------------------------------------------------------------------
# a second device, simulated: tensors of class Elsewhere report device cpu:1, and an op mixing one
# with an ordinary floating tensor raises, as torch does for tensors on two devices
# ---------------------------------------------------------------------------------------------

OTHER = torch.device("cpu", 1)


class Elsewhere(torch.Tensor):
    """A tensor on the simulated second device."""

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return OTHER

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        here = [t for t in tensors if not isinstance(t, Elsewhere) and t.dim() > 0 and t.is_floating_point()]
        if here and len(here) < len(tensors):  # (integer indices and 0-dim tensors mix, as in torch)
            raise RuntimeError(f"Expected all tensors to be on the same device: {func} mixes cpu and {OTHER}")
        return super().__torch_function__(func, types, args, kwargs)


def _simulated_move(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device == OTHER:
        return t if isinstance(t, Elsewhere) else t.as_subclass(Elsewhere)
    return t.as_subclass(torch.Tensor) if isinstance(t, Elsewhere) else t


def _split_blocks(model, monkeypatch) -> None:
    """Put ``model``'s blocks, final norm and unembedding on the simulated second device (the
    embedding stays: it is the engine's device). Like accelerate's dispatch of a split model,
    each moved module gets its inputs on its device and the logits come back to the tokens'."""
    moved = [*model.blocks, model.unembed] + ([model.ln_final] if hasattr(model, "ln_final") else [])
    for module in moved:
        for sub in module.modules():
            for name, p in list(sub._parameters.items()):
                if p is not None:
                    sub._parameters[name] = torch.nn.Parameter(p.detach().as_subclass(Elsewhere), p.requires_grad)
            for name, b in list(sub._buffers.items()):
                if b is not None and b.is_floating_point():
                    sub._buffers[name] = b.as_subclass(Elsewhere)
        module.register_forward_pre_hook(
            lambda mod, args, kwargs: tuple(
                map_only(torch.Tensor, lambda t: _simulated_move(t, OTHER), (args, kwargs))
            ),
            with_kwargs=True,
        )
    model.register_forward_hook(lambda mod, args, out: map_only(torch.Tensor, lambda t: _simulated_move(t, CPU), out))
    monkeypatch.setattr(devices_mod, "_move", _simulated_move)


CPU = torch.device("cpu")


def _scores(model, graph, task) -> dict[str, torch.Tensor]:
    return {m: cg.attribute(model, graph, task, method=m, progress=False, scores_dtype=torch.float64) for m in METHODS}


def test_only_a_split_model_is_wrapped(monkeypatch):
    model = tiny_model(dtype=torch.float64)
    assert parameter_devices(model) == [torch.device("cpu")] and not is_split(model)
    assert type(as_backend(model)) is HookedTransformerBackend  # one device: nothing in between
    _as_if_split(monkeypatch)
    bk = as_backend(model)
    assert isinstance(bk, SplitModelBackend) and isinstance(bk, Backend)
    assert isinstance(bk.inner, HookedTransformerBackend) and as_backend(bk) is bk
    # facts and hook names are the inner backend's; the engine's device is the embedding's
    assert bk.architecture() == bk.inner.architecture() and bk.fingerprint() == bk.inner.fingerprint()
    assert bk.z_hook(1) == bk.inner.z_hook(1) and bk.device == model.embed.W_E.device
    assert bk.layer_device(1) == model.blocks[1].attn.W_Q.device
    W = bk.W_O(0)  # a copy on the engine's device, equal to the model's weights
    assert torch.equal(W, bk.inner.W_O(0)) and W.data_ptr() != bk.inner.W_O(0).data_ptr()


@pytest.mark.parametrize("neurons", [False, True], ids=["heads", "neurons"])
def test_on_a_simulated_second_device_the_engine_mixes_no_devices(neurons, monkeypatch):
    """The blocks on the simulated second device, the engine on the first: every method, the full
    and empty circuits, EAP against finite differences and a minimal circuit run without an op
    that mixes the two (which raises), and give the numbers of the model on one device."""
    model = tiny_model(dtype=torch.float64)
    task = tiny_task(model)
    graph = cg.Graph.from_model(model, neurons={0: [1, 4, 7, 30], 1: [0, 2, 31]} if neurons else None)
    want = _scores(model, graph, task)
    want_circuit = cg.minimal_circuit(model, graph, task, target=0.8, method="eap")
    want_curve = cg.faithfulness_curve(model, graph, task)
    clean = model(task.clean)
    _split_blocks(model, monkeypatch)
    assert is_split(model) and parameter_devices(model) == [CPU, OTHER]
    bk = as_backend(model)
    assert isinstance(bk, SplitModelBackend) and bk.device == CPU and bk.layer_device(1) == OTHER
    with pytest.raises(RuntimeError, match="same device"):  # the simulation does catch a mix
        model.blocks[0].attn.W_O.sum() + torch.ones(3, dtype=torch.float64)
    logits = model(task.clean)
    assert type(logits) is torch.Tensor and torch.equal(logits, clean)  # back where the tokens went in
    got = _scores(model, graph, task)
    for m in METHODS:
        assert torch.allclose(got[m], want[m], rtol=1e-9, atol=1e-12), m
    full, empty = full_and_empty(model, graph, task)
    assert full < 1e-9 and empty < 1e-9
    assert source_fd_error(model, graph, task) < 1e-5
    circuit = cg.minimal_circuit(model, graph, task, target=0.8, method="eap")
    assert torch.equal(circuit.mask, want_circuit.mask)
    assert circuit.faithfulness == pytest.approx(want_circuit.faithfulness, rel=1e-9)
    curve = cg.faithfulness_curve(model, graph, task)
    assert (curve.cpr, curve.cmd) == (pytest.approx(want_curve.cpr, rel=1e-9), pytest.approx(want_curve.cmd, rel=1e-9))


# ---------------------------------------------------------------------------------------------
# a bridge booted with a device_map
# ---------------------------------------------------------------------------------------------

# GPT-2's module names: one entry per block, so each layer could go to its own device (here all
# on the CPU: a machine without GPUs has no second device). wte and lm_head share their weights
# and must stay together.
DEVICE_MAP = {
    "transformer.wte": "cpu",
    "transformer.wpe": "cpu",
    "transformer.h.0": "cpu",
    "transformer.h.1": "cpu",
    "transformer.ln_f": "cpu",
    "lm_head": "cpu",
}


def test_bridge_with_a_device_map_gives_the_same_scores(hf_folder, monkeypatch):
    pytest.importorskip("accelerate", reason="device_map needs accelerate (a transformers extra)")
    folder = hf_folder("gpt2")
    plain = load_bridge(folder, "cpu", torch.float64)
    mapped = load_bridge(folder, dtype=torch.float64, device_map=DEVICE_MAP)
    # a map onto one device is a plain placement (Hugging Face dispatches only across several)
    assert getattr(mapped.original_model, "hf_device_map", DEVICE_MAP) == DEVICE_MAP
    assert str(mapped.cfg.device) == "cpu" and getattr(mapped.cfg, "n_devices", 1) == 1
    task = tiny_task(plain, n=4, seq=6)
    graph = cg.Graph.from_model(plain)
    want = _scores(plain, graph, task)
    got = _scores(mapped, graph, task)
    for m in METHODS:
        assert torch.allclose(got[m], want[m], rtol=1e-9, atol=1e-12), m
    _as_if_split(monkeypatch)  # and through the split model's seam, every crossing a copy
    assert isinstance(as_backend(mapped), SplitModelBackend)
    split = _scores(mapped, graph, task)
    for m in METHODS:
        assert torch.allclose(split[m], want[m], rtol=1e-9, atol=1e-12), m
    full, empty = full_and_empty(mapped, graph, task)
    assert full < 1e-9 and empty < 1e-9


def test_command_line_device_map_runs_the_same_circuit(hf_folder, tmp_path):
    """``model=hf model.device_map=auto``: on this machine every module lands on the CPU, and the
    run finds the circuit of the run without a map."""
    pytest.importorskip("accelerate", reason="device_map needs accelerate (a transformers extra)")
    folder = hf_folder("gpt2")
    task = tmp_path / "ids.jsonl"
    g = torch.Generator().manual_seed(1)
    with task.open("w") as f:
        for _ in range(6):
            clean, corr = torch.randint(4, 32, (2, 7), generator=g).tolist()
            f.write(json.dumps({"clean": clean, "corrupted": corr, "answer": clean[-1], "wrong": corr[-1]}) + "\n")
    common = ["model=hf", f"model.path={folder}", "model.dtype=float64", "task=file", f"task.path={task}"]
    common += ["method=eap", "ablation=corrupted", "circuit.target=0.8", "export=minimal", "progress=false"]
    want = cli.run(compose_cfg(*common), tmp_path / "plain")
    got = cli.run(compose_cfg(*common, "model.device_map=auto"), tmp_path / "mapped")
    assert got["config"]["model"]["device_map"] == "auto"
    for key in ("edges_kept", "edges_total", "nodes"):
        assert got[key] == want[key], key
    assert got["faithfulness"] == pytest.approx(want["faithfulness"], rel=1e-9)
    assert (
        json.loads((tmp_path / "mapped" / "circuit.json").read_text())["edges"]
        == json.loads((tmp_path / "plain" / "circuit.json").read_text())["edges"]
    )


@pytest.mark.parametrize(
    "overrides, needles",
    [
        (["model.device_map=auto"], ["model.device_map", "model=hf", "model.source=zoo"]),
        (["model=hf", "model.path=/x", "model.device_map=evenly"], ["model.device_map", "balanced"]),
    ],
)
def test_command_line_device_map_is_checked(overrides, needles):
    with pytest.raises(ConfigError) as e:
        validate(compose_cfg(*overrides))
    for n in needles:
        assert n in str(e.value), (n, str(e.value))

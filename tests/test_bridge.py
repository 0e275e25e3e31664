"""TransformerLens's TransformerBridge as a second backend, on tiny random HF models of each family
built offline (:mod:`circuitgraph.models.tiny`), in float64:

* the hooks fire where the graph reads them (q/k/v inputs *before* ln1: the known trap);
* full / empty circuits reproduce the clean / corrupted runs, EAP equals the derivative of the
  patched metric, ``exact`` equals independent single-edge patched runs (bridge only, so these
  also run under transformer-lens 4.x), at head level and with neurons (gated ones included), for
  sequential, parallel (GPT-NeoX) and post-norm (Gemma-2/3) blocks;
* scores equal the HookedTransformer's on the same weights (needs transformer-lens 3.x, which
  cannot load a local Gemma folder: Gemma is checked on the bridge alone);
* every public call accepts a bridge; bad input is refused with the fix.
"""

from __future__ import annotations

import json

import pytest
import torch
from checks import exact_error
from conftest import NO_HOOKED_TRANSFORMER, HookedTransformer

import circuitgraph as cg
from circuitgraph.engine import Ablation
from circuitgraph.engine.patching import patched_logits, tiled
from circuitgraph.errors import ConfigError, ModelUnsupportedError
from circuitgraph.models import BridgeBackend, as_backend, load_bridge
from circuitgraph.models.sae import SAE
from circuitgraph.tasks import Task

pytest.importorskip("transformer_lens.model_bridge")

# (family, tiny sizes): grouped-query attention wherever the family has it. HookedTransformer loads
# the local folders of the first five (parity); TransformerLens 3.9's converter knows Gemma only by
# hub name, so Gemma-2/3 are checked on the bridge alone.
WITH_HT = [("gpt2", {}), ("gpt_neox", {}), ("llama", {"n_kv_heads": 2}), ("qwen2", {"n_kv_heads": 2}), ("mistral", {"n_kv_heads": 2})]  # fmt: skip
SUPPORTED = WITH_HT + [("gemma2", {"n_kv_heads": 2}), ("gemma3", {"n_kv_heads": 2})]
# one of each kind of block and MLP: plain sequential, parallel, gated, gated behind post-norms
NEURON_FAMILIES = [SUPPORTED[k] for k in (0, 1, 2, 5, 6)]
NEURONS = {0: [1, 4, 7, 30], 1: [0, 2, 31]}
needs_ht = pytest.mark.skipif(HookedTransformer is None, reason=NO_HOOKED_TRANSFORMER)


def _families(entries, marks=()):
    return [pytest.param(f, s, id=f, marks=marks) for f, s in entries]


@pytest.fixture(scope="module")
def bridges(hf_folder):
    """``bridges(family, **sizes)``: the float64 bridge of that tiny model, loaded once."""
    cache: dict = {}

    def get(family, **sizes):
        key = (family, tuple(sorted(sizes.items())))
        if key not in cache:
            cache[key] = load_bridge(hf_folder(family, **sizes), "cpu", torch.float64)
        return cache[key]

    return get


def hooked(folder):
    """The HookedTransformer of the same folder, weights as HF has them (the bridge's)."""
    from circuitgraph.models.loading import load_local_model

    return load_local_model(
        folder,
        "cpu",
        torch.float64,
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
    )


def tiny_task(vocab: int = 32, n: int = 4, seq: int = 6, seed: int = 0) -> Task:
    g = torch.Generator().manual_seed(seed)
    ids = lambda *shape: torch.randint(4, vocab, shape, generator=g)  # noqa: E731 (4: after the special tokens)
    return Task(clean=ids(n, seq), corrupted=ids(n, seq), answer=ids(n), wrong=ids(n), name="tiny")


def same_graph(a, b) -> bool:
    """Same nodes and edges (the model's name and config fingerprint differ between loaders)."""
    drop = {"name": "", "config_hash": ""}
    return {**a.spec(), **drop} == {**b.spec(), **drop} and torch.equal(a.valid, b.valid)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


# ------------------------------------------------------------------------------------------ hooks


@pytest.mark.parametrize("family,sizes", _families([SUPPORTED[0], SUPPORTED[2]]))  # sequential blocks
def test_qkv_inputs_fire_before_ln1_and_mlp_in_before_ln2(bridges, family, sizes):
    """Captured with the bridge's own hooks: each head's q/k/v input is the residual stream before
    ln1 (not ln1's output, which differs: the check can tell them apart), and hook_mlp_in is the
    residual stream before ln2."""
    b = bridges(family, **sizes)
    seen = {}

    def keep(name):
        def hook(x, hook):
            seen[name] = x.detach().clone()

        return hook

    names = ["blocks.1.hook_resid_pre", "blocks.1.ln1.hook_out", "blocks.1.hook_resid_mid", "blocks.1.hook_mlp_in"]
    names += [f"blocks.1.hook_{x}_input" for x in "qkv"]
    with BridgeBackend(b).flags(split_qkv_input=True), b.hooks(fwd_hooks=[(n, keep(n)) for n in names]):
        b(tiny_task().clean)
    pre = seen["blocks.1.hook_resid_pre"]
    assert (seen["blocks.1.ln1.hook_out"] - pre).abs().max() > 0.1  # pre- and post-norm are distinguishable
    for x in "qkv":
        q = seen[f"blocks.1.hook_{x}_input"]  # [batch, pos, head, d_model]: one copy per query head
        assert q.shape == (*pre.shape[:2], b.cfg.n_heads, pre.shape[-1])
        torch.testing.assert_close(q, pre[:, :, None].expand_as(q), rtol=0, atol=0)
    torch.testing.assert_close(seen["blocks.1.hook_mlp_in"], seen["blocks.1.hook_resid_mid"], rtol=0, atol=0)


def test_a_bridge_whose_qkv_inputs_fire_after_ln1_is_refused(hf_folder):
    """The known trap, reproduced: with the bridge's pre-ln1 capture removed, hook_q/k/v_input fork
    ln1's *output*. Logits do not change, so only checking hook positions catches it."""
    b = load_bridge(hf_folder("gpt2"), "cpu", torch.float64)
    tokens = tiny_task().clean
    want = b(tokens)
    for block in b.blocks:
        handles = getattr(block, "_capture_hook_handles", None)
        if not handles:
            pytest.skip("this transformer-lens wires the pre-ln1 capture differently")
        handles[0].remove()  # the ln1 pre-hook that hands the attention the pre-norm residual
    with BridgeBackend(b).flags(split_qkv_input=True):
        torch.testing.assert_close(b(tokens), want)  # the logits still match…
    with pytest.raises(ModelUnsupportedError, match="before ln1"):  # …the attribution would not
        cg.Graph.from_model(b)


def test_a_bridge_with_missing_hooks_is_refused(hf_folder):
    from transformer_lens.model_bridge import TransformerBridge

    b = load_bridge(hf_folder("gpt2"), "cpu", torch.float64)
    full = TransformerBridge.hook_dict.fget
    b.__class__ = type("NoSplitBridge", (TransformerBridge,), {"hook_dict": property(lambda s: {k: v for k, v in full(s).items() if not k.endswith("_input")})})  # fmt: skip
    with pytest.raises(ModelUnsupportedError, match="lacks hook points.*hook_q_input.*upgrade transformer-lens"):
        cg.Graph.from_model(b)


# ------------------------------------------------------------------------- exactness on a bridge


def _source_parts(b, graph) -> dict[str, tuple[str, torch.Tensor | None]]:
    """Source node → (the bridge hook holding its activation, the mask of its part of that hook's
    trailing dimensions; None: all of it): a head is one slice of ``z``, a neuron one entry of
    ``mlp.hook_post`` and ``rest`` the others (their writes go through ``W_out``, and behind Gemma's
    post-norm through the model's own norm)."""
    H, d_mlp = b.cfg.n_heads, b.cfg.d_mlp
    parts: dict[str, tuple[str, torch.Tensor | None]] = {"input": ("blocks.0.hook_resid_pre", None)}
    for L in range(b.cfg.n_layers):
        for h in range(H):
            parts[f"a{L}.h{h}"] = (f"blocks.{L}.attn.hook_z", torch.eye(H, dtype=torch.float64)[h][:, None])
        if L not in graph.neurons:
            parts[f"m{L}"] = (f"blocks.{L}.hook_mlp_out", None)
            continue
        chosen = torch.zeros(d_mlp, dtype=torch.float64)
        for i in graph.neurons[L]:
            parts[f"m{L}.n{i}"] = (f"blocks.{L}.mlp.hook_post", torch.eye(d_mlp, dtype=torch.float64)[i])
            chosen[i] = 1
        if graph.has_rest(L):
            parts[f"m{L}.rest"] = (f"blocks.{L}.mlp.hook_post", 1 - chosen)
    return parts


def source_derivative(b, graph, task) -> tuple[torch.Tensor, torch.Tensor]:
    """For every source node u: d/dε at 0 of the metric when u's output moves by
    ε·(corrupted − clean), which is what patching all of u's outgoing edges does (its readers are
    all the nodes that read it). Computed with the bridge's own hooks and autograd, one tiled
    forward for all sources (the bridge's attention softmax runs in float32 even in a float64
    model, too coarse for finite differences). Returns it and u's EAP scores summed over u's edges."""
    scores = cg.attribute(b, graph, task, method="eap", progress=False).clone()
    n = graph.n_src
    where = _source_parts(b, graph)
    assert sorted(where) == sorted(graph.src_names)
    hooks = sorted({h for h, _ in where.values()})
    acts: dict = {}

    def keep(run, name):
        def hook(x, hook):
            acts[run, name] = x.detach()

        return hook

    with torch.no_grad(), BridgeBackend(b).flags():
        for run, tokens in (("clean", task.clean), ("corrupted", task.corrupted)):
            with b.hooks(fwd_hooks=[(h, keep(run, h)) for h in hooks]):
                b(tokens)
    eps = torch.zeros(n, dtype=torch.float64, requires_grad=True)
    B = task.n_examples

    def move(name):
        rows = [(graph.src(s), mask) for s, (h, mask) in where.items() if h == name]

        def hook(x, hook):
            diff = (acts["corrupted", name] - acts["clean", name]).to(x.dtype)
            add = torch.zeros_like(x).view(n, B, *x.shape[1:])
            for row, mask in rows:
                add[row] = add[row] + eps[row] * (diff if mask is None else diff * mask)
            return x + add.view_as(x)

        return hook

    with BridgeBackend(b).flags(), b.hooks(fwd_hooks=[(h, move(h)) for h in hooks]):
        value = tiled(task, n).score(b(task.clean.repeat(n, 1))).view(n, B).mean(1).sum()
    (d,) = torch.autograd.grad(value, eps)
    return d, (scores * graph.valid).sum(1).double()


@pytest.mark.parametrize(
    "family,sizes,neurons",
    [pytest.param(f, s, None, id=f) for f, s in SUPPORTED]
    + [pytest.param(f, s, NEURONS, id=f"{f}-neurons") for f, s in NEURON_FAMILIES],
)
def test_bridge_graph_is_exact(bridges, family, sizes, neurons):
    b = bridges(family, **sizes)
    task = tiny_task()
    graph = cg.Graph.from_model(b, neurons=neurons)
    assert isinstance(as_backend(b), BridgeBackend)
    assert graph.arch.parallel_attn_mlp == (family == "gpt_neox") and graph.arch.post_norms == family.startswith(
        "gemma"
    )
    # the full circuit is the clean run and the empty one the corrupted run
    A = Ablation("corrupted").prepare(b, graph, task).activations(b, graph, task, slice(0, task.n_examples), task)
    with torch.no_grad():
        full = patched_logits(b, graph, task, A, graph.valid[None])
        empty = patched_logits(b, graph, task, A, torch.zeros_like(graph.valid)[None])
        assert (full - b(task.clean)).abs().max() < 1e-6
        assert (empty - b(task.corrupted)).abs().max() < 1e-6
    # EAP summed over each source's outgoing edges = the derivative of the patched metric
    d, eap = source_derivative(b, graph, task)
    assert eap.abs().max() > 1e-3  # a real check, not zeros against zeros
    assert rel(eap, d) < 1e-6, (eap, d)
    # exact = independent single-edge patched runs (the bridge's own hooks and modules), edges of
    # every kind. Gemma's HF RMSNorm computes in float32 even in a float64 model, and the engine
    # mixes a reader's post-norm input in float64: they agree to float32 rounding.
    scale = float(cg.attribute(b, graph, task, method="exact", progress=False).abs().max())
    assert exact_error(b, graph, task, per_kind=2) < (1e-6 if graph.arch.post_norms else 1e-12) * scale


# ----------------------------------------------------------------------- parity with HookedTransformer


@needs_ht
@pytest.mark.parametrize("family,sizes", _families(WITH_HT))
def test_bridge_scores_equal_hooked_transformer_scores(bridges, hf_folder, family, sizes):
    b, h = bridges(family, **sizes), hooked(hf_folder(family, **sizes))
    task = tiny_task()
    with torch.no_grad():
        assert rel(b(task.clean), h(task.clean)) < 1e-6
    gb, gh = cg.Graph.from_model(b), cg.Graph.from_model(h)
    assert same_graph(gb, gh)
    for method in ("eap", "eap-ig", "exact"):
        sb = cg.attribute(b, gb, task, method=method, progress=False).clone()
        sh = cg.attribute(h, gh, task, method=method, progress=False).clone()
        assert rel(sb, sh) < 1e-4, method


@needs_ht
@pytest.mark.parametrize("family,sizes", _families(NEURON_FAMILIES[:3]))  # plain, parallel, gated (SwiGLU)
def test_neuron_graph_scores_equal_on_both_backends(bridges, hf_folder, family, sizes):
    b, h = bridges(family, **sizes), hooked(hf_folder(family, **sizes))
    task = tiny_task()
    gb, gh = cg.Graph.from_model(b, neurons=True), cg.Graph.from_model(h, neurons=True)
    sb = cg.attribute(b, gb, task, method="eap", progress=False).clone()
    sh = cg.attribute(h, gh, task, method="eap", progress=False).clone()
    assert gb.n_src > 100 and rel(sb, sh) < 1e-4
    ib = cg.attribute(b, gb, task, method="eap-ig", progress=False)
    ih = cg.attribute(h, gh, task, method="eap-ig", progress=False)
    assert rel(ib, ih) < 1e-4


# ------------------------------------------------------------------------- the public calls


def _saes(d_model: int, seed: int = 0) -> list[SAE]:
    """A JumpReLU SAE on resid_post 0 (Gemma Scope's kind) and a transcoder standing in for MLP 1."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for hook, hook_out, arch in (
        ("blocks.0.hook_resid_post", None, "jumprelu"),
        ("blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out", "standard"),
    ):
        sae = SAE(d_model, 24, hook, architecture=arch, hook_name_out=hook_out, apply_b_dec_to_input=hook_out is None, dtype=torch.float64)  # fmt: skip
        with torch.no_grad():
            sae.W_enc.copy_(torch.randn(d_model, 24, generator=g, dtype=torch.float64) / 3)
            sae.W_dec.copy_(torch.randn(24, d_model, generator=g, dtype=torch.float64) / 3)
            sae.b_enc.copy_(torch.randn(24, generator=g, dtype=torch.float64) * 0.1)
            if arch == "jumprelu":
                sae.threshold.copy_(torch.rand(24, generator=g, dtype=torch.float64) * 0.2)
        out.append(sae)
    return out


def _public_calls(model, saes):
    task = tiny_task(n=8)
    g = cg.Graph.from_model(model)
    cg.attribute(model, g, task, method="eap-ig", progress=False)
    c = cg.minimal_circuit(model, g, task, target=0.8)
    curve = cg.faithfulness_curve(model, g, task, progress=False)
    faith = cg.evaluate(model, g, task, c.mask, progress=False)
    scrubbed = cg.scrub(model, cg.Hypothesis.from_circuit(c), task, seed=0, n_boot=50, warn_vacuous=False)
    fg = cg.feature_graph(model, saes, task)
    fs = cg.attribute(model, fg, task, method="eap", progress=False).clone()
    return c, curve, faith, scrubbed, fg, fs


@needs_ht
def test_public_calls_accept_a_bridge_and_agree_with_hooked_transformer(bridges, hf_folder):
    b, h = bridges("gpt2"), hooked(hf_folder("gpt2"))
    saes = _saes(b.cfg.d_model)
    cb, curve_b, fb, sb, fgb, fsb = _public_calls(b, saes)
    ch, curve_h, fh, sh, fgh, fsh = _public_calls(h, saes)
    assert cb.edge_names() == ch.edge_names() and cb.faithfulness == pytest.approx(ch.faithfulness, rel=1e-6)
    assert curve_b.cpr == pytest.approx(curve_h.cpr, rel=1e-6) and curve_b.cmd == pytest.approx(curve_h.cmd, rel=1e-6)
    assert float(fb) == pytest.approx(float(fh), rel=1e-6)
    assert sb.loss_recovered == pytest.approx(sh.loss_recovered, rel=1e-6, abs=1e-9)
    assert same_graph(fgb, fgh) and fgb.n_src > 20 and rel(fsb, fsh) < 1e-4


def test_public_calls_accept_a_llama_bridge(bridges):
    """GQA llama (ungrouped on load), SAE sites included; without HookedTransformer too."""
    b = bridges("llama", n_kv_heads=2)
    c, curve, faith, scrubbed, fg, fs = _public_calls(b, _saes(b.cfg.d_model))
    assert c.faithfulness >= 0.8 and 0 < c.n_edges <= cg.Graph.from_model(b).n_edges
    assert torch.isfinite(torch.tensor([curve.cpr, curve.cmd, scrubbed.loss_recovered])).all()
    assert fg.n_src > 20 and fs.abs().max() > 0


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_string_tasks_tokenize_with_the_bridge(hf_folder, family):
    """Task.from_strings uses the bridge's own tokenizer (Qwen2 prepends no BOS, Llama does)."""
    b = load_bridge(hf_folder(family), "cpu")
    t = cg.Task.from_strings(b, ["w1 w2 w3", "w4 w5"], ["w6 w7 w8", "w9 w10"], ["w11", "w12"], ["w13", "w14"])
    bos = [2] if family == "llama" else []
    assert t.clean.tolist() == [bos + [5, 6, 7], bos + [8, 9, 1]] and t.answer.tolist() == [15, 16]
    assert t.attention_mask[1].tolist() == [1] * (len(bos) + 2) + [0]
    assert cg.attribute(b, cg.Graph.from_model(b), t, method="eap", progress=False).abs().max() > 0


# ------------------------------------------------------------------------------------ bad input


def test_gptj_is_refused_with_the_reason_and_the_fix(bridges):
    """GPT-J's attention bridge cannot fork q/k/v inputs per head (its parallel block is not the
    reason: GPT-NeoX's is supported)."""
    with pytest.raises(ModelUnsupportedError, match="GPTJForCausalLM.*before the q/k/v projections.*HookedTransformer"):
        cg.Graph.from_model(bridges("gptj"))


@pytest.mark.filterwarnings("ignore:A forward hook edited hook_scale")  # (the bridge's note on the edit)
def test_a_bridge_whose_post_norm_hooks_misfire_is_refused(hf_folder):
    """Attribution behind Gemma's post-norms reads their scale and normalised input: a post-norm
    whose hook_scale does not hold the norm's scale is caught by the probe, not trusted."""
    b = load_bridge(hf_folder("gemma2", n_kv_heads=2), "cpu", torch.float64)
    b.blocks[1].ln1_post.hook_scale.add_hook(lambda x, hook: 2 * x, is_permanent=True)
    with pytest.raises(ModelUnsupportedError, match="ln1_post.hook_scale .* not the norm's scale"):
        cg.Graph.from_model(b)


def test_a_bridge_whose_neuron_hooks_misfire_refuses_neurons_only(hf_folder):
    """A gated MLP whose hook_pre_linear is not ln2's output times W_in: the head-level graph (which
    never reads it) is built, a neuron graph is refused."""
    b = load_bridge(hf_folder("llama", n_kv_heads=2), "cpu", torch.float64)
    b.blocks[0].mlp.hook_pre_linear.add_hook(lambda x, hook: x + 1, is_permanent=True)
    assert cg.Graph.from_model(b).n_src == 1 + 2 * (b.cfg.n_heads + 1)
    with pytest.raises(ModelUnsupportedError, match="blocks.0.mlp.hook_pre_linear is not ln2's output"):
        cg.Graph.from_model(b, neurons=True)


def test_an_encoder_decoder_folder_is_refused_by_name(tmp_path):
    from transformers import T5Config, T5ForConditionalGeneration

    T5ForConditionalGeneration(T5Config(vocab_size=32, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2)).save_pretrained(tmp_path)  # fmt: skip
    with pytest.raises(
        ModelUnsupportedError, match="encoder-decoder model \\(T5ForConditionalGeneration\\).*decoder-only"
    ):
        load_bridge(tmp_path)


def test_a_folder_without_tokenizer_is_refused_with_the_fix(hf_folder, tmp_path):
    src = hf_folder("gpt2")
    for f in ("config.json", "model.safetensors"):
        (tmp_path / f).write_bytes((src / f).read_bytes())
    with pytest.raises(ConfigError, match="has no tokenizer.*tokenizer.save_pretrained\\(folder\\)"):
        load_bridge(tmp_path)


def test_a_4bit_model_is_refused_with_the_fix(hf_folder, tmp_path, bridges):
    src = hf_folder("gpt2")
    for f in src.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelUnsupportedError, match="4-bit model.*float32 or bfloat16"):
        load_bridge(tmp_path)
    # a booted bridge over a quantised HF model (as BitsAndBytes leaves it) is refused too
    b = load_bridge(src, "cpu", torch.float64)
    b.original_model.is_loaded_in_4bit = True
    with pytest.raises(ModelUnsupportedError, match="quantised \\(4-bit/8-bit\\) weights"):
        cg.Graph.from_model(b)


def test_a_grouped_query_bridge_is_refused_with_the_fix(hf_folder):
    from transformer_lens.model_bridge import TransformerBridge

    b = TransformerBridge.boot_transformers(str(hf_folder("llama", n_kv_heads=2)), device="cpu")
    with pytest.raises(ModelUnsupportedError, match="grouped-query attention.*load_bridge"):
        cg.Graph.from_model(b)


# ------------------------------------------------------------------------------------------ the CLI


def _compose(*overrides):
    from hydra import compose, initialize_config_module

    from circuitgraph.cli.config import register_configs

    register_configs()
    with initialize_config_module(config_module="circuitgraph.cli.conf", version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_cli_runs_a_local_hf_folder_through_the_bridge(hf_folder, tmp_path):
    from circuitgraph.cli import main as cli

    folder = hf_folder("llama", n_kv_heads=2)
    task = tmp_path / "ids.jsonl"
    t = tiny_task(n=6)
    with task.open("w") as f:
        for i in range(t.n_examples):
            row = {"clean": t.clean[i].tolist(), "corrupted": t.corrupted[i].tolist()}
            f.write(json.dumps({**row, "answer": int(t.answer[i]), "wrong": int(t.wrong[i])}) + "\n")
    cfg = _compose(
        "model=hf",
        f"model.path={folder}",
        "task=file",
        f"task.path={task}",
        "method=eap",
        "circuit=top-n",
        "circuit.n=6",
        "export.html=false",
        "export.png=false",
        "progress=false",
    )
    s = cli.run(cfg, tmp_path / "run")
    assert s["model_source"] == "hf" and s["model"] == folder.name and 0 < s["edges_kept"] <= 6
    model, _, _ = cli.load_model(cfg.model, torch.device("cpu"))
    assert isinstance(as_backend(model), BridgeBackend)


def test_cli_refuses_a_folder_without_tokenizer_before_loading(hf_folder, tmp_path):
    from circuitgraph.cli.config import validate

    src = hf_folder("gpt2")
    for f in ("config.json", "model.safetensors"):
        (tmp_path / f).write_bytes((src / f).read_bytes())
    with pytest.raises(ConfigError, match="has no tokenizer"):
        validate(_compose("model=hf", f"model.path={tmp_path}", "task=file", f"task.path={tmp_path / 't.jsonl'}"))
    with pytest.raises(ConfigError, match="model=hf needs model.path"):
        validate(_compose("model=hf", "task=file", f"task.path={tmp_path / 't.jsonl'}"))


def test_pretrained_boots_through_the_bridge_when_hooked_transformer_is_gone(monkeypatch):
    """transformer-lens 4.x: model=pretrained takes the hub name to load_bridge (no network here:
    the loader is replaced by a recorder)."""
    from circuitgraph.cli import main as cli
    from circuitgraph.models import loading

    calls = []
    monkeypatch.setattr(loading, "has_hooked_transformer", lambda: False)
    monkeypatch.setattr(loading, "load_bridge", lambda *a, **k: calls.append((a, k)) or "bridge")
    cfg = _compose("model=pretrained", "model.name=gpt2", "task=file", "task.path=t.jsonl")
    model, entry, label = cli.load_model(cfg.model, torch.device("cpu"))
    assert (model, entry, label) == ("bridge", None, "gpt2")
    assert calls[0][0][0] == "gpt2" and calls[0][1] == {"local_files_only": False}

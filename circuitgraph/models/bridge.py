"""The second backend: TransformerLens's ``TransformerBridge``, which wraps a Hugging Face model.

TransformerLens 3.x deprecates ``HookedTransformer`` and 4.x removes it; the bridge is where the
library goes. The bridge exposes the familiar hook names (``blocks.L.hook_q_input``,
``attn.hook_z``, ``hook_mlp_in``, ``ln1.hook_scale`` …) as aliases of its own hook points and the
familiar weights (``blocks[L].attn.W_Q`` …) as views of the HF parameters, so most of
:class:`HookedTransformerBackend` applies as it is. What differs is here:

* **where hooks fire** is checked, not assumed. A bridge once fired ``hook_q/k/v_input`` after
  ln1 instead of before it: logits matched, attributions did not. :meth:`BridgeBackend.check`
  runs a three-token probe once per bridge and refuses a bridge whose q/k/v inputs are not each
  head's copy of the residual stream *before* ln1, whose ``hook_mlp_in`` is not the residual
  before ln2, whose residual stream is not ``input + Σ heads + Σ MLPs``, or whose input hooks are
  observed but not used;
* **running part of the model**: the bridge cannot start at a layer (HF owns the layer loop), so
  :meth:`run_layers` and :meth:`unembed` run the whole model on placeholder tokens and overwrite
  the residual stream where the requested part begins;
* **norms** are ``NormalizationBridge`` modules over the HF norm (Gemma's ``1 + weight`` gain
  included). Norms after sublayers (Gemma-2/3's ``ln1_post`` / ``ln2_post``) are a fact the bridge's
  config does not state, so the backend reads it from the blocks (:meth:`BridgeBackend.architecture`)
  and the probe checks the post-norms' hooks hold what the engine reads (scale, normalised input);
* **neurons** (plain and gated MLPs) are read at the bridge's ``mlp.hook_pre`` (/``hook_pre_linear``)
  and ``mlp.hook_post`` aliases; the probe checks them against ``ln2``'s output and the weights before
  a neuron graph is built;
* **grouped-query attention** must be ungrouped before the bridge is built: the bridge forks k/v
  inputs per key/value head, the graph needs one per query head. :func:`ungroup_kv_heads` does it
  on the HF model (numerically identical) and :func:`circuitgraph.models.loading.load_bridge`
  calls it.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from circuitgraph.errors import ModelUnsupportedError
from circuitgraph.models.backend import (
    Architecture,
    HookedTransformerBackend,
    _architecture_problems,
    config_hash,
    register_backend,
)

# bridge → what its probe found wrong (head-level problems, neuron-level problems); weak: a
# probed bridge may be garbage collected
_PROBED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

_SPLIT_FIX = (
    "circuitgraph needs hook_q_input/hook_k_input/hook_v_input that fork the residual stream per head before ln1 "
    "(TransformerLens >= 3.9 does this for JointQKVAttentionBridge and PositionEmbeddingsAttentionBridge); upgrade "
    "transformer-lens, or load the model as a HookedTransformer"
)


def is_bridge(model: Any) -> bool:
    """Whether ``model`` is a ``transformer_lens.model_bridge.TransformerBridge``."""
    try:  # transformer-lens is heavy (seconds); every release that has the bridge has it here
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError:  # pragma: no cover - transformer-lens < 3 had no bridge
        return False
    return isinstance(model, TransformerBridge)


class BridgeBackend(HookedTransformerBackend):
    """A ``TransformerBridge`` with pre-norm blocks whose residual stream is exactly
    ``input + Σ heads + Σ MLPs (+ biases)``. Hook names and weight views are the bridge's
    HookedTransformer-compatible aliases (inherited); the rest is the bridge's own."""

    # ------------------------------------------------------------------ facts
    def check(self, neurons: bool = False) -> None:
        """Refuse what the graph cannot describe exactly (naming the problem and the fix), then
        probe once where the hooks fire (see the module docstring)."""
        problems = self._bridge_problems()
        if not problems:  # (the facts view needs blocks, which an encoder-decoder lacks)
            problems = _architecture_problems(self._facts_cfg(), neurons)
        if problems:
            raise ModelUnsupportedError(
                f"this TransformerBridge ({self._architecture_name()}) is not supported by the circuit graph: "
                + "; ".join(problems)
                + ". Supported on the bridge: pre-norm decoder-only transformers whose attention forks q/k/v inputs "
                "per head (GPT-2, GPT-NeoX/Pythia, Llama, Qwen2, Mistral, Gemma-2/3 families and their like), "
                "with plain or gated MLPs, sequential or parallel attention+MLP blocks, with or without RMS norms "
                "after sublayers."
            )
        have = self.model.hook_dict  # (built on each access: read it once)
        missing = [h for h in self._needed_hooks() if h not in have]
        if missing:
            raise ModelUnsupportedError(
                f"this TransformerBridge ({self._architecture_name()}) lacks hook points the graph reads: "
                f"{', '.join(missing[:6])}{' …' if len(missing) > 6 else ''}. {_SPLIT_FIX}."
            )
        if self.model not in _PROBED:
            _PROBED[self.model] = self._probe_hook_positions()
        bad, bad_neurons = _PROBED[self.model]
        bad = bad + (bad_neurons if neurons else [])
        if bad:
            raise ModelUnsupportedError(
                f"this TransformerBridge ({self._architecture_name()}) fires hooks where the circuit graph does not "
                f"expect them: {'; '.join(bad[:4])}{' …' if len(bad) > 4 else ''}. Attribution on it would be silently "
                f"wrong. {_SPLIT_FIX}."
            )

    def architecture(self) -> Architecture:
        return Architecture.from_config(self._facts_cfg())

    def fingerprint(self) -> str:
        return config_hash(self._facts_cfg())

    def _facts_cfg(self) -> Any:
        """The bridge's config with the facts it does not state filled in from the modules: norms
        after sublayers (Gemma-2/3) are ``ln1_post``/``ln2_post`` blocks, not a config flag."""
        return _ConfigView(self.cfg, use_normalization_before_and_after=self._has_post_norms())

    def _has_post_norms(self) -> bool:
        blocks = getattr(self.model, "blocks", ())
        return any(name in block._modules for block in blocks for name in ("ln1_post", "ln2_post"))

    def _architecture_name(self) -> str:
        return str(getattr(self.cfg, "architecture", None) or type(self.model.original_model).__name__)

    def _bridge_problems(self) -> list[str]:
        cfg, model = self.cfg, self.model
        hf_cfg = getattr(model.original_model, "config", None)
        problems = []
        if bool(getattr(hf_cfg, "is_encoder_decoder", False)) or not hasattr(model, "blocks"):
            problems.append(
                f"{self._architecture_name()} is an encoder-decoder (or has no single stack of blocks); the graph "
                "describes one residual stream read by the unembedding"
            )
            return problems
        if _quantized(model.original_model):
            problems.append(
                "quantised (4-bit/8-bit) weights: edge scores contract with the weights, so load the model in "
                "float32 or bfloat16 (without BitsAndBytesConfig)"
            )
        kv = getattr(cfg, "n_key_value_heads", None)
        if kv and int(kv) != int(cfg.n_heads):
            problems.append(
                f"grouped-query attention ({kv} key/value heads for {cfg.n_heads} query heads): the bridge forks k/v "
                "inputs per key/value head and the graph needs one per query head. Load it with "
                "circuitgraph.models.load_bridge(path), which ungroups the heads (numerically identical), or call "
                "circuitgraph.models.ungroup_kv_heads(hf_model) before TransformerBridge.boot_transformers(path, "
                "hf_model=hf_model)"
            )
        return problems

    # ------------------------------------------------------------------ weights and norms
    def W_qkv(self, layer: int, letter: str) -> torch.Tensor:
        attn = self.model.blocks[layer].attn
        W = {"q": attn.W_Q, "k": attn.W_K, "v": attn.W_V}[letter]
        if W.dim() == 2:  # [d_model, H·d_head] on bridges that keep the HF layout
            W = W.reshape(W.shape[0], -1, self.cfg.d_head).transpose(0, 1)
        return W

    def W_O(self, layer: int) -> torch.Tensor:
        W = self.model.blocks[layer].attn.W_O
        if W.dim() == 2:  # [H·d_head, d_model]
            W = W.reshape(self.cfg.n_heads, self.cfg.d_head, -1)
        return W

    def b_O(self, layer: int) -> torch.Tensor | None:
        try:
            return self.model.blocks[layer].attn.b_O
        except AttributeError:
            return None

    def norm_kind(self, layer: int, which: int, post: bool = False) -> str:
        ln = self.norm(layer, which, post)
        if ln is None or isinstance(getattr(ln, "original_component", None), nn.Identity):
            return "none"
        return "rms" if bool(getattr(ln, "uses_rms_norm", False)) else "layernorm"

    def norm_gain(self, layer: int, which: int, post: bool = False) -> torch.Tensor | None:
        w = getattr(getattr(self.norm(layer, which, post), "original_component", None), "weight", None)
        if w is None:
            return None
        return 1.0 + w if getattr(self.cfg, "rmsnorm_uses_offset", False) else w  # (Gemma's gain is 1 + w)

    def norm_eps(self, layer: int, which: int, post: bool = False) -> float:
        ln = self.norm(layer, which, post)
        if ln is None:  # (as HookedTransformer's backend: the config's eps)
            return float(self.cfg.eps)
        hf = ln.original_component
        eps = getattr(hf, "eps", None)
        eps = getattr(hf, "variance_epsilon", None) if eps is None else eps
        return float(self.cfg.eps if eps is None else eps)

    # ------------------------------------------------------------------ running
    def hooks(self, fwd_hooks: list | None = None, bwd_hooks: list | None = None) -> Any:
        return self.model.hooks(fwd_hooks=fwd_hooks or [], bwd_hooks=bwd_hooks or [])

    def run_layers(
        self, resid: torch.Tensor, start: int, stop: int | None = None, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Blocks ``start .. stop-1`` on ``resid [batch, pos, d_model]`` (``stop=None``: on to the
        logits). The bridge cannot start at a layer, so the whole model runs on placeholder tokens
        and the residual stream entering block ``start`` is overwritten with ``resid``."""
        n = self.cfg.n_layers
        enter = f"blocks.{start}.hook_resid_pre" if start < n else f"blocks.{n - 1}.hook_resid_post"
        out: dict[str, torch.Tensor] = {}

        def overwrite(x, hook):
            return resid.to(x.dtype)

        hooks = [(enter, overwrite)]
        if stop is not None:

            def leave(x, hook):
                out["resid"] = x
                raise _Stop

            hooks.append((f"blocks.{stop - 1}.hook_resid_post", leave))
        tokens = torch.zeros(resid.shape[:2], dtype=torch.long, device=resid.device)
        kw = {} if attention_mask is None else {"attention_mask": attention_mask}
        try:
            with self.hooks(fwd_hooks=hooks):
                logits = self.model(tokens, **kw)
        except _Stop:
            return out["resid"]
        return logits

    def unembed(self, resid: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.run_layers(resid, self.cfg.n_layers, None, attention_mask=attention_mask)

    def mlp(self, layer: int, resid: torch.Tensor) -> torch.Tensor:
        block = self.model.blocks[layer]
        out = block.mlp(block.ln2(resid))
        post = self.norm(layer, 2, post=True)
        return out if post is None else post(out)

    @contextmanager
    def flags(self, split_qkv_input: bool = False) -> Iterator[None]:
        """The bridge's hook flags, as on a HookedTransformer: ``use_hook_mlp_in`` on,
        ``use_split_qkv_input`` only for patched evaluation, ``use_attn_result`` and
        ``use_attn_in`` off; the user's settings are restored afterwards."""
        model, cfg = self.model, self.cfg
        old = {
            k: bool(getattr(cfg, k, False))
            for k in ("use_split_qkv_input", "use_hook_mlp_in", "use_attn_result", "use_attn_in")
        }
        try:
            if old["use_attn_in"]:
                model.set_use_attn_in(False)
            if old["use_attn_result"]:
                model.set_use_attn_result(False)
            if split_qkv_input != old["use_split_qkv_input"]:
                try:
                    model.set_use_split_qkv_input(split_qkv_input)
                except NotImplementedError as e:  # hook names exist, but the attention cannot fork (GPT-J's)
                    raise ModelUnsupportedError(
                        f"this TransformerBridge ({self._architecture_name()}) cannot fork q/k/v inputs per head: its "
                        f"attention ({type(model.blocks[0].attn).__name__}) has no hook point before the q/k/v "
                        "projections, so a head's query, key and value inputs cannot be patched separately and the "
                        "graph's edges into them would not be exact (transformer-lens: "
                        f"{str(e).split('.')[0]}). Load the model as a HookedTransformer instead "
                        "(circuitgraph.models.load_local_model(folder) or load_pretrained(name)), which splits "
                        "q/k/v inputs for every family, or use a transformer-lens whose bridge forks this attention"
                    ) from e
            if not cfg.attn_only and not old["use_hook_mlp_in"]:
                model.set_use_hook_mlp_in(True)
            yield
        finally:
            if bool(getattr(cfg, "use_split_qkv_input", False)) != old["use_split_qkv_input"]:
                model.set_use_split_qkv_input(old["use_split_qkv_input"])
            if not cfg.attn_only and bool(getattr(cfg, "use_hook_mlp_in", False)) != old["use_hook_mlp_in"]:
                model.set_use_hook_mlp_in(old["use_hook_mlp_in"])
            if old["use_attn_result"]:
                model.set_use_attn_result(True)
            if old["use_attn_in"]:
                model.set_use_attn_in(True)

    # ------------------------------------------------------------------ the hook-position probe
    @torch.no_grad()
    def _probe_hook_positions(self) -> tuple[list[str], list[str]]:  # noqa: C901 - one check per hook kind
        """Run three tokens and check that every hook the engine reads fires where the graph says:
        q/k/v inputs are per-head copies of the residual stream before ln1, ``hook_mlp_in`` is the
        residual stream the MLP reads (before ln2; in a parallel block the layer's input), and the
        residual stream is the sum of the sources (through the post-norms where the model has them,
        whose ``scale``/``normalized`` hooks hold what attribution reads). Neurons: each read hook is
        ln2's output times its weights and the MLP's output is ``hook_post @ W_out (+ b_out)``. Then
        check that an edit at each input hook changes the output (the hook is on the live path).
        Returns (problems of every graph, problems of neuron graphs only)."""
        cfg, n = self.cfg, self.cfg.n_layers
        mlps, parallel = not cfg.attn_only, bool(getattr(cfg, "parallel_attn_mlp", False))
        post_norms = self._has_post_norms()
        tokens = (torch.arange(3, device=self.device) % int(cfg.d_vocab))[None]
        seen: dict[str, torch.Tensor] = {}

        def keep(name):
            def hook(x, hook):
                seen[name] = x.detach().double()

            return hook

        def post_hooks(L, which):
            on = post_norms and self.norm_kind(L, which, post=True) != "none"
            return [self.norm_hook(L, which, part, post=True) for part in ("scale", "normalized")] if on else []

        names = [self.embed_hook(), self.final_hook()]
        for L in range(n):
            names += [f"blocks.{L}.hook_resid_pre", self.z_hook(L)] + [self.qkv_input_hook(L, x) for x in "qkv"]
            names += post_hooks(L, 1)
            if mlps:
                names += [self.mlp_in_hook(L), self.mlp_out_hook(L), self.mlp_post_hook(L)] + post_hooks(L, 2)
                names += [read.hook for read in self.neuron_reads(L)]
                names += [] if parallel else [f"blocks.{L}.hook_resid_mid"]
        with self.flags(split_qkv_input=True), self.hooks(fwd_hooks=[(h, keep(h)) for h in dict.fromkeys(names)]):
            base = self.model(tokens).detach().double()
        tol = 1e-2 if next(self.model.parameters()).dtype in (torch.float16, torch.bfloat16) else 1e-4

        def close(a, b):
            return a.shape == b.shape and float((a - b).abs().max()) <= tol * max(1.0, float(b.abs().max()))

        none = torch.full((1,), float("nan"), dtype=torch.float64)

        def got(name):  # a hook that never fired compares unequal to everything
            return seen.get(name, none)

        def through_post_norm(L, which, x, bad):
            """``x`` through the post-norm ``which`` of layer L, after checking its hooks (what
            attribution reads for the norm's Jacobian)."""
            if not post_hooks(L, which):
                return x
            centred = x - x.mean(-1, keepdim=True) if self.norm_kind(L, which, post=True) == "layernorm" else x
            scale = (centred.pow(2).mean(-1, keepdim=True) + self.norm_eps(L, which, post=True)).sqrt()
            scale_hook, normalized_hook = post_hooks(L, which)
            if not close(got(scale_hook), scale) or not close(got(normalized_hook), centred / scale):
                bad.append(f"{scale_hook} / {normalized_hook} are not the norm's scale and normalised input")
            return self.normalize(L, which, x, post=True)

        def neuron_problems(L, x):
            bad: list[str] = []
            xhat = self.normalize(L, 2, x)  # what ln2 hands the MLP
            for read in self.neuron_reads(L):
                want = xhat @ read.W.detach().double() + (0 if read.b is None else read.b.detach().double())
                if not close(got(read.hook), want):
                    bad.append(f"{read.hook} is not ln2's output times its weights")
            b_out = self.b_out(L)
            raw = got(self.mlp_post_hook(L)) @ self.W_out(L).detach().double()
            raw = through_post_norm(L, 2, raw + (0 if b_out is None else b_out.detach().double()), bad)
            if not close(got(self.mlp_out_hook(L)), raw):
                bad.append(f"{self.mlp_out_hook(L)} is not {self.mlp_post_hook(L)} @ W_out (+ b_out)")
            return bad

        bad: list[str] = []
        bad_neurons: list[str] = []
        resid = got(self.embed_hook())
        for L in range(n):
            pre = got(f"blocks.{L}.hook_resid_pre")
            if not close(pre, resid):
                bad.append(f"blocks.{L}.hook_resid_pre is not the sum of the sources before layer {L}")
            for x in "qkv":
                q = got(self.qkv_input_hook(L, x))
                if q.dim() != 4 or pre.dim() != 3 or not close(q, pre[:, :, None].expand_as(q)):
                    bad.append(f"{self.qkv_input_hook(L, x)} is not each head's copy of the residual stream before ln1")
            z = got(self.z_hook(L))
            if z.dim() != 4:
                bad.append(f"{self.z_hook(L)} is not [batch, pos, head, d_head]")
                break
            b_O = self.b_O(L)
            attn = torch.einsum("bphe,hed->bpd", z, self.W_O(L).detach().double())
            resid = resid + through_post_norm(L, 1, attn + (0 if b_O is None else b_O.detach().double()), bad)
            if not mlps:
                continue
            mlp_in = got(self.mlp_in_hook(L))
            if parallel:  # the MLP reads the layer's input, like its heads
                if not close(mlp_in, pre):
                    bad.append(f"{self.mlp_in_hook(L)} is not the residual stream entering layer {L}")
            else:
                mid = got(f"blocks.{L}.hook_resid_mid")
                if not close(mid, resid):
                    bad.append(f"the residual stream after layer {L}'s attention is not input + Σ heads (z @ W_O)")
                if not close(mlp_in, mid):
                    bad.append(f"{self.mlp_in_hook(L)} is not the residual stream before ln2")
                resid = mid
            bad_neurons += neuron_problems(L, mlp_in)
            resid = resid + got(self.mlp_out_hook(L))
        if not close(got(self.final_hook()), resid):
            bad.append(f"{self.final_hook()} is not the sum of all sources")
        kinds = {x: [self.qkv_input_hook(L, x) for L in range(n)] for x in "qkv"}
        kinds.update({"mlp_in": [self.mlp_in_hook(L) for L in range(n)]} if mlps else {})
        if not bad:
            bad = self._unused_input_hooks(tokens, base, kinds)
        if mlps and not bad_neurons:
            reads = {
                f"read{r}": [self.neuron_reads(L)[r].hook for L in range(n)] for r in range(len(self.neuron_reads(0)))
            }
            bad_neurons = self._unused_input_hooks(tokens, base, reads)
        return bad, bad_neurons

    def _unused_input_hooks(self, tokens: torch.Tensor, base: torch.Tensor, kinds: dict[str, list[str]]) -> list[str]:
        """The input hooks (``kinds``: the hooks of each kind, by layer) whose edit does not reach
        the output (observed copies, not the live path)."""
        bad = []
        for names in kinds.values():
            for name in (names[0], names[-1]):

                def shift(x, hook):  # a direction no norm removes (not constant, not a multiple of x)
                    return x + torch.arange(x.shape[-1], device=x.device, dtype=x.dtype) % 3

                with self.flags(split_qkv_input=True), self.hooks(fwd_hooks=[(name, shift)]):
                    out = self.model(tokens).detach().double()
                if torch.equal(out, base):
                    bad.append(f"editing {name} does not change the output")
        return bad


class _ConfigView:
    """A model config with some facts overridden (read-only): what the backend knows about the
    model beyond what its config states."""

    def __init__(self, cfg: Any, **facts: Any) -> None:
        self._cfg, self._facts = cfg, facts

    def __getattr__(self, key: str) -> Any:
        facts = self.__dict__["_facts"]
        return facts[key] if key in facts else getattr(self.__dict__["_cfg"], key)


class _Stop(Exception):
    """Raised inside a hook to end a forward pass early (:meth:`BridgeBackend.run_layers`)."""


def _quantized(hf_model: Any) -> bool:
    if getattr(hf_model, "is_loaded_in_4bit", False) or getattr(hf_model, "is_loaded_in_8bit", False):
        return True
    if getattr(getattr(hf_model, "config", None), "quantization_config", None) is not None:
        return True
    return any(not p.dtype.is_floating_point for p in hf_model.parameters())


def ungroup_kv_heads(hf_model: Any) -> Any:
    """Give every query head its own key/value projection (repeating the shared ones), in place.

    The model computes exactly what it computed before; its k/v weights grow by the group size.
    Needed because the bridge forks k/v inputs per *key/value* head and the graph has a k and a
    v input per *query* head. Returns the model."""
    cfg = hf_model.config
    H = int(cfg.num_attention_heads)
    kv = int(getattr(cfg, "num_key_value_heads", None) or H)
    if kv == H:
        return hf_model
    group = H // kv
    module: Any  # HF attention modules: their attributes are the library's business
    for module in hf_model.modules():
        if not (hasattr(module, "k_proj") and hasattr(module, "v_proj") and hasattr(module, "num_key_value_groups")):
            continue
        d_head = int(getattr(module, "head_dim", cfg.hidden_size // H))
        for proj in ("k_proj", "v_proj"):
            old = getattr(module, proj)
            new = nn.Linear(old.in_features, H * d_head, bias=old.bias is not None)
            new = new.to(device=old.weight.device, dtype=old.weight.dtype)
            with torch.no_grad():
                w = old.weight.reshape(kv, d_head, old.in_features).repeat_interleave(group, dim=0)
                new.weight.copy_(w.reshape(H * d_head, old.in_features))
                if old.bias is not None:
                    new.bias.copy_(old.bias.reshape(kv, d_head).repeat_interleave(group, dim=0).reshape(-1))
            setattr(module, proj, new)
        module.num_key_value_groups = 1
        if hasattr(module, "num_key_value_heads"):
            module.num_key_value_heads = H
    cfg.num_key_value_heads = H
    text = getattr(cfg, "text_config", None)
    if text is not None and hasattr(text, "num_key_value_heads"):
        text.num_key_value_heads = H
    return hf_model


register_backend(is_bridge, BridgeBackend)

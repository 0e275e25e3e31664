"""The backend seam: everything circuitgraph needs from a model, behind one small interface.

The engine never reads ``model.blocks[...]`` or spells a hook name itself. It asks a
:class:`Backend` for

* the **facts** that shape the graph (:class:`Architecture`, a config fingerprint, the device);
* the **hook names** of each read and write point (the embedding's write, a head's ``z`` and
  q/k/v, a q/k/v *input* before the norm, the MLP's input, its neurons' reads and activations,
  its output, a norm's scale and normalised output, the final residual);
* the **weights** it contracts with (``W_Q/K/V/O``, ``b_O``, ``W_in``, ``b_in``, ``W_out``) and the
  **norms** whose Jacobians it applies (kind, gain, the module itself for patched neurons);
* **running** with hooks and with the hook flags it needs switched on.

:class:`HookedTransformerBackend` is the first implementation; TransformerLens's TransformerBridge
is the second (:mod:`circuitgraph.models.bridge`, registered through :func:`register_backend`). A
new family or library (parallel attention+MLP, norms after sublayers, gated MLPs) is a new backend,
or a new fact of one, not an edit of the engine.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from circuitgraph.errors import ModelUnsupportedError

# The name this error had before the package had an error hierarchy (kept for imports).
UnsupportedModelError = ModelUnsupportedError

_FINGERPRINT_KEYS = (
    "n_layers",
    "d_model",
    "n_heads",
    "d_head",
    "d_mlp",
    "d_vocab",
    "d_vocab_out",
    "n_ctx",
    "attn_only",
    "normalization_type",
    "positional_embedding_type",
    "act_fn",
    "attention_dir",
    "n_key_value_heads",
    "gated_mlp",
    "parallel_attn_mlp",
)
# Hashed only when set away from their default, so fingerprints of models without them (and the
# circuits saved for those models) stay what they were before these keys existed.
_FINGERPRINT_OPTIONAL = {
    "use_normalization_before_and_after": False,
    "attn_scores_soft_cap": -1.0,
    "output_logits_soft_cap": -1.0,
    "use_local_attn": False,
    "window_size": None,
    "use_qk_norm": False,
    "num_experts": None,
}


@dataclass(frozen=True)
class Architecture:
    """The few facts about a model that decide the graph's shape and what its edges mean.

    ``parallel_attn_mlp``: the MLP of layer L reads the same residual stream as that layer's heads
    (GPT-J, GPT-NeoX, Pythia), so it reads only the writers of layers < L.
    ``post_norms``: a norm after each sublayer, before the residual add (Gemma-2/3). A layer's heads
    then reach the residual stream only through their layer's post-attention norm, together; see
    ``docs/model-families.md`` for what an edge from a head means there.
    """

    n_layers: int
    n_heads: int
    has_mlp: bool
    d_model: int
    d_mlp: int = 0
    parallel_attn_mlp: bool = False
    post_norms: bool = False

    @classmethod
    def from_config(cls, cfg: Any) -> Architecture:
        has_mlp = not bool(getattr(cfg, "attn_only", False))
        return cls(
            n_layers=int(cfg.n_layers),
            n_heads=int(cfg.n_heads),
            has_mlp=has_mlp,
            d_model=int(cfg.d_model),
            d_mlp=int(cfg.d_mlp or 0) if has_mlp else 0,
            parallel_attn_mlp=has_mlp and bool(getattr(cfg, "parallel_attn_mlp", False)),
            post_norms=bool(getattr(cfg, "use_normalization_before_and_after", False)),
        )


def config_hash(cfg: Any) -> str:
    """A short, stable fingerprint of a model config, stored with circuits so that a circuit
    found on one model is never silently applied to another."""
    blob = {k: getattr(cfg, k, None) for k in _FINGERPRINT_KEYS}
    for key, default in _FINGERPRINT_OPTIONAL.items():
        value = getattr(cfg, key, default)
        if value != default:
            blob[key] = value
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class NeuronRead:
    """One way an MLP's neurons read their (normalised) input: neuron i's pre-activation at
    ``hook`` is ``x̂ · W[:, i] (+ b[i])``. A plain MLP has one (``hook_pre``: W_in, b_in); a gated
    MLP two (the gate ``hook_pre``: W_gate; the linear part ``hook_pre_linear``: W_in)."""

    hook: str
    W: torch.Tensor  # [d_model, d_mlp]
    b: torch.Tensor | None  # [d_mlp]


class Backend:
    """What the engine needs from a model (see the module docstring). Subclasses implement it for
    one model library; every method is cheap (no forward pass)."""

    model: Any  # the library's model object (typed loosely: its submodules are the library's business)

    # ------------------------------------------------------------------ facts
    @property
    def cfg(self) -> Any:
        raise NotImplementedError

    def architecture(self) -> Architecture:
        return Architecture.from_config(self.cfg)

    def fingerprint(self) -> str:
        return config_hash(self.cfg)

    @property
    def name(self) -> str:
        return str(getattr(self.cfg, "model_name", "") or "")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def check(self, neurons: bool = False) -> None:
        """Raise :class:`ModelUnsupportedError` when the graph cannot describe this model."""
        raise NotImplementedError

    # ------------------------------------------------------------------ hook names
    def embed_hook(self) -> str:
        """Where the embedding (the ``input`` node) is written: the first residual stream."""
        raise NotImplementedError

    def z_hook(self, layer: int) -> str:
        """Per-head attention values before ``W_O``: ``[batch, pos, head, d_head]``."""
        raise NotImplementedError

    def qkv_hook(self, layer: int, letter: str) -> str:
        """A head's query/key/value after projection: ``[batch, pos, head, d_head]``."""
        raise NotImplementedError

    def qkv_input_hook(self, layer: int, letter: str) -> str:
        """Each head's own copy of the residual it reads as q/k/v, before the norm."""
        raise NotImplementedError

    def mlp_in_hook(self, layer: int) -> str:
        raise NotImplementedError

    def mlp_out_hook(self, layer: int) -> str:
        raise NotImplementedError

    def mlp_post_hook(self, layer: int) -> str:
        """Neuron activations ``[batch, pos, d_mlp]`` (what ``W_out`` reads)."""
        raise NotImplementedError

    def norm_hook(self, layer: int, which: int, part: str, post: bool = False) -> str:
        """Norm ``which`` (1: attention's, 2: the MLP's) of ``layer``, before the sublayer (or
        after it, with ``post``): its ``scale`` or its ``normalized`` output (before the gain)."""
        raise NotImplementedError

    def final_hook(self) -> str:
        """The last residual stream, which the unembedding reads (the ``logits`` node's input)."""
        raise NotImplementedError

    def has_hook(self, name: str) -> bool:
        raise NotImplementedError

    def hook_names(self) -> list[str]:
        raise NotImplementedError

    # ------------------------------------------------------------------ weights and norms
    def W_qkv(self, layer: int, letter: str) -> torch.Tensor:
        """``[head, d_model, d_head]``, one slice per *query* head (shared k/v heads repeated)."""
        raise NotImplementedError

    def W_O(self, layer: int) -> torch.Tensor:
        """``[head, d_head, d_model]``."""
        raise NotImplementedError

    def b_O(self, layer: int) -> torch.Tensor | None:
        raise NotImplementedError

    def W_out(self, layer: int) -> torch.Tensor:
        """``[d_mlp, d_model]``."""
        raise NotImplementedError

    def b_out(self, layer: int) -> torch.Tensor | None:
        raise NotImplementedError

    def neuron_reads(self, layer: int) -> list[NeuronRead]:
        """How layer ``layer``'s neurons read their normalised input: one :class:`NeuronRead` per
        pre-activation (two for a gated MLP), in the order the forward pass computes them."""
        raise NotImplementedError

    def norm(self, layer: int, which: int, post: bool = False) -> nn.Module | None:
        """The norm module itself (patched neurons run their own inputs through it); with ``post``
        the norm after the sublayer, None when the model has none."""
        raise NotImplementedError

    def norm_kind(self, layer: int, which: int, post: bool = False) -> str:
        """``layernorm`` (centres, then scales), ``rms`` (scales) or ``none``."""
        raise NotImplementedError

    def norm_gain(self, layer: int, which: int, post: bool = False) -> torch.Tensor | None:
        raise NotImplementedError

    def norm_bias(self, layer: int, which: int, post: bool = False) -> torch.Tensor | None:
        raise NotImplementedError

    def norm_eps(self, layer: int, which: int, post: bool = False) -> float:
        raise NotImplementedError

    def normalize(self, layer: int, which: int, x: torch.Tensor, post: bool = False) -> torch.Tensor:
        """The norm applied to ``x`` in ``x``'s own precision (the engine runs it in float32 at least,
        where the model's module would round a half-precision model's output to its dtype)."""
        kind = self.norm_kind(layer, which, post)
        if kind == "none":
            return x
        if kind == "layernorm":
            x = x - x.mean(-1, keepdim=True)
        x = x / (x.pow(2).mean(-1, keepdim=True) + self.norm_eps(layer, which, post)).sqrt()
        gain, bias = self.norm_gain(layer, which, post), self.norm_bias(layer, which, post)
        if gain is not None:
            x = x * gain.detach().to(x.dtype)
        if bias is not None:
            x = x + bias.detach().to(x.dtype)
        return x

    # ------------------------------------------------------------------ running
    def hooks(self, fwd_hooks: list | None = None, bwd_hooks: list | None = None) -> Any:
        """A context manager under which the hooks ``[(hook_name, fn)]`` are active."""
        raise NotImplementedError

    def flags(self, split_qkv_input: bool = False) -> Any:
        """A context manager switching on the hook points the engine reads (restored after)."""
        raise NotImplementedError

    def run_layers(
        self, resid: torch.Tensor, start: int, stop: int | None = None, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Blocks ``start .. stop-1`` on the residual stream ``resid [batch, pos, d_model]``
        (``stop=None``: on to the logits)."""
        raise NotImplementedError

    def unembed(self, resid: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The logits ``[batch, pos, vocab]`` read from the final residual stream (final norm,
        unembedding and whatever the model applies after it, e.g. a logit soft-cap)."""
        raise NotImplementedError

    def mlp(self, layer: int, resid: torch.Tensor) -> torch.Tensor:
        """Layer ``layer``'s MLP output for the residual stream it reads (norm included)."""
        raise NotImplementedError


_NORM_KINDS = {
    "LayerNorm": "layernorm",
    "LayerNormPre": "layernorm",
    "RMSNorm": "rms",
    "RMSNormPre": "rms",
    "Identity": "none",
}


class HookedTransformerBackend(Backend):
    """TransformerLens 3.x's ``HookedTransformer``: pre-norm blocks whose residual stream is exactly
    ``input + Σ heads + Σ MLPs (+ biases)``."""

    def __init__(self, model: Any) -> None:
        self.model = model

    @property
    def cfg(self) -> Any:
        return self.model.cfg

    def check(self, neurons: bool = False) -> None:
        """Refuse architectures whose residual stream does not decompose as heads + MLPs, naming
        the problem and the fix; ungroup grouped-query attention so every query head has its own
        key/value input."""
        cfg = self.cfg
        problems = _architecture_problems(cfg, neurons)
        if problems:
            raise ModelUnsupportedError(
                "this model's architecture is not supported by the circuit graph: "
                + "; ".join(problems)
                + ". Supported: pre-norm (LN, LNPre, RMS, RMSPre or none) decoder-only or bidirectional "
                "transformers with standard, rotary or alibi positions, with or without MLPs (plain or gated), "
                "sequential or parallel attention+MLP blocks, with or without RMS norms after sublayers."
            )
        missing = [h for h in self._needed_hooks() if not self.has_hook(h)]
        if missing:
            raise ModelUnsupportedError(
                f"the model lacks hook points the graph reads: {', '.join(missing[:6])}"
                f"{' …' if len(missing) > 6 else ''}. circuitgraph switches on use_hook_mlp_in (and, only while "
                "evaluating a circuit, use_split_qkv_input) by itself and restores your settings afterwards, so these "
                "hooks exist on every standard HookedTransformer; a subclass that removes or renames them is not supported."
            )
        if getattr(cfg, "n_key_value_heads", None) and cfg.n_key_value_heads != cfg.n_heads:
            if not getattr(cfg, "ungroup_grouped_query_attention", False):
                # Every query head then gets its own copy of the shared key/value input, which the
                # graph needs to score k and v edges per head. Numerically identical.
                self.model.set_ungroup_grouped_query_attention(True)

    def _needed_hooks(self) -> list[str]:
        cfg = self.cfg
        needed = [self.embed_hook(), self.final_hook()]
        for L in range(cfg.n_layers):
            needed += [self.z_hook(L)] + [self.qkv_hook(L, x) for x in "qkv"]
            needed += [self.qkv_input_hook(L, x) for x in "qkv"]
            if not cfg.attn_only:
                needed += [self.mlp_in_hook(L), self.mlp_out_hook(L)]
            if getattr(cfg, "use_normalization_before_and_after", False):  # (the post-norm's Jacobian)
                needed += [self.norm_hook(L, 1, part, post=True) for part in ("scale", "normalized")]
        return needed

    # hook names (TransformerLens's naming)
    def embed_hook(self) -> str:
        return "blocks.0.hook_resid_pre"

    def z_hook(self, layer: int) -> str:
        return f"blocks.{layer}.attn.hook_z"

    def qkv_hook(self, layer: int, letter: str) -> str:
        return f"blocks.{layer}.attn.hook_{letter}"

    def qkv_input_hook(self, layer: int, letter: str) -> str:
        return f"blocks.{layer}.hook_{letter}_input"

    def mlp_in_hook(self, layer: int) -> str:
        return f"blocks.{layer}.hook_mlp_in"

    def mlp_out_hook(self, layer: int) -> str:
        return f"blocks.{layer}.hook_mlp_out"

    def mlp_post_hook(self, layer: int) -> str:
        return f"blocks.{layer}.mlp.hook_post"

    def norm_hook(self, layer: int, which: int, part: str, post: bool = False) -> str:
        return f"blocks.{layer}.ln{which}{'_post' if post else ''}.hook_{part}"

    def final_hook(self) -> str:
        return f"blocks.{self.cfg.n_layers - 1}.hook_resid_post"

    def has_hook(self, name: str) -> bool:
        return name in self.model.hook_dict

    def hook_names(self) -> list[str]:
        return list(self.model.hook_dict)

    # weights
    def W_qkv(self, layer: int, letter: str) -> torch.Tensor:
        attn = self.model.blocks[layer].attn
        W = {"q": attn.W_Q, "k": attn.W_K, "v": attn.W_V}[letter]
        H = self.cfg.n_heads
        return W.repeat_interleave(H // W.shape[0], dim=0) if W.shape[0] != H else W

    def W_O(self, layer: int) -> torch.Tensor:
        return self.model.blocks[layer].attn.W_O

    def b_O(self, layer: int) -> torch.Tensor | None:
        return getattr(self.model.blocks[layer].attn, "b_O", None)

    def W_out(self, layer: int) -> torch.Tensor:
        return self.model.blocks[layer].mlp.W_out

    def b_out(self, layer: int) -> torch.Tensor | None:
        return getattr(self.model.blocks[layer].mlp, "b_out", None)

    def neuron_reads(self, layer: int) -> list[NeuronRead]:
        mlp = self.model.blocks[layer].mlp
        if self.cfg.gated_mlp:  # post = act(x̂·W_gate) · (x̂·W_in) + b_in: no pre-activation biases
            return [
                NeuronRead(f"blocks.{layer}.mlp.hook_pre", mlp.W_gate, None),
                NeuronRead(f"blocks.{layer}.mlp.hook_pre_linear", mlp.W_in, None),
            ]
        return [NeuronRead(f"blocks.{layer}.mlp.hook_pre", mlp.W_in, getattr(mlp, "b_in", None))]  # (None: no bias)

    def norm(self, layer: int, which: int, post: bool = False) -> nn.Module | None:
        return getattr(self.model.blocks[layer], f"ln{which}{'_post' if post else ''}", None)

    def norm_kind(self, layer: int, which: int, post: bool = False) -> str:
        return _NORM_KINDS.get(type(self.norm(layer, which, post)).__name__, "none")

    def norm_gain(self, layer: int, which: int, post: bool = False) -> torch.Tensor | None:
        return getattr(self.norm(layer, which, post), "w", None)

    def norm_bias(self, layer: int, which: int, post: bool = False) -> torch.Tensor | None:
        return getattr(self.norm(layer, which, post), "b", None)

    def norm_eps(self, layer: int, which: int, post: bool = False) -> float:
        return float(getattr(self.norm(layer, which, post), "eps", self.cfg.eps))

    # running
    def hooks(self, fwd_hooks: list | None = None, bwd_hooks: list | None = None) -> Any:
        return self.model.hooks(fwd_hooks=fwd_hooks or [], bwd_hooks=bwd_hooks or [])

    def run_layers(
        self, resid: torch.Tensor, start: int, stop: int | None = None, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.model(resid, start_at_layer=start, stop_at_layer=stop, attention_mask=attention_mask)

    def unembed(self, resid: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(resid, start_at_layer=self.cfg.n_layers, attention_mask=attention_mask)

    def mlp(self, layer: int, resid: torch.Tensor) -> torch.Tensor:
        block = self.model.blocks[layer]
        return block.apply_mlp(block.ln2(resid))

    @contextmanager
    def flags(self, split_qkv_input: bool = False) -> Iterator[None]:
        """``use_hook_mlp_in`` (a cheap [batch, pos, d_model] copy) is always on;
        ``use_split_qkv_input`` (a [batch, pos, head, d_model] copy per q/k/v) only for patched
        evaluation, where each head's q/k/v input is edited separately. The user's settings are
        restored afterwards."""
        model, cfg = self.model, self.cfg
        old = (cfg.use_split_qkv_input, cfg.use_hook_mlp_in, cfg.use_attn_result)
        try:
            if split_qkv_input != cfg.use_split_qkv_input:
                model.set_use_split_qkv_input(split_qkv_input)
            if not cfg.attn_only and not cfg.use_hook_mlp_in:
                model.set_use_hook_mlp_in(True)
            if cfg.use_attn_result:
                model.set_use_attn_result(False)
            if not split_qkv_input:
                for block in model.blocks:
                    _project_kv_once(block.attn)
            yield
        finally:
            for block in model.blocks:
                vars(block.attn).pop("calculate_qkv_matrices", None)  # (TransformerLens's own again)
            model.set_use_split_qkv_input(old[0])
            if not cfg.attn_only:
                model.set_use_hook_mlp_in(old[1])
            model.set_use_attn_result(old[2])


def _project_kv_once(attn: Any) -> None:
    """Make an ungrouped grouped-query attention layer project its shared keys and values once,
    for the duration of :meth:`HookedTransformerBackend.flags` without split inputs (the method
    is an instance attribute that ``flags`` removes again, so the user's model, its copies and
    pickles never carry it).

    Ungrouped, TransformerLens projects the key/value input with each key/value head's weights
    copied for every query head: 4× the k/v projections on Llama-3.2-1B, 7× on Qwen2.5-0.5B, in
    every attribution pass. Where the key/value input is shared by all heads (every gradient and
    capture pass), projecting once per key/value head and repeating the result per query head
    gives the same ``hook_k``/``hook_v`` values and per-query-head gradients."""
    if not hasattr(attn, "repeat_kv_heads") or not attn.cfg.ungroup_grouped_query_attention:
        return
    own = attn.calculate_qkv_matrices  # (bound: TransformerLens's method)

    def calculate_qkv_matrices(query_input: torch.Tensor, key_input: torch.Tensor, value_input: torch.Tensor):
        cfg = attn.cfg
        if not (key_input.ndim == value_input.ndim == query_input.ndim == 3):  # (use_attn_in: per-head inputs)
            return own(query_input, key_input, value_input)

        def project(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # → [B, P, H, d_head]
            W, b = W.to(x.device), b.to(x.device)
            out = torch.nn.functional.linear(x, W.permute(0, 2, 1).reshape(-1, W.shape[1]), b.reshape(-1))
            return out.reshape(*x.shape[:2], *b.shape)

        q = attn.hook_q(project(query_input, attn.W_Q, attn.b_Q))
        k = attn.hook_k(project(key_input, attn._W_K, attn._b_K).repeat_interleave(attn.repeat_kv_heads, dim=2))
        v = attn.hook_v(project(value_input, attn._W_V, attn._b_V).repeat_interleave(attn.repeat_kv_heads, dim=2))
        if cfg.use_qk_norm:
            q = attn._apply_qk_norm(q, attn.q_norm)
            k = attn._apply_qk_norm(k, attn.k_norm)
        return q, k, v

    attn.calculate_qkv_matrices = calculate_qkv_matrices


def _architecture_problems(cfg: Any, neurons: bool) -> list[str]:
    """What in a HookedTransformer config breaks the heads + MLPs decomposition (empty: none)."""
    problems = []
    if getattr(cfg, "positional_embedding_type", "standard") == "shortformer":
        problems.append("shortformer positional embeddings are added inside attention, outside the residual stream")
    if getattr(cfg, "original_architecture", None) in _post_norm_architectures():
        problems.append(
            f"post-norm architecture {cfg.original_architecture} (the norm replaces the pre-norm and sits on the "
            "residual add's input; norms *after* sublayers on top of pre-norms, as in Gemma-2, are supported)"
        )
    if getattr(cfg, "use_normalization_before_and_after", False) and cfg.normalization_type not in ("RMS", "RMSPre"):
        problems.append(
            f"norms after sublayers with normalization_type={cfg.normalization_type!r} (only RMS post-norms, as in "
            "Gemma-2/3, are supported)"
        )
    if getattr(cfg, "load_in_4bit", False):
        problems.append("4-bit quantised weights (load the model in float32 or bfloat16)")
    if neurons and getattr(cfg, "num_experts", None):
        problems.append("neuron-level graphs of mixture-of-experts MLPs (use the MLP-level graph)")
    if neurons and getattr(cfg, "act_fn", "") in ("solu_ln",):
        problems.append("neuron-level graphs need post = act(pre) (plain or gated); SoLU-LN MLPs are not split")
    return problems


def _post_norm_architectures() -> tuple[str, ...]:
    try:  # (absent from older transformer-lens 3.x releases)
        from transformer_lens.components.transformer_block import POST_NORM_ARCHITECTURES
    except ImportError:
        return ()
    return tuple(POST_NORM_ARCHITECTURES)


# Other backends (TransformerBridge: circuitgraph.models.bridge) register here when the package
# `circuitgraph.models` is imported: (does this backend take the model?, the backend's class).
_BACKENDS: list[tuple[Callable[[Any], bool], Callable[[Any], Backend]]] = []
_WRAPPERS: list[Callable[[Backend], Backend]] = []


def register_backend(accepts: Callable[[Any], bool], make: Callable[[Any], Backend]) -> None:
    """Make :func:`as_backend` return ``make(model)`` for every model ``accepts(model)`` is true of."""
    _BACKENDS.append((accepts, make))


def register_backend_wrapper(wrap: Callable[[Backend], Backend]) -> None:
    """Make :func:`as_backend` return ``wrap(backend)``: a wrapper decides from the model whether it
    applies (e.g. a model split across devices, :mod:`circuitgraph.models.devices`)."""
    _WRAPPERS.append(wrap)


def as_backend(model: Any) -> Backend:
    """The backend for ``model`` (a backend is returned as is); a clear error for anything else."""
    if isinstance(model, Backend):
        return model
    backend = _plain_backend(model)
    for wrap in _WRAPPERS:
        backend = wrap(backend)
    return backend


def _plain_backend(model: Any) -> Backend:
    if _is_hooked_transformer(model):
        return HookedTransformerBackend(model)
    for accepts, make in _BACKENDS:
        if accepts(model):
            return make(model)
    raise ModelUnsupportedError(
        f"circuitgraph needs a transformer_lens.HookedTransformer or a transformer_lens.model_bridge.TransformerBridge, "
        f"got {type(model).__name__}. Load a Hugging Face model with circuitgraph.models.load_bridge(path) or "
        "TransformerBridge.boot_transformers(name), or build a HookedTransformer(HookedTransformerConfig(...))."
    )


def _is_hooked_transformer(model: Any) -> bool:
    try:  # transformer-lens is heavy (seconds) and 4.x has no HookedTransformer: then no model is one
        from transformer_lens import HookedTransformer
    except ImportError:  # pragma: no cover - transformer-lens 3.x is a hard dependency today
        return False
    return isinstance(model, HookedTransformer)


def check_model(model: Any, neurons: bool = False) -> Backend:
    """The model's backend, after refusing what the graph cannot describe (see :meth:`Backend.check`)."""
    backend = as_backend(model)
    backend.check(neurons=neurons)
    return backend


def hook_flags(model: Any, split_qkv_input: bool = False) -> Any:
    """:meth:`Backend.flags` of ``model``'s backend."""
    return as_backend(model).flags(split_qkv_input=split_qkv_input)

"""Which TransformerLens models the graph can describe, and the hook flags it needs.

The graph assumes a pre-norm residual stream that is exactly ``input + Σ heads + Σ MLPs (+ biases)``.
Architectures that break that sum (parallel attention/MLP, post-norm, norms after each sublayer,
shortformer positions) are refused with an explanation rather than silently mis-scored.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


class UnsupportedModelError(TypeError):
    """The model is not a HookedTransformer the graph can describe."""


def check_model(model, neurons: bool = False) -> None:
    """Raise :class:`UnsupportedModelError` naming the problem and the fix; also ungroup
    grouped-query attention so that every query head has its own key/value input."""
    try:
        from transformer_lens import HookedTransformer
    except ImportError as e:  # pragma: no cover - transformer-lens is a hard dependency
        raise UnsupportedModelError("transformer-lens is not installed: pip install 'transformer-lens<4'") from e
    if not isinstance(model, HookedTransformer):
        raise UnsupportedModelError(
            f"circuitgraph needs a transformer_lens.HookedTransformer, got {type(model).__name__}. "
            "Load your model with HookedTransformer.from_pretrained(name) (transformer-lens 3.x), or "
            "build one with HookedTransformer(HookedTransformerConfig(...))."
        )
    cfg = model.cfg
    problems = []
    if getattr(cfg, "parallel_attn_mlp", False):
        problems.append("parallel attention/MLP blocks (GPT-J/NeoX style): the MLP does not read its layer's heads")
    if getattr(cfg, "positional_embedding_type", "standard") == "shortformer":
        problems.append("shortformer positional embeddings are added inside attention, outside the residual stream")
    if getattr(cfg, "use_normalization_before_and_after", False):
        problems.append("a norm after each sublayer (Gemma-2 style) makes head outputs non-additive")
    try:
        from transformer_lens.components.transformer_block import POST_NORM_ARCHITECTURES
    except ImportError:  # older 3.x
        POST_NORM_ARCHITECTURES = ()
    if getattr(cfg, "original_architecture", None) in POST_NORM_ARCHITECTURES:
        problems.append(f"post-norm architecture {cfg.original_architecture}")
    if getattr(cfg, "load_in_4bit", False):
        problems.append("4-bit quantised weights (load the model in float32 or bfloat16)")
    if neurons and (getattr(cfg, "gated_mlp", False) or getattr(cfg, "act_fn", "") in ("solu_ln",)):
        problems.append("neuron-level graphs need a plain MLP (post = act(pre)); gated or SoLU-LN MLPs are not split")
    if problems:
        raise UnsupportedModelError(
            "this model's architecture is not supported by the circuit graph: " + "; ".join(problems)
            + ". Supported: pre-norm (LN, LNPre, RMS, RMSPre or none) decoder-only or bidirectional "
            "transformers with standard, rotary or alibi positions, with or without MLPs."
        )
    needed = ["blocks.0.hook_resid_pre", f"blocks.{cfg.n_layers - 1}.hook_resid_post"]
    for L in range(cfg.n_layers):
        needed += [f"blocks.{L}.attn.hook_{x}" for x in ("q", "k", "v", "z")]
        needed += [f"blocks.{L}.hook_{x}_input" for x in ("q", "k", "v")]
        if not cfg.attn_only:
            needed += [f"blocks.{L}.hook_mlp_in", f"blocks.{L}.hook_mlp_out"]
    missing = [h for h in needed if h not in model.hook_dict]
    if missing:
        raise UnsupportedModelError(
            f"the model lacks hook points the graph reads: {', '.join(missing[:6])}"
            f"{' …' if len(missing) > 6 else ''}. circuitgraph switches on use_hook_mlp_in (and, only while "
            "evaluating a circuit, use_split_qkv_input) by itself and restores your settings afterwards, so these "
            "hooks exist on every standard HookedTransformer; a subclass that removes or renames them is not supported."
        )
    if getattr(cfg, "n_key_value_heads", None) and cfg.n_key_value_heads != cfg.n_heads:
        if not getattr(cfg, "ungroup_grouped_query_attention", False):
            # Every query head then gets its own copy of the shared key/value input, which the
            # graph needs to score k and v edges per head. Numerically identical.
            model.set_ungroup_grouped_query_attention(True)


@contextmanager
def hook_flags(model, split_qkv_input: bool = False, hook_mlp_in: bool = True) -> Iterator[None]:
    """Temporarily switch on the TransformerLens hooks the engine reads, restoring the user's
    settings afterwards.

    ``use_hook_mlp_in`` (a cheap [batch, pos, d_model] copy) is always used. ``use_split_qkv_input``
    (a [batch, pos, head, d_model] copy per q/k/v) is only turned on for patched evaluation,
    where each head's q/k/v input must be edited separately; attribution does not need it.
    """
    cfg = model.cfg
    old = (cfg.use_split_qkv_input, cfg.use_hook_mlp_in, cfg.use_attn_result)
    try:
        if split_qkv_input != cfg.use_split_qkv_input:
            model.set_use_split_qkv_input(split_qkv_input)
        if hook_mlp_in and not cfg.attn_only and not cfg.use_hook_mlp_in:
            model.set_use_hook_mlp_in(True)
        if cfg.use_attn_result:
            model.set_use_attn_result(False)
        yield
    finally:
        model.set_use_split_qkv_input(old[0])
        if not cfg.attn_only:
            model.set_use_hook_mlp_in(old[1])
        model.set_use_attn_result(old[2])

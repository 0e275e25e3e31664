"""Tiny random Hugging Face models of the families researchers study, built offline from configs.

A folder written by :func:`save_tiny_hf` is a complete HF model folder: ``config.json``, the
weights as safetensors, and a small word-level tokenizer (``tokenizers`` ``WordLevel`` wrapped in
``PreTrainedTokenizerFast``), so ``TransformerBridge.boot_transformers(folder)`` and
:func:`circuitgraph.models.loading.load_bridge` boot it with no network. Tests use these to check
every backend on every family; users can use them to try circuitgraph on a family's *shape* before
downloading a real checkpoint.

Words of the tokenizer are ``w0 w1 …`` separated by spaces; ids ``0 .. 3`` are ``<unk> <pad> <s>
</s>``. Norm gains and biases are perturbed away from their identity initialisation, so a test
that ignores a gain fails.

transformers and tokenizers are imported inside the functions: they take seconds to import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from circuitgraph.errors import ConfigError

# family name → (transformers config class, model class): both looked up by name inside
# `_classes`, so this module stays cheap to import.
FAMILIES: dict[str, tuple[str, str]] = {
    "gpt2": ("GPT2Config", "GPT2LMHeadModel"),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM"),
    "gptj": ("GPTJConfig", "GPTJForCausalLM"),
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM"),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM"),
}
SPECIAL_TOKENS = ("<unk>", "<pad>", "<s>", "</s>")


def tiny_config(
    family: str,
    *,
    n_layers: int = 2,
    d_model: int = 16,
    n_heads: int = 4,
    n_kv_heads: int | None = None,
    d_mlp: int | None = None,
    vocab: int = 32,
    n_ctx: int = 32,
) -> Any:
    """A ``transformers`` config of ``family`` (see :data:`FAMILIES`) at a tiny size.

    ``n_kv_heads`` (grouped-query attention) applies to the families that have it. ``d_mlp``
    defaults to ``4 · d_model``, the only width TransformerLens's GPT-2 converter reads correctly."""
    config_cls, _ = _classes(family)
    d_mlp = 4 * d_model if d_mlp is None else d_mlp
    d_head = d_model // n_heads
    kv = n_heads if n_kv_heads is None else n_kv_heads
    ids = {"pad_token_id": 1, "bos_token_id": 2, "eos_token_id": 3}
    if family == "gpt2":
        # (n_ctx too: TransformerLens's HookedTransformer converter still reads it)
        return config_cls(vocab_size=vocab, n_positions=n_ctx, n_ctx=n_ctx, n_embd=d_model, n_layer=n_layers,
                          n_head=n_heads, n_inner=d_mlp, **ids)  # fmt: skip
    if family == "gpt_neox":
        return config_cls(vocab_size=vocab, hidden_size=d_model, num_hidden_layers=n_layers,
                          num_attention_heads=n_heads, intermediate_size=d_mlp, max_position_embeddings=n_ctx,
                          rotary_pct=0.5, use_parallel_residual=True, **ids)  # fmt: skip
    if family == "gptj":
        return config_cls(vocab_size=vocab, n_positions=n_ctx, n_ctx=n_ctx, n_embd=d_model, n_layer=n_layers,
                          n_head=n_heads, n_inner=d_mlp, rotary_dim=d_head // 2, **ids)  # fmt: skip
    common: dict[str, Any] = dict(vocab_size=vocab, hidden_size=d_model, num_hidden_layers=n_layers, num_attention_heads=n_heads,
                  num_key_value_heads=kv, intermediate_size=d_mlp, max_position_embeddings=n_ctx, head_dim=d_head,
                  **ids)  # fmt: skip
    if family in ("gemma2", "gemma3"):
        # Gemma's own features at tiny size: soft-caps, a sliding window shorter than the prompts
        common.update(sliding_window=4, query_pre_attn_scalar=d_head)
        if family == "gemma2":
            common.update(attn_logit_softcapping=50.0, final_logit_softcapping=30.0)
    return config_cls(**common)


def save_tiny_hf(
    family: str,
    folder: str | Path,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    **sizes: Any,
) -> Path:
    """Write a random ``family`` model and a word-level tokenizer to ``folder``; returns it.

    ``sizes`` go to :func:`tiny_config`. The same seed gives the same weights."""
    import transformers  # heavy (seconds): only when a model is built

    _, model_name = _classes(family)
    cfg = tiny_config(family, **sizes)
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(cfg).to(dtype).eval()
    _perturb_norms(model, seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    word_level_tokenizer(cfg.vocab_size).save_pretrained(folder)
    return folder


def word_level_tokenizer(vocab: int) -> Any:
    """A ``PreTrainedTokenizerFast`` over the words ``w0 … w{vocab-5}`` and the special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers  # heavy: only when a model is built
    from transformers import PreTrainedTokenizerFast

    words = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    words.update({f"w{i}": len(SPECIAL_TOKENS) + i for i in range(vocab - len(SPECIAL_TOKENS))})
    tok = Tokenizer(models.WordLevel(vocab=words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )


def _perturb_norms(model: torch.nn.Module, seed: int) -> None:
    """Random norm gains and biases (initialisation leaves them at the identity)."""
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or ".ln_" in name or name.startswith("ln_"):
                p.add_((0.3 if name.endswith("weight") else 0.1) * torch.randn(p.shape, generator=g).to(p.dtype))


def _classes(family: str) -> tuple[Any, str]:
    if family not in FAMILIES:
        raise ConfigError(f"unknown tiny model family {family!r}; choose one of {sorted(FAMILIES)}")
    import transformers  # heavy (seconds): only when a model is built

    config_name, model_name = FAMILIES[family]
    return getattr(transformers, config_name), model_name

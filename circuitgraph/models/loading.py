"""Loading a model to analyse from outside the package: a TransformerLens pretrained name, or a
HuggingFace-format folder on disk (no network). (Zoo models load with :func:`circuitgraph.zoo.load`.)

transformer_lens and transformers are imported inside the loaders: importing them takes seconds,
and code that only checks a configuration or reads result files should not pay for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # annotations only: the import itself is heavy
    from transformer_lens import HookedTransformer


def load_pretrained(
    name: str,
    device: str | torch.device,
    dtype: torch.dtype,
    *,
    fold_ln: bool = True,
    center_writing_weights: bool = True,
    center_unembed: bool = True,
) -> HookedTransformer:
    """A TransformerLens model by its name (from the HF hub or its local cache), in eval mode."""
    from transformer_lens import HookedTransformer  # heavy (seconds): only when a model loads

    model = HookedTransformer.from_pretrained(
        name,
        device=str(device),
        dtype=dtype,
        fold_ln=fold_ln,
        center_writing_weights=center_writing_weights,
        center_unembed=center_unembed,
    )
    model.eval()
    return model


def load_local_model(
    path: str | Path,
    device: str | torch.device,
    dtype: torch.dtype,
    *,
    fold_ln: bool = True,
    center_writing_weights: bool = True,
    center_unembed: bool = True,
) -> HookedTransformer:
    """A HuggingFace-format folder → ``HookedTransformer``, without touching the network.

    ``HookedTransformer.from_pretrained`` insists on a name from TransformerLens' list, so this
    does its steps directly: read the folder's config and weights with transformers, convert them
    with TransformerLens' converters, and apply the same weight processing."""
    # heavy (seconds): only when a model loads
    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as loading
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = str(path)
    hf = AutoModelForCausalLM.from_pretrained(p, dtype=dtype, local_files_only=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(p, local_files_only=True)
    except Exception:  # a folder without tokenizer files: token-id tasks still work
        tokenizer = None
    cfg = loading.get_pretrained_model_config(
        p, hf_cfg=hf.config.to_dict(), fold_ln=fold_ln, device=str(device), dtype=dtype
    )
    cfg.tokenizer_name = None if tokenizer is None else cfg.tokenizer_name
    state = loading.get_pretrained_state_dict(p, cfg, hf, dtype=dtype)
    del hf
    model = HookedTransformer(cfg, tokenizer, move_to_device=False)
    model.load_and_process_state_dict(
        state,
        fold_ln=fold_ln,
        center_writing_weights=center_writing_weights,
        center_unembed=center_unembed,
        fold_value_biases=True,
        refactor_factored_attn_matrices=False,
    )
    model.move_model_modules_to_device()
    model.eval()
    return model

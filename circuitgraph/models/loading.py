"""Loading a model to analyse from outside the package: a TransformerLens pretrained name, or a
HuggingFace-format folder on disk (no network), as a ``HookedTransformer`` or booted through a
``TransformerBridge``. (Zoo models load with :func:`circuitgraph.zoo.load`.)

transformer_lens and transformers are imported inside the loaders: importing them takes seconds,
and code that only checks a configuration or reads result files should not pay for it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from circuitgraph.errors import ConfigError, ModelUnsupportedError
from circuitgraph.models.bridge import ungroup_kv_heads

if TYPE_CHECKING:  # annotations only: the import itself is heavy (and 4.x has no HookedTransformer)
    from transformer_lens import HookedTransformer


def has_hooked_transformer() -> bool:
    """Whether the installed transformer-lens still has ``HookedTransformer`` (3.x; 4.x removed it)."""
    try:  # heavy (seconds): only when a model loads
        from transformer_lens import HookedTransformer  # noqa: F401
    except ImportError:
        return False
    return True


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
    fold_value_biases: bool = True,
) -> HookedTransformer:
    """A HuggingFace-format folder → ``HookedTransformer``, without touching the network.

    ``HookedTransformer.from_pretrained`` insists on a name from TransformerLens' list, so this
    does its steps directly: read the folder's config and weights with transformers, convert them
    with TransformerLens' converters, and apply the same weight processing."""
    # heavy (seconds): only when a model loads
    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as loading
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = str(check_hf_folder(path, need_tokenizer=False))
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
        fold_value_biases=fold_value_biases,
        refactor_factored_attn_matrices=False,
    )
    model.move_model_modules_to_device()
    model.eval()
    return model


def load_bridge(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    local_files_only: bool = True,
    device_map: str | dict[str, Any] | None = None,
) -> Any:
    """A Hugging Face model (a local folder, or a hub name when ``local_files_only=False``) booted
    through TransformerLens's ``TransformerBridge``, in eval mode, ready for circuitgraph.

    Grouped-query attention is ungrouped first (:func:`ungroup_kv_heads`: the graph needs a key and
    value input per query head; the model computes the same). Weights stay as Hugging Face has
    them (no LayerNorm folding or centring): scores do not depend on it.

    ``device_map`` splits a model too big for one device across several (Hugging Face's
    placement: ``"auto"``, ``"balanced"``, or ``{"model.layers.0": 0, ...}``; needs ``accelerate``);
    ``device`` is then ignored. The engine keeps its tensors on the embedding's device and moves
    what crosses to each layer's device (:mod:`circuitgraph.models.devices`)."""
    from transformer_lens.model_bridge import TransformerBridge  # heavy (seconds): only when a model loads
    from transformers import AutoModelForCausalLM

    p = str(check_hf_folder(path) if local_files_only else path)
    if not local_files_only and not Path(p).is_dir():
        _check_hf_config(_hub_config(p), p)
    tokenizer = load_tokenizer(p, local_files_only=local_files_only)
    placement = {} if device_map is None else {"device_map": device_map}
    hf = AutoModelForCausalLM.from_pretrained(p, dtype=dtype, local_files_only=local_files_only, **placement)
    ungroup_kv_heads(hf)
    hf.eval()
    # a dispatched model stays where its map put it (the bridge reads its devices off hf_device_map)
    where = None if device_map is not None else str(device)
    bridge = TransformerBridge.boot_transformers(p, hf_model=hf, tokenizer=tokenizer, device=where, dtype=dtype)
    bridge.eval()
    return bridge


def load_tokenizer(path: str, local_files_only: bool = True) -> Any:
    """The folder's tokenizer. A folder that declares the generic fast tokenizer gets exactly that:
    ``AutoTokenizer`` would pick the model family's own class (e.g. Qwen2's byte-level BPE), which
    re-tokenizes a custom vocabulary such as :mod:`circuitgraph.models.tiny`'s word-level one."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast  # heavy (seconds): only when a model loads

    declared = Path(path) / "tokenizer_config.json"
    if declared.is_file() and json.loads(declared.read_text()).get("tokenizer_class") in _GENERIC_TOKENIZERS:
        # (add_bos_token: TransformerLens re-loads a tokenizer without it through AutoTokenizer)
        return PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True, add_bos_token=True)
    return AutoTokenizer.from_pretrained(path, local_files_only=local_files_only)


_GENERIC_TOKENIZERS = ("PreTrainedTokenizerFast", "TokenizersBackend")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def check_hf_folder(path: str | Path, need_tokenizer: bool = True) -> Path:
    """Refuse, with the fix, a folder that is not a Hugging Face causal-LM folder circuitgraph can
    analyse: missing, no ``config.json``, an encoder-decoder, quantised to 4/8 bits, or (for the
    bridge, which tokenizes on boot) without tokenizer files."""
    folder = Path(path)
    if not folder.is_dir():
        raise ConfigError(f"model folder {folder} does not exist; pass the folder written by save_pretrained()")
    if not (folder / "config.json").is_file():
        raise ConfigError(
            f"{folder} has no config.json, so it is not a Hugging Face model folder; save the model there with "
            "model.save_pretrained(folder)"
        )
    _check_hf_config(json.loads((folder / "config.json").read_text()), str(folder))
    if need_tokenizer and not any((folder / f).is_file() for f in _TOKENIZER_FILES):
        raise ConfigError(
            f"{folder} has no tokenizer (none of {', '.join(_TOKENIZER_FILES)}); the TransformerBridge needs one to "
            "boot. Save it beside the model with tokenizer.save_pretrained(folder) (for a model without one, "
            "circuitgraph.models.tiny.word_level_tokenizer(vocab_size) makes a small word-level tokenizer)"
        )
    return folder


def _check_hf_config(cfg: dict, where: str) -> None:
    arch = ", ".join(cfg.get("architectures") or [str(cfg.get("model_type", "unknown"))])
    if cfg.get("is_encoder_decoder"):
        raise ModelUnsupportedError(
            f"{where} holds an encoder-decoder model ({arch}); circuitgraph's graph describes one decoder-only "
            "residual stream read by the unembedding. Use a decoder-only model (GPT-2, Llama, Qwen2, Mistral, …)"
        )
    quant = cfg.get("quantization_config") or {}
    if quant:
        bits = "4-bit" if quant.get("load_in_4bit") or "4" in str(quant.get("bits", "")) else "quantised"
        raise ModelUnsupportedError(
            f"{where} holds a {bits} model ({arch}, {quant.get('quant_method', 'quantization_config')}); edge scores "
            "contract with the weights, so circuitgraph needs them in float32 or bfloat16. Load the unquantised "
            "checkpoint, or dequantise it (model.dequantize()) and save_pretrained() it"
        )


def _hub_config(name: str) -> dict:
    from transformers import AutoConfig  # heavy (seconds): only when a model loads

    return AutoConfig.from_pretrained(name).to_dict()

"""Sparse autoencoders (SAEs) for circuitgraph: a small SAE model, a reader/writer for the
SAELens on-disk format (``cfg.json`` + ``sae_weights.safetensors``), and splicing SAEs into a
HookedTransformer with an explicit error term per site.

>>> from circuitgraph.sae import load_sae, splice, zoo_saes
>>> sae = load_sae("path/to/blocks.1.hook_resid_pre")
>>> with splice(model, [sae]) as sp:           # logits unchanged: recon + error == x
...     logits = model(tokens)
>>> sp.acts[sae.hook_name]                     # feature activations
"""

from pathlib import Path

from circuitgraph.sae.sae import (
    CFG_FILE,
    SUPPORTED_ARCHITECTURES,
    WEIGHTS_FILE,
    SAE,
    from_sae_lens,
    load_sae,
    sae_from_config,
    save_sae,
)
from circuitgraph.sae.splice import Splice, site_width, splice, splice_hooks


def zoo_sae_dir(model_name: str = "induction") -> Path:
    """The folder holding the SAEs shipped for a zoo model (one sub-folder per hook point)."""
    from circuitgraph.zoo import DATA_DIR

    return Path(DATA_DIR) / model_name / "saes"


def zoo_saes(model_name: str = "induction", device=None) -> dict[str, SAE]:
    """The SAEs shipped for zoo model ``model_name``, keyed by hook name (empty if none)."""
    root = zoo_sae_dir(model_name)
    if not root.is_dir():
        return {}
    out = {}
    for sub in sorted(p for p in root.iterdir() if (p / CFG_FILE).is_file()):
        sae = load_sae(sub, device=device)
        out[sae.hook_name] = sae
    return out


__all__ = [
    "SAE", "load_sae", "save_sae", "from_sae_lens", "sae_from_config", "splice", "splice_hooks",
    "Splice", "site_width", "zoo_saes", "zoo_sae_dir", "SUPPORTED_ARCHITECTURES", "CFG_FILE",
    "WEIGHTS_FILE",
]

"""Sparse autoencoders (SAEs) for circuitgraph, as a user works with them: the SAE model and its
SAELens-format files (defined in :mod:`circuitgraph.models.sae`, beside the model backends),
splicing SAEs into a model with an explicit error term, feature graphs and feature labels.

>>> from circuitgraph.sae import load_sae, splice, zoo_saes
>>> sae = load_sae("path/to/blocks.1.hook_resid_pre")
>>> with splice(model, [sae]) as sp:           # logits unchanged: recon + error == x
...     logits = model(tokens)
>>> sp.acts[sae.hook_name]                     # feature activations
>>> g = feature_graph(model, [sae], task)   # features as graph nodes (+ rest, err)
>>> write_html(circuit, "c.html", node_info=feature_labels(model, g, task))
"""

from pathlib import Path

from circuitgraph.attribution.nodes import feature_graph
from circuitgraph.errors import FileFormatError
from circuitgraph.models.sae import (
    CFG_FILE,
    SAE,
    SUPPORTED_ARCHITECTURES,
    WEIGHTS_FILE,
    from_sae_lens,
    load_sae,
    sae_from_config,
    save_sae,
    site_width,
)
from circuitgraph.sae.labels import decode_tokens, feature_labels
from circuitgraph.sae.splice import Splice, splice, splice_hooks
from circuitgraph.zoo import DATA_DIR


def zoo_sae_dir(model_name: str = "induction") -> Path:
    """The folder holding the SAEs shipped for a zoo model (one sub-folder per hook point)."""
    return Path(DATA_DIR) / model_name / "saes"


def zoo_saes(model_name: str = "induction", device=None) -> dict[str, SAE]:
    """The SAEs shipped for zoo model ``model_name``, keyed by hook name (empty if none)."""
    root = zoo_sae_dir(model_name)
    return load_saes(root, device=device) if root.is_dir() else {}


def load_saes(folder: str | Path, device=None) -> dict[str, SAE]:
    """Every SAE in ``folder`` (itself an SAE folder, or a folder of SAE folders), keyed by hook name."""
    folder = Path(folder)
    if (folder / CFG_FILE).is_file():
        sae = load_sae(folder, device=device)
        return {sae.hook_name: sae}
    out = {}
    for sub in sorted(p for p in folder.iterdir() if (p / CFG_FILE).is_file()):
        sae = load_sae(sub, device=device)
        if sae.hook_name in out:
            raise FileFormatError(f"{folder} holds two SAEs for {sae.hook_name}; keep one per hook point")
        out[sae.hook_name] = sae
    if not out:
        raise FileFormatError(
            f"{folder} holds no SAE: expected {CFG_FILE} + {WEIGHTS_FILE} in it or in its sub-folders"
        )
    return out


__all__ = [
    "SAE",
    "load_sae",
    "load_saes",
    "save_sae",
    "from_sae_lens",
    "sae_from_config",
    "splice",
    "splice_hooks",
    "Splice",
    "site_width",
    "zoo_saes",
    "zoo_sae_dir",
    "SUPPORTED_ARCHITECTURES",
    "CFG_FILE",
    "WEIGHTS_FILE",
    "feature_graph",
    "feature_labels",
    "decode_tokens",
]

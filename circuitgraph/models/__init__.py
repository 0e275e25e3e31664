"""Model backends: the only code that knows a model library (TransformerLens today), and the SAE
weights that splice into a model. The engine asks a backend for hook names, weights and norms,
never the model itself (see :mod:`circuitgraph.models.backend`). Two backends: a
``HookedTransformer`` and a ``TransformerBridge`` (:mod:`circuitgraph.models.bridge`, registered
on import); a model split across devices gets either one wrapped so that tensors follow each
layer's device (:mod:`circuitgraph.models.devices`, registered on import)."""

from circuitgraph.models.backend import (
    Architecture,
    Backend,
    HookedTransformerBackend,
    UnsupportedModelError,
    as_backend,
    check_model,
    config_hash,
    hook_flags,
    register_backend,
)
from circuitgraph.models.bridge import BridgeBackend, is_bridge, ungroup_kv_heads
from circuitgraph.models.devices import SplitModelBackend, is_split, parameter_devices
from circuitgraph.models.loading import load_bridge
from circuitgraph.models.sae import SAE, as_sae_list, load_sae, save_sae, validate

__all__ = [
    "Architecture",
    "Backend",
    "HookedTransformerBackend",
    "UnsupportedModelError",
    "as_backend",
    "check_model",
    "config_hash",
    "hook_flags",
    "register_backend",
    "BridgeBackend",
    "is_bridge",
    "ungroup_kv_heads",
    "SplitModelBackend",
    "is_split",
    "parameter_devices",
    "load_bridge",
    "SAE",
    "as_sae_list",
    "load_sae",
    "save_sae",
    "validate",
]

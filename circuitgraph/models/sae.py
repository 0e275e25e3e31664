"""A minimal sparse autoencoder (SAE) and a reader/writer for the SAELens on-disk format.

An SAE reads the activation at one TransformerLens hook point (``hook_name``) and rewrites it as
a sparse, non-negative combination of learned directions::

    acts  = act_fn((x - b_dec * apply_b_dec_to_input) @ W_enc + b_enc)      # [..., d_sae]
    recon = acts @ W_dec + b_dec                                            # [..., d_in]

``act_fn`` is ReLU for the "standard" architecture; for "jumprelu" a pre-activation is kept only
where it exceeds the per-feature ``threshold``.

On disk an SAE is a folder holding ``cfg.json`` and ``sae_weights.safetensors`` (tensors
``W_enc``, ``b_enc``, ``W_dec``, ``b_dec`` and, for JumpReLU, ``threshold``) -- the layout SAELens
writes -- so SAEs trained with SAELens load here without SAELens installed, and SAEs saved here
load in SAELens.  Both the flat config of SAELens 3-5 (``hook_name`` / older ``hook_point`` at the
top level) and the SAELens 6 layout (``hook_name`` under ``metadata``) are read.

Every config is checked against :data:`SAE_CONFIG` (types and ranges of the keys this module
reads) and the weights' header against the config before a tensor is loaded; weights must be
finite. SAEs saved here are bound to their config: ``cfg.json`` records the weights file's pair id
and SHA-256 (``pair_id``, ``tensors_sha256``), so a config never loads with another save's weights.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from circuitgraph.atomic import atomic_write
from circuitgraph.errors import FileFormatError, GraphError, file_error
from circuitgraph.files import schema
from circuitgraph.files.pairs import (
    BINDING_FIELDS,
    FLOAT_DTYPES,
    PAIR_ID,
    TENSORS_SHA256,
    Binding,
    check_binding,
    check_finite,
    read_header,
    write_tensors,
)
from circuitgraph.files.reading import check_file, read_json
from circuitgraph.files.schema import LIMITS, Bool, Either, Int, Obj, Optional, Str
from circuitgraph.models.backend import as_backend

if TYPE_CHECKING:
    from transformer_lens.hook_points import HookPoint

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"

SUPPORTED_ARCHITECTURES = ("standard", "jumprelu")
# SAELens calls these the same SAE family; a missing key means "standard"
_ARCH_ALIASES = {
    "standard": "standard",
    "relu": "standard",
    "jumprelu": "jumprelu",
    "transcoder": "standard",
    "jumprelu_transcoder": "jumprelu",
}
_DTYPES = {
    "float32": torch.float32,
    "float": torch.float32,
    "torch.float32": torch.float32,
    "float64": torch.float64,
    "double": torch.float64,
    "torch.float64": torch.float64,
    "float16": torch.float16,
    "half": torch.float16,
    "torch.float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "torch.bfloat16": torch.bfloat16,
}


class SAE(nn.Module):
    """A ReLU (or JumpReLU) sparse autoencoder attached to one hook point.

    Parameters are ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``,
    ``b_dec [d_in]`` and, when ``architecture == "jumprelu"``, ``threshold [d_sae]``.
    ``cfg`` keeps any extra configuration (training figures, provenance); it is written back to
    ``cfg.json`` by :func:`save_sae`."""

    # TransformerLens hook points, added as submodules when the SAE is first spliced into a model
    # (see :mod:`circuitgraph.sae.splice`); declarations only, for the type checker
    hook_sae_input: HookPoint
    hook_sae_acts: HookPoint
    hook_sae_recon: HookPoint
    hook_sae_error: HookPoint

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        hook_name: str,
        *,
        architecture: str = "standard",
        apply_b_dec_to_input: bool = True,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        cfg: dict | None = None,
        hook_name_out: str | None = None,
    ):
        super().__init__()
        if not (isinstance(d_in, int) and isinstance(d_sae, int)) or d_in < 1 or d_sae < 1:
            raise ValueError(f"SAE needs positive integer d_in and d_sae, got d_in={d_in!r}, d_sae={d_sae!r}")
        if not isinstance(hook_name, str) or not hook_name:
            raise ValueError(
                f"SAE needs a hook_name (a TransformerLens hook point such as "
                f"'blocks.1.hook_resid_pre'), got {hook_name!r}"
            )
        arch = _ARCH_ALIASES.get(str(architecture).lower())
        if arch is None:
            raise ValueError(_arch_error(architecture))
        if hook_name_out is not None and apply_b_dec_to_input:
            raise ValueError(
                f"a transcoder ({hook_name} → {hook_name_out}) decodes into another hook point, so "
                "its b_dec is an output bias: apply_b_dec_to_input must be false"
            )
        self.d_in, self.d_sae, self.hook_name = d_in, d_sae, hook_name
        self.hook_name_out = hook_name_out  # transcoders: where the reconstruction goes
        self.architecture = arch
        self.apply_b_dec_to_input = bool(apply_b_dec_to_input)
        self.cfg = dict(cfg or {})
        kw: dict[str, Any] = dict(dtype=dtype, device=device)
        self.W_enc = nn.Parameter(torch.zeros(d_in, d_sae, **kw))
        self.b_enc = nn.Parameter(torch.zeros(d_sae, **kw))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_in, **kw))
        self.b_dec = nn.Parameter(torch.zeros(d_in, **kw))
        self.threshold: nn.Parameter | None = nn.Parameter(torch.zeros(d_sae, **kw)) if arch == "jumprelu" else None

    # -- forward pass --------------------------------------------------------------------------

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder pre-activations ``[..., d_sae]``."""
        self._check_width(x)
        x = x.to(self.W_enc.dtype)
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations ``[..., d_sae]`` of activations ``x [..., d_in]``."""
        return self.activation(self.pre_acts(x))

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        """Feature activations from pre-activations (ReLU, or JumpReLU above ``threshold``)."""
        if self.threshold is not None:
            return torch.relu(pre) * (pre > self.threshold).to(pre.dtype)
        return torch.relu(pre)

    def decode(self, acts: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``[..., d_in]`` of feature activations ``acts [..., d_sae]``."""
        if acts.shape[-1] != self.d_sae:
            raise ValueError(
                f"decode expects feature activations of width d_sae={self.d_sae}, got shape {tuple(acts.shape)}"
            )
        return acts.to(self.W_dec.dtype) @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def error(
        self, x: torch.Tensor, target: torch.Tensor | None = None, recon: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The error term every splice keeps, so that the spliced model computes what the model
        computes: ``target − decode(encode(x))``, where ``target`` is ``x`` itself for an SAE and the
        MLP's output for a transcoder. ``recon``: ``decode(encode(x))``, when the caller has it."""
        recon = self.decode(self.encode(x)) if recon is None else recon
        return (x if target is None else target).to(recon.dtype) - recon

    def check_finite(self) -> None:
        """Refuse NaN or ±inf weights here, where they are, instead of as a NaN metric later."""
        for k in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
            t = getattr(self, k)
            if t is not None:
                check_finite(t.detach(), f"the SAE at {self.hook_name!r}: {k}", GraphError)

    def _check_width(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.d_in:
            raise ValueError(
                f"SAE for {self.hook_name!r} expects activations of width d_in={self.d_in}, got shape {tuple(x.shape)}"
            )

    # -- config --------------------------------------------------------------------------------

    def config_dict(self) -> dict:
        """The ``cfg.json`` contents: SAELens key names (both the flat and the ``metadata``
        layouts carry ``hook_name``), followed by any extra keys kept in ``self.cfg``."""
        extra = {k: v for k, v in self.cfg.items() if k not in _CORE_KEYS and k not in _BINDING_KEYS}
        meta = dict(extra.pop("metadata", {}) or {})
        meta["hook_name"] = self.hook_name
        meta.setdefault("hook_head_index", None)
        if self.hook_name_out is not None:
            meta["hook_name_out"] = self.hook_name_out
        doc = {
            "architecture": self.architecture
            if not self.hook_name_out
            else "transcoder"
            if self.architecture == "standard"
            else f"{self.architecture}_transcoder",
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            "dtype": str(self.W_enc.dtype).replace("torch.", ""),
            "device": "cpu",
            "hook_name": self.hook_name,
            "hook_head_index": None,
            **({"hook_name_out": self.hook_name_out, "d_out": self.d_in} if self.hook_name_out else {}),
            "apply_b_dec_to_input": self.apply_b_dec_to_input,
            "normalize_activations": "none",
            "activation_fn_str": "relu",
            "metadata": meta,
        }
        doc.update(extra)
        return doc

    def extra_repr(self) -> str:
        out = f", hook_name_out={self.hook_name_out!r}" if self.hook_name_out else ""
        return (
            f"hook_name={self.hook_name!r}{out}, d_in={self.d_in}, d_sae={self.d_sae}, "
            f"architecture={self.architecture!r}"
        )


_NAME = Str(max_len=256, min_len=1, label="a hook name")
# The keys of cfg.json this module reads, declaratively; other keys (training figures, SAELens
# options we ignore) pass. Documented in docs/circuit-schema.md.
SAE_CONFIG = Obj(
    required={"d_in": Int(1, LIMITS.max_d_mlp), "d_sae": Int(1, LIMITS.max_d_sae)},
    optional={
        "architecture": Str(max_len=64),
        "activation_fn_str": Optional(Str(max_len=64)),
        "activation_fn": Optional(Str(max_len=64)),
        "dtype": Str(max_len=64),
        "hook_name": _NAME,
        "hook_point": _NAME,
        "hook_name_out": Optional(_NAME),
        "d_out": Int(1, LIMITS.max_d_mlp),
        "hook_head_index": Optional(Int(0, LIMITS.max_heads)),
        "apply_b_dec_to_input": Bool(),
        "normalize_activations": Optional(Either(Str(max_len=64), Bool())),
        "finetuning_scaling_factor": Bool(),
        "metadata": Obj(
            optional={
                "hook_name": _NAME,
                "hook_point": _NAME,
                "hook_name_out": Optional(_NAME),
                "hook_head_index": Optional(Int(0, LIMITS.max_heads)),
            }
        ),
        **BINDING_FIELDS,
    },
    label="an SAE config object",
)
_BINDING_KEYS = {PAIR_ID, TENSORS_SHA256}  # rewritten on every save, never carried over

_CORE_KEYS = {
    "architecture",
    "d_in",
    "d_sae",
    "dtype",
    "device",
    "hook_name",
    "hook_point",
    "hook_name_out",
    "d_out",
    "hook_head_index",
    "apply_b_dec_to_input",
    "normalize_activations",
    "activation_fn_str",
    "activation_fn",
}


def _arch_error(architecture: Any) -> str:
    return (
        f"unsupported SAE architecture {architecture!r}; supported: "
        f"{', '.join(SUPPORTED_ARCHITECTURES)} (ReLU and JumpReLU encoders). Gated, TopK and "
        "other SAELens architectures would need their own encoder; convert the SAE to a "
        "standard/JumpReLU one first"
    )


# ---------------------------------------------------------------------------------------------
# Reading and writing the SAELens folder format
# ---------------------------------------------------------------------------------------------


def _metadata(cfg: dict) -> dict:
    """SAELens 6 keeps the hook names under ``metadata``; earlier versions at the top level."""
    meta = cfg.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _hook_name(cfg: dict) -> str | None:
    meta = _metadata(cfg)
    for src in (cfg, meta):
        for key in ("hook_name", "hook_point"):
            if isinstance(src.get(key), str) and src[key]:
                return src[key]
    return None


# A flat sequence of independent checks, each raising with its own message naming the key and the fix.
def sae_from_config(  # noqa: C901
    cfg: dict, state: dict[str, torch.Tensor], where: str = "<dict>", device: str | torch.device | None = None
) -> SAE:
    """Build an :class:`SAE` from a SAELens-style config dict and a weight dict, validating both.

    Raises :class:`ValueError` naming the problem (missing key, unsupported option, missing or
    mis-shaped tensor) and what to do about it."""
    folder = Path(where)
    if not isinstance(cfg, dict):
        raise file_error(
            f"cannot load SAE from {str(folder)!r}", f"{CFG_FILE} must hold a JSON object, got {type(cfg).__name__}"
        )
    missing = [k for k in ("d_in", "d_sae") if k not in cfg]
    hook = _hook_name(cfg)
    if hook is None:
        missing.append("hook_name")
    if missing or hook is None:
        raise file_error(
            f"cannot load SAE from {str(folder)!r}",
            f"{CFG_FILE} lacks required key(s) {missing}; an SAELens config needs "
            "d_in, d_sae and hook_name (SAELens 6 keeps hook_name under "
            "'metadata'; SAELens < 3 called it hook_point)",
        )
    d_in, d_sae = cfg["d_in"], cfg["d_sae"]
    for key, val in (("d_in", d_in), ("d_sae", d_sae)):
        if isinstance(val, bool) or not isinstance(val, int) or val < 1:
            raise file_error(
                f"cannot load SAE from {str(folder)!r}",
                f"{CFG_FILE} key {key!r} must be a positive integer, got {val!r}",
            )
    schema.validate(cfg, SAE_CONFIG, f"cannot load SAE from {str(folder)!r}: {CFG_FILE}")

    arch_raw = cfg.get("architecture", "standard")
    arch = _ARCH_ALIASES.get(str(arch_raw).lower())
    act_fn = str(cfg.get("activation_fn_str", cfg.get("activation_fn", "relu")) or "relu").lower()
    if arch is None or act_fn not in ("relu", "jumprelu"):
        raise file_error(
            f"cannot load SAE from {str(folder)!r}",
            _arch_error(arch_raw if arch is None else f"{arch_raw} with activation {act_fn}"),
        )
    norm = cfg.get("normalize_activations", "none")
    if norm not in (None, "none", False):
        raise file_error(
            f"cannot load SAE from {str(folder)!r}",
            f"normalize_activations={norm!r} is not supported (only 'none'): the "
            "input scaling it implies is not stored with the weights. Fold the "
            "scaling factor into W_enc/W_dec (SAELens: fold_activation_norm_"
            "scaling_factor) and save with normalize_activations='none'",
        )
    if cfg.get("hook_head_index") not in (None,) or (
        isinstance(cfg.get("metadata"), dict) and cfg["metadata"].get("hook_head_index") is not None
    ):
        raise file_error(
            f"cannot load SAE from {str(folder)!r}",
            "hook_head_index is set (an SAE on a single attention head); only SAEs on a whole hook point are supported",
        )
    if cfg.get("finetuning_scaling_factor") and "scaling_factor" in state:
        raise file_error(
            f"cannot load SAE from {str(folder)!r}",
            "finetuning_scaling_factor is set; fold 'scaling_factor' into W_dec "
            "before loading (SAELens: fold_scaling_factor)",
        )
    dtype_name = str(cfg.get("dtype", "float32"))
    dtype = _DTYPES.get(dtype_name)
    if dtype is None:
        raise file_error(
            f"cannot load SAE from {str(folder)!r}", f"unknown dtype {dtype_name!r}; use one of {sorted(set(_DTYPES))}"
        )

    state = dict(state)
    if arch == "jumprelu" and "threshold" not in state and "log_threshold" in state:
        state["threshold"] = state.pop("log_threshold").exp()
    shapes = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    if arch == "jumprelu":
        shapes["threshold"] = (d_sae,)
    absent = [k for k in shapes if k not in state]
    if absent:
        raise file_error(
            f"cannot load SAE from {str(folder)!r}",
            f"{WEIGHTS_FILE} lacks tensor(s) {absent} (it has {sorted(state)}); "
            f"a {arch} SAE needs {list(shapes)}. Re-save the SAE or check that "
            "the file belongs to this config",
        )
    for k, shape in shapes.items():
        _check_weight(
            folder, k, tuple(state[k].shape), state[k].is_floating_point(), state[k].dtype, shape, d_in, d_sae
        )
        check_finite(state[k], f"cannot load SAE from {str(folder)!r}: tensor {k!r}", FileFormatError)

    meta = _metadata(cfg)
    hook_out = cfg.get("hook_name_out") or meta.get("hook_name_out")
    transcoder = "transcoder" in str(arch_raw).lower() or hook_out
    if transcoder and not isinstance(hook_out, str):
        raise file_error(
            f"cannot load SAE from {str(folder)!r}",
            f"a transcoder config needs hook_name_out (where it writes), got {hook_out!r}",
        )
    if transcoder and cfg.get("d_out", d_in) != d_in:
        raise file_error(
            f"cannot load SAE from {str(folder)!r}",
            f"transcoder d_out={cfg.get('d_out')} differs from d_in={d_in}; only transcoders "
            "from the MLP input to the MLP output (both d_model wide) are supported",
        )
    sae = SAE(
        d_in,
        d_sae,
        hook,
        architecture=arch,
        apply_b_dec_to_input=False if transcoder else bool(cfg.get("apply_b_dec_to_input", True)),
        dtype=dtype,
        device="cpu",
        cfg=cfg,
        hook_name_out=hook_out if transcoder else None,
    )
    with torch.no_grad():
        for k in shapes:
            getattr(sae, k).copy_(state[k].to(dtype))
    if device is not None:
        sae = sae.to(device)
    return sae.eval()


def _check_weight(
    folder: Path, k: str, shape: tuple, is_float: bool, dtype: Any, want: tuple, d_in: int, d_sae: int
) -> None:
    """One weight's shape and dtype against the config (from a tensor, or from a file's header)."""
    if shape != want:
        raise file_error(
            f"cannot load SAE from {str(folder)!r}",
            f"tensor {k!r} has shape {shape} but cfg.json (d_in={d_in}, d_sae={d_sae}) implies {want}; "
            "the config and weights do not match",
        )
    if not is_float:
        raise file_error(f"cannot load SAE from {str(folder)!r}", f"tensor {k!r} has non-float dtype {dtype}")


def _check_header(folder: Path, cfg: dict, info: dict[str, tuple[str, list[int]]]) -> None:
    """The weights' shapes and dtypes, from the file's header, before anything is loaded."""
    d_in, d_sae = cfg["d_in"], cfg["d_sae"]
    want = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    want |= {"threshold": (d_sae,), "log_threshold": (d_sae,)}
    for k, shape in want.items():
        if k in info:
            dtype, got = info[k]
            _check_weight(folder, k, tuple(got), dtype in FLOAT_DTYPES, dtype, shape, d_in, d_sae)


def load_sae(folder: str | Path, device: str | torch.device | None = None) -> SAE:
    """Read an SAE from a SAELens-format folder (``cfg.json`` + ``sae_weights.safetensors``).

    SAELens itself is not needed.  ``device`` defaults to CPU (the ``device`` key of the config is
    ignored: it records where the SAE was trained)."""
    folder = Path(folder)
    cfg_path, w_path = folder / CFG_FILE, folder / WEIGHTS_FILE
    where = f"cannot load SAE from {str(folder)!r}"
    if not folder.is_dir():
        check_file(folder)  # a symlink loop or a file says so; a missing folder is MissingFileError
        raise file_error(where, f"it is not a folder; an SAE folder holds {CFG_FILE} and {WEIGHTS_FILE}")
    for f in (cfg_path, w_path):
        check_file(f, missing=f"an SAE folder (SAELens format) holds {CFG_FILE} and {WEIGHTS_FILE}")
    cfg = read_json(cfg_path)
    if isinstance(cfg, dict) and isinstance(cfg.get("d_in"), int) and isinstance(cfg.get("d_sae"), int):
        schema.validate(cfg, SAE_CONFIG, f"{where}: {CFG_FILE}")  # (a malformed config: sae_from_config says what)
        meta, info = read_header(w_path)
        check_binding(w_path, meta, Binding.from_doc(cfg, cfg_path, FileFormatError), cfg_path.name, FileFormatError)
        _check_header(folder, cfg, info)
    try:
        state = load_file(str(w_path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise file_error(where, f"{WEIGHTS_FILE} is corrupted or truncated ({e}); re-save or re-download it") from e
    return sae_from_config(cfg, state, where=str(folder), device=device)


def save_sae(sae: SAE, folder: str | Path) -> Path:
    """Write ``sae`` to ``folder`` in the SAELens format, each file atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = ["W_enc", "b_enc", "W_dec", "b_dec"] + (["threshold"] if sae.threshold is not None else [])
    state = {k: getattr(sae, k).detach().cpu().contiguous() for k in names}
    doc = sae.config_dict()

    def write_cfg(tmp: Path) -> None:
        tmp.write_text(json.dumps(doc, indent=1, default=_json_default) + "\n")

    binding = write_tensors(folder / WEIGHTS_FILE, state, {"format": "pt"})  # weights first, then the config
    doc.update(binding.to_json())
    atomic_write(folder / CFG_FILE, write_cfg)
    return folder


def _json_default(o: Any):
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, (torch.dtype, torch.device, Path)):
        return str(o)
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    raise TypeError(f"cannot write {type(o).__name__} to cfg.json")


# ---------------------------------------------------------------------------------------------
# SAELens objects
# ---------------------------------------------------------------------------------------------


def _cfg_to_dict(cfg: Any) -> dict:
    if cfg is None:
        return {}
    if isinstance(cfg, dict):
        return dict(cfg)
    for meth in ("to_dict", "model_dump"):
        if callable(getattr(cfg, meth, None)):
            out = getattr(cfg, meth)()
            if isinstance(out, dict):
                return dict(out)
    out = {}
    for k in (
        "architecture",
        "d_in",
        "d_sae",
        "dtype",
        "hook_name",
        "hook_point",
        "hook_head_index",
        "apply_b_dec_to_input",
        "normalize_activations",
        "activation_fn_str",
        "activation_fn",
        "metadata",
    ):
        if hasattr(cfg, k):
            v = getattr(cfg, k)
            if k == "metadata" and not isinstance(v, dict):
                v = {m: getattr(v, m) for m in ("hook_name", "hook_head_index") if hasattr(v, m)}
            out[k] = v() if k == "architecture" and callable(v) else v
    return out


def from_sae_lens(obj: Any, device: str | torch.device | None = None) -> SAE:
    """Convert a ``sae_lens`` SAE object (or anything with the same attributes: ``cfg`` plus
    tensors ``W_enc``, ``b_enc``, ``W_dec``, ``b_dec`` and optionally ``threshold``) into an
    :class:`SAE`.  SAELens is not imported; the object is read by attribute."""
    cfg = _cfg_to_dict(getattr(obj, "cfg", None))
    if callable(getattr(obj, "architecture", None)) and "architecture" not in cfg:
        cfg["architecture"] = obj.architecture()
    if "dtype" in cfg:
        cfg["dtype"] = str(cfg["dtype"]).replace("torch.", "")
    state = {}
    for k in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold", "log_threshold", "scaling_factor"):
        v = getattr(obj, k, None)
        if isinstance(v, torch.Tensor):
            state[k] = v.detach().cpu()
    if "d_in" not in cfg and "W_enc" in state:
        cfg["d_in"] = int(state["W_enc"].shape[0])
    if "d_sae" not in cfg and "W_enc" in state:
        cfg["d_sae"] = int(state["W_enc"].shape[1])
    return sae_from_config(cfg, state, where=f"<{type(obj).__name__} object>", device=device)


def as_sae_list(saes) -> list[SAE]:
    if isinstance(saes, SAE):
        return [saes]
    if isinstance(saes, dict):
        out = []
        for key, sae in saes.items():
            if isinstance(sae, SAE) and key != sae.hook_name:
                raise GraphError(
                    f"splice got SAE under key {key!r} but its hook_name is "
                    f"{sae.hook_name!r}; key the dict by hook_name or pass a list"
                )
            out.append(sae)
        saes = out
    saes = list(saes)
    for s in saes:
        if not isinstance(s, SAE):
            raise TypeError(
                f"splice expects circuitgraph.sae.SAE objects, got {type(s).__name__}"
                "; convert SAELens SAEs with circuitgraph.sae.from_sae_lens"
            )
        s.check_finite()
    return saes


def is_z_hook(name: str) -> bool:
    """Per-head attention activations ``[batch, pos, head, d_head]``, which an SAE reads with the
    heads flattened (``[batch, pos, head * d_head]``, as SAELens does for ``hook_z``)."""
    return name.split(".")[-1] in ("hook_z", "hook_q", "hook_k", "hook_v")


def _width_from_cfg(cfg, name: str) -> int | None:
    """The activation width at hook ``name`` read off the model config, or None if unknown."""
    leaf = name.split(".")[-1]
    if leaf in (
        "hook_resid_pre",
        "hook_resid_mid",
        "hook_resid_post",
        "hook_attn_out",
        "hook_mlp_out",
        "hook_mlp_in",
        "hook_embed",
        "hook_pos_embed",
        "hook_normalized",
    ):
        return cfg.d_model
    if leaf in ("hook_z", "hook_q"):
        return cfg.n_heads * cfg.d_head
    if leaf in ("hook_k", "hook_v"):
        return (getattr(cfg, "n_key_value_heads", None) or cfg.n_heads) * cfg.d_head
    if leaf in ("hook_pre", "hook_post", "hook_pre_linear") and ".mlp." in f".{name}":
        return getattr(cfg, "d_mlp", None)
    return None


@torch.no_grad()
def site_width(model, hook_names: Iterable[str]) -> dict[str, int]:
    """The flattened activation width at each hook point (``hook_z``/``q``/``k``/``v`` count
    heads x d_head).

    Read off the model config for the usual hook points; others are measured by a one-token
    forward pass (which also runs any hooks already on the model)."""
    names = set(hook_names)
    widths: dict[str, int] = {}
    for n in names:
        w = _width_from_cfg(model.cfg, n)
        if w is not None:
            widths[n] = int(w)
    probe = names - set(widths)
    if not probe:
        return widths

    def grab(x, hook):
        widths[hook.name] = (
            int(x.shape[-2] * x.shape[-1]) if is_z_hook(hook.name) and x.dim() == 4 else int(x.shape[-1])
        )
        return x

    backend = as_backend(model)
    tokens = torch.zeros((1, 1), dtype=torch.long, device=backend.device)
    with backend.hooks(fwd_hooks=[(n, grab) for n in probe]):
        model(tokens, return_type=None)
    return widths


def validate(model, saes: list[SAE]) -> None:
    """Check hook names exist, no site has two SAEs, and each SAE's d_in matches its site."""
    backend = as_backend(model)
    valid = backend.hook_names()
    seen: dict[str, SAE] = {}
    for sae in saes:
        if not backend.has_hook(sae.hook_name):
            close = [n for n in valid if n.split(".")[-1] == sae.hook_name.split(".")[-1]]
            examples = (close or valid)[:6]
            raise GraphError(
                f"SAE hook_name {sae.hook_name!r} is not a hook point of this model; valid hook "
                f"names include {examples} ({len(valid)} in all, see model.hook_dict)"
            )
        if sae.hook_name_out is not None and not backend.has_hook(sae.hook_name_out):
            raise GraphError(f"transcoder output hook {sae.hook_name_out!r} is not a hook point of this model")
        if sae.hook_name in seen:
            raise GraphError(
                f"two SAEs are spliced at the same hook point {sae.hook_name!r}; splice at most one SAE per site"
            )
        seen[sae.hook_name] = sae
    widths = site_width(model, seen)
    for name, sae in seen.items():
        if widths.get(name) != sae.d_in:
            raise ValueError(
                f"SAE for {name!r} has d_in={sae.d_in} but the model's activation there has width "
                f"{widths.get(name)}; the SAE was trained on a different model or hook point"
            )

"""Splice SAEs into a HookedTransformer.

At each SAE's hook point the activation ``x`` is rewritten as ``recon(x) + error`` with
``error = x - recon(x)``::

    with splice(model, [sae_a, sae_b]) as sp:
        logits = model(tokens)              # unchanged (up to float rounding): error is kept
    sp.acts["blocks.1.hook_resid_pre"]      # feature activations [batch, pos, d_sae]
    sp.errors["blocks.1.hook_resid_pre"]    # x - recon(x)         [batch, pos, d_in]

With ``keep_error=False`` the error term is dropped, so the model runs on the SAEs'
reconstructions alone.

Each SAE carries TransformerLens-style hook points that the splice calls on the way through:
``sae.hook_sae_input`` (x), ``sae.hook_sae_error`` (the error term, always ``x - recon(x)`` of the
unedited features), ``sae.hook_sae_acts`` (feature activations) and ``sae.hook_sae_recon``
(reconstruction, decoded from the possibly edited features).  Adding a hook to one of them
(``sae.hook_sae_acts.add_hook(fn)``) reads or edits the features / error inside the spliced model
-- e.g. to ablate a feature, or to patch the error term from another run.

``splice`` adds its hooks to the model's hook points on entry and removes exactly those on exit
(other hooks on the model are left alone).  ``splice_hooks`` returns the same hooks as a
``[(hook_name, fn)]`` list for ``model.run_with_hooks`` / ``model.hooks``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from circuitgraph.models.sae import SAE, as_sae_list, is_z_hook, validate

if TYPE_CHECKING:
    from transformer_lens.hook_points import HookPoint

__all__ = ["Splice", "splice", "splice_hooks"]


def _ensure_sae_hooks(sae: SAE) -> None:
    """Give ``sae`` its hook points (idempotent; they are plain HookPoint modules)."""
    from transformer_lens.hook_points import HookPoint  # heavy (seconds): only when a splice is built

    for name in ("hook_sae_input", "hook_sae_acts", "hook_sae_recon", "hook_sae_error"):
        if not isinstance(getattr(sae, name, None), HookPoint):
            hp = HookPoint()
            hp.name = f"{sae.hook_name}.{name}"
            sae.add_module(name, hp)


class Splice:
    """Hooks that splice SAEs into a model; a context manager (see the module docstring).

    Attributes after a forward pass (last pass only, keyed by hook name): ``acts`` (feature
    activations), ``errors`` (``x - recon``), ``recons``.  ``store=False`` keeps nothing."""

    def __init__(self, model, saes, keep_error: bool = True, store: bool = True, check: bool = True):
        self.model = model
        self.saes = as_sae_list(saes)
        self.keep_error = bool(keep_error)
        self.store = store
        if check:
            validate(model, self.saes)
        self.acts: dict[str, torch.Tensor] = {}
        self.errors: dict[str, torch.Tensor] = {}
        self.recons: dict[str, torch.Tensor] = {}
        self.fwd_hooks = [
            h
            for sae in self.saes
            for h in (self._transcoder_hooks(sae) if sae.hook_name_out else [(sae.hook_name, self._make_hook(sae))])
        ]
        self._added: list[tuple[HookPoint, object]] = []

    def _make_hook(self, sae: SAE):
        _ensure_sae_hooks(sae)
        keep_error = self.keep_error

        def hook(x: torch.Tensor, hook=None) -> torch.Tensor:
            shape = x.shape
            flat = x.reshape(*shape[:-2], shape[-2] * shape[-1]) if (is_z_hook(sae.hook_name) and x.dim() == 4) else x
            flat = sae.hook_sae_input(flat)
            raw_acts = sae.encode(flat)
            raw_recon = sae.decode(raw_acts)
            # the error is always x - recon(x) of the unedited features, so an edit made through
            # hook_sae_acts / hook_sae_recon changes the output even when the error is kept
            error = sae.hook_sae_error(sae.error(flat, recon=raw_recon))
            acts = sae.hook_sae_acts(raw_acts)
            recon = raw_recon if acts is raw_acts else sae.decode(acts)
            recon = sae.hook_sae_recon(recon)
            out = recon + error if keep_error else recon
            if self.store:
                self.acts[sae.hook_name] = acts
                self.errors[sae.hook_name] = error
                self.recons[sae.hook_name] = recon
            return out.reshape(shape).to(x.dtype)

        return hook

    def _transcoder_hooks(self, sae: SAE) -> list:
        """A transcoder reads ``hook_name`` and replaces ``hook_name_out`` (the MLP's output) by its
        reconstruction plus the error ``out − recon``."""
        _ensure_sae_hooks(sae)
        seen: dict = {}

        def read(x, hook):
            seen["x"] = x
            return x

        def write(out, hook):
            if "x" not in seen:
                raise RuntimeError(
                    f"transcoder input {sae.hook_name} did not fire before {sae.hook_name_out}; "
                    "hook_mlp_in fires only with model.set_use_hook_mlp_in(True)"
                )
            flat = sae.hook_sae_input(seen.pop("x"))
            raw_acts = sae.encode(flat)
            raw_recon = sae.decode(raw_acts)
            error = sae.hook_sae_error(sae.error(flat, target=out, recon=raw_recon))
            acts = sae.hook_sae_acts(raw_acts)
            recon = sae.hook_sae_recon(raw_recon if acts is raw_acts else sae.decode(acts))
            if self.store:
                self.acts[sae.hook_name], self.errors[sae.hook_name], self.recons[sae.hook_name] = acts, error, recon
            return (recon + error if self.keep_error else recon).to(out.dtype)

        return [(sae.hook_name, read), (sae.hook_name_out, write)]

    def __enter__(self) -> Splice:
        for name, fn in self.fwd_hooks:
            hp = self.model.hook_dict[name]  # (a Splice edits TransformerLens hook points in place)
            hp.add_hook(fn, dir="fwd")
            self._added.append((hp, fn))
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove this splice's hooks from the model (and only those)."""
        for hp, fn in self._added:
            keep = []
            for handle in hp.fwd_hooks:
                if getattr(handle, "user_hook", None) is fn:
                    handle.hook.remove()
                else:
                    keep.append(handle)
            hp.fwd_hooks = keep
        self._added.clear()


def splice(model, saes, keep_error: bool = True, store: bool = True) -> Splice:
    """Splice ``saes`` (one SAE, a list, or a ``{hook_name: SAE}`` dict) into ``model``.

    Use as a context manager.  Raises ValueError for a hook name the model lacks, two SAEs on one
    hook point, or an SAE whose ``d_in`` differs from the activation width at its hook."""
    return Splice(model, saes, keep_error=keep_error, store=store)


def splice_hooks(model, saes, keep_error: bool = True) -> list[tuple[str, object]]:
    """The splice as a ``[(hook_name, fn)]`` list for ``model.run_with_hooks(..., fwd_hooks=)``.
    The per-site activations are not kept; use :func:`splice` to read them."""
    return Splice(model, saes, keep_error=keep_error, store=False).fwd_hooks

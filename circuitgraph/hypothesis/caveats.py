"""Caveats on reading causal-scrubbing results next to a circuit's faithfulness.

Plain rules on plain values, so every caller reports the same caveat in the same words."""

from __future__ import annotations

# A scrubbing recovery this far below the circuit's faithfulness is worth a warning.
LARGE_SCRUBBING_GAP = 0.3

UNSUPPORTED_GRAPH = (
    "causal-scrubbing hypotheses cover heads and MLPs so far; this graph has neuron, position or SAE nodes"
)
UNSUPPORTED_POST_NORMS = (
    "causal scrubbing builds each input as a sum of source activations, but with norms after sublayers "
    "(Gemma-2/3) a layer's heads reach the residual stream only through their layer's post-norm, together; "
    "scrubbing such models is not supported yet (attribution, patching and faithfulness are)"
)


def hypothesis_unsupported(*, neurons: bool, positions: bool, features: bool, post_norms: bool = False) -> str | None:
    """Why a circuit of this graph cannot be scrubbed as a hypothesis; None when it can."""
    if post_norms:
        return UNSUPPORTED_POST_NORMS
    return UNSUPPORTED_GRAPH if (neurons or positions or features) else None


def scrubbing_caveat(ablation: str, loss_recovered: float | None) -> str | None:
    """The caveat to print beside a circuit's scrubbing result; None when there is none.

    Scrubbing resamples uncovered edges from other prompts. A circuit selected under another
    ablation can legitimately recover much less under scrubbing than its faithfulness says, and
    the reader should know that before calling the circuit wrong."""
    if loss_recovered is None or ablation == "resample":
        return None
    return (
        "causal scrubbing computes uncovered edges on random other prompts (resampling), while this "
        f"circuit was selected under {ablation} ablation: edges that carry no clean/ablated "
        "difference there (e.g. a query token the corrupted prompt shares) are left out, so the circuit "
        "can recover much less under scrubbing than its faithfulness; ablation=resample selects a "
        "circuit meant to pass scrubbing"
    )


def large_scrubbing_gap(faithfulness: float, loss_recovered: float) -> bool:
    """Whether scrubbing recovers so much less than the faithfulness that it deserves a warning."""
    return faithfulness - loss_recovered > LARGE_SCRUBBING_GAP

#!/usr/bin/env python
"""Train the SAEs shipped with the zoo's induction model.

Run from the repository root::

    .venv/bin/python scripts/sae/train_sae.py                 # both sites
    .venv/bin/python scripts/sae/train_sae.py --sites blocks.1.hook_resid_pre

For each site it collects the model's activations on sequences from the model's own training
distribution (the generator of scripts/zoo/train_induction.py), trains a ReLU SAE with an L1
penalty (weighted by decoder-row norms, decoder rows renormalised to unit length after each step),
measures it on held-out sequences and writes
``circuitgraph/zoo/data/induction/saes/<site>/{cfg.json,sae_weights.safetensors}`` (SAELens
format).  The figures go into cfg.json under ``"training"`` and ``"evaluation"``:

* fraction of variance explained: 1 - sum ||x - recon||^2 / sum ||x - mean(x)||^2;
* mean L0 (active features per token) and the fraction of dead features (never active on the
  held-out activations);
* the induction task's mean logit difference / accuracy, and next-token accuracy on held-out
  sequences, with the SAE spliced in WITHOUT its error term (the model runs on the
  reconstruction alone), next to the clean model's figures.

Everything is seeded and single-threaded: the same torch build gives the same files.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from circuitgraph import zoo  # noqa: E402
from circuitgraph.sae import SAE, save_sae, splice  # noqa: E402

OUT_ROOT = REPO / "circuitgraph" / "zoo" / "data" / "induction" / "saes"
DEFAULT_SITES = ["blocks.1.hook_resid_pre", "blocks.0.hook_attn_out"]


def _induction_data():
    """The induction model's data generator (``make_batch``), imported from its training script."""
    path = REPO / "scripts" / "zoo" / "train_induction.py"
    spec = importlib.util.spec_from_file_location("_train_induction", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@torch.no_grad()
def collect(model, make_batch, site: str, seed: int, n_seq: int, chunk: int = 512) -> torch.Tensor:
    """Activations ``[n_seq * n_ctx, d]`` at ``site`` (every position, BOS included, since the
    splice rewrites every position)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, n_seq, chunk):
        b = make_batch(gen, min(chunk, n_seq - start))
        _, cache = model.run_with_cache(b["tokens"], names_filter=site)
        out.append(cache[site].reshape(-1, cache[site].shape[-1]).clone())
    return torch.cat(out)


def train_sae(acts: torch.Tensor, site: str, d_sae: int, steps: int, batch: int, lr: float,
              l1: float, seed: int, log_every: int = 500) -> tuple[SAE, dict]:
    torch.manual_seed(seed)
    d_in = acts.shape[1]
    mean = acts.mean(0)
    scale = float((acts - mean).pow(2).sum(1).mean().sqrt())  # RMS distance from the mean
    sae = SAE(d_in, d_sae, site, apply_b_dec_to_input=True)
    with torch.no_grad():
        w = torch.randn(d_sae, d_in)
        w = w / w.norm(dim=1, keepdim=True)
        sae.W_dec.copy_(w)
        sae.W_enc.copy_(w.T * (0.1 * d_in**0.5 / scale))
        sae.b_dec.copy_(mean)
        sae.b_enc.zero_()
    opt = torch.optim.Adam(sae.parameters(), lr=lr, betas=(0.9, 0.999))
    gen = torch.Generator().manual_seed(seed + 1)
    warm = steps // 10  # L1 coefficient ramps up over the first 10% of steps
    t0 = time.time()
    log = []
    for step in range(steps):
        x = acts[torch.randint(0, acts.shape[0], (batch,), generator=gen)]
        f = sae.encode(x)
        r = sae.decode(f)
        mse = (r - x).pow(2).sum(1).mean() / scale**2
        sparsity = (f * sae.W_dec.norm(dim=1)).sum(1).mean() / scale
        coef = l1 * min(1.0, (step + 1) / max(1, warm))
        loss = mse + coef * sparsity
        opt.zero_grad(set_to_none=True)
        loss.backward()
        # keep decoder rows unit-norm: remove the gradient component along each row, then renormalise
        with torch.no_grad():
            g = sae.W_dec.grad
            g -= (g * sae.W_dec).sum(1, keepdim=True) * sae.W_dec
        opt.step()
        with torch.no_grad():
            sae.W_dec.div_(sae.W_dec.norm(dim=1, keepdim=True).clamp(min=1e-8))
        if step % log_every == 0 or step == steps - 1:
            l0 = float((f > 0).float().sum(1).mean())
            log.append({"step": step, "nmse": round(float(mse.detach()), 5), "l0": round(l0, 2)})
            print(f"  step {step:5d}  nmse {float(mse.detach()):.4f}  l0 {l0:6.2f}  "
                  f"({time.time() - t0:.1f}s)", flush=True)
    sae.eval()
    return sae, {"seconds": round(time.time() - t0, 1), "log": log, "data_scale": round(scale, 5)}


@torch.no_grad()
def measure_sae(sae: SAE, acts: torch.Tensor) -> dict:
    f = sae.encode(acts)
    r = sae.decode(f)
    var = (acts - acts.mean(0)).pow(2).sum()
    fve = 1.0 - float((acts - r).pow(2).sum() / var)
    l0 = float((f > 0).float().sum(1).mean())
    dead = float(((f > 0).sum(0) == 0).float().mean())
    return {"variance_explained": round(fve, 4), "mean_l0": round(l0, 3),
            "dead_fraction": round(dead, 4), "n_activations": int(acts.shape[0])}


@torch.no_grad()
def task_metrics(entry, sae: SAE | None, data, seed: int, n_seq: int) -> dict:
    """Induction task logit difference / accuracy and held-out next-token accuracy, with ``sae``
    spliced in without its error term (or the clean model when ``sae`` is None)."""
    model = entry.model
    task = entry.task("induction")
    idx = torch.arange(task.clean.shape[0])

    def run(tokens):
        if sae is None:
            return model(tokens)
        with splice(model, [sae], keep_error=False, store=False):
            return model(tokens)

    logits = run(task.clean)[idx, task.read_positions]
    ld = logits[idx, task.answer] - logits[idx, task.wrong]
    acc = (logits.argmax(-1) == task.answer).float().mean()
    gen = torch.Generator().manual_seed(seed)
    b = data.make_batch(gen, n_seq)
    _, next_acc = data.masked_loss_acc(run(b["tokens"]), b["tokens"], b["mask"])
    return {"task_logit_diff": round(float(ld.mean()), 4), "task_accuracy": round(float(acc), 4),
            "heldout_next_token_accuracy": round(float(next_acc), 4)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--sites", nargs="+", default=DEFAULT_SITES)
    ap.add_argument("--expansion", type=int, default=8)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--l1", type=float, default=0.03)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-train-seq", type=int, default=4096)
    ap.add_argument("--n-eval-seq", type=int, default=1024)
    ap.add_argument("--out", type=Path, default=OUT_ROOT)
    args = ap.parse_args(argv)

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    data = _induction_data()
    entry = zoo.load("induction", device="cpu")
    clean = task_metrics(entry, None, data, seed=args.seed + 202, n_seq=args.n_eval_seq)
    print(f"clean model: {clean}")
    for site in args.sites:
        print(f"site {site}")
        train_acts = collect(entry.model, data.make_batch, site, seed=args.seed + 100,
                             n_seq=args.n_train_seq)
        eval_acts = collect(entry.model, data.make_batch, site, seed=args.seed + 101,
                            n_seq=args.n_eval_seq)
        d_sae = args.expansion * train_acts.shape[1]
        sae, info = train_sae(train_acts, site, d_sae, args.steps, args.batch, args.lr, args.l1,
                              args.seed)
        stats = measure_sae(sae, eval_acts)
        spliced = task_metrics(entry, sae, data, seed=args.seed + 202, n_seq=args.n_eval_seq)
        print(f"  eval: {stats}\n  SAE only (no error term): {spliced}")
        sae.cfg = {
            "model_name": "circuitgraph.zoo/induction",
            "model_class_name": "HookedTransformer",
            "context_size": entry.model.cfg.n_ctx,
            "prepend_bos": False,
            "expansion_factor": args.expansion,
            "l1_coefficient": args.l1,
            "training": {
                "script": "scripts/sae/train_sae.py",
                "steps": args.steps, "batch_size_tokens": args.batch, "lr": args.lr,
                "seed": args.seed, "train_sequences": args.n_train_seq,
                "optimizer": "Adam(betas=(0.9, 0.999)); L1 on acts * ||W_dec row|| with a "
                             "linear warm-up over 10% of steps; losses normalised by data_scale; "
                             "decoder rows kept unit-norm",
                "torch": torch.__version__, **info,
            },
            "evaluation": {
                "heldout_sequences": args.n_eval_seq, **stats,
                "clean_model": clean,
                "sae_only_no_error": spliced,
                "task_logit_diff_recovered": round(spliced["task_logit_diff"]
                                                   / clean["task_logit_diff"], 4),
            },
        }
        folder = save_sae(sae, args.out / site)
        print(f"  wrote {folder}")


if __name__ == "__main__":
    main()

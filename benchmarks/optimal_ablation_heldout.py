"""Optimal against mean ablation on the induction task, measured on examples the constants never saw.

The zoo's induction task has 64 examples, read at positions that differ between examples, so
optimal-ablation constants per position fitted on it can encode each example's answer (a lookup
table, not a smaller mechanism). This study draws fresh examples from the task's own generator
(``scripts/zoo/train_induction.py``'s ``make_task``): ``--fit`` of them to fit the constants (and
the mean), ``--held`` others to measure every circuit. With thousands of fitting examples a
constant cannot memorise answers.

Both ablations are per position. Mean ablation's smallest circuits are searched over every subset
of the twelve edges among the embedding, the previous-token head a0.h1, the induction head a1.h3
and the logits that keeps a1.h3→logits, plus every circuit one edge away from the mechanism's
five edges (one of them swapped for any other edge of the model, or any edge added). Each is
screened on ``--screen`` examples; per size, the best six by KL, by |f − 1| and by f are
re-measured on the held-out examples. Optimal ablation refits its constants for each circuit it
measures (Li & Janson's circuit objective, ``Ablation.fit_optimal(circuit=...)``): the five-edge
mechanism, each of its four-edge subsets, and mean ablation's smallest circuits within 10 % of the
model and at the tightest KL, where those are larger than five edges.

Faithfulness is read three ways: f ≥ 0.9 (one-sided), 0.9 ≤ f ≤ 1.1 (two-sided: the circuit's
logit difference within 10 % of the model's, as MIB's CMD scores distance from 1), and KL to the
full model ≤ ε.

``--zoo-halves`` runs the earlier check instead: on the zoo's own 64 examples, per-position
constants refitted for the five-edge circuit and each four-edge subset, on all examples and on the
first half, measured in-sample and on the other half (the memorisation the study above avoids).

Usage:
    python benchmarks/optimal_ablation_heldout.py [--write]
    python benchmarks/optimal_ablation_heldout.py --zoo-halves
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).with_name("RESULTS.md")
SECTION = "## Optimal against mean ablation, held out (issue 13)"
FIVE = ["input->a0.h1.v", "a0.h1->a1.h3.k", "input->a1.h3.q", "input->a1.h3.v", "a1.h3->logits"]
POOL = (
    [f"input->a0.h1.{x}" for x in "qkv"]
    + [f"input->a1.h3.{x}" for x in "qkv"]
    + [f"a0.h1->a1.h3.{x}" for x in "qkv"]
    + ["a0.h1->logits", "a1.h3->logits", "input->logits"]
)
KL_LEVELS = (0.1, 0.02, 0.01)


def induction_tasks(n_fit: int, n_screen: int, n_held: int) -> tuple:
    """Three disjointly seeded samples of the induction task (none is the zoo's seed, 2024)."""
    from circuitgraph.tasks.task import Task

    spec = importlib.util.spec_from_file_location("train_induction", REPO / "scripts/zoo/train_induction.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)

    def sample(seed: int, n: int) -> Task:
        d = gen.make_task(seed, n)
        return Task(
            clean=d["clean"],
            corrupted=d["corrupted"],
            answer=d["answer"],
            wrong=d["wrong"],
            read_positions=d["read"],
            metric="logit_diff",
            name="induction",
        )

    return sample(1001, n_fit), sample(2002, n_screen), sample(3003, n_held)


def candidates(graph) -> list[tuple[str, ...]]:
    """Pool subsets that keep a1.h3→logits, and every circuit one edge away from FIVE."""
    out = {tuple(sorted(c)) for k in range(13) for c in itertools.combinations(POOL, k) if "a1.h3->logits" in c}
    others = [e for e in graph.edge_names() if e not in FIVE]
    for e in others:
        out.add(tuple(sorted([*FIVE, e])))
        for drop in FIVE:
            out.add(tuple(sorted([x for x in FIVE if x != drop] + [e])))
    return sorted(out, key=lambda c: (len(c), c))


def measure(model, graph, task, ablation, circuits) -> dict:
    """Held-out figures of ``circuits``: logit difference m, faithfulness f, KL to the full model."""
    from circuitgraph.engine import CircuitEvaluator

    masks = torch.stack([graph.mask_from_edges(list(c)) for c in circuits])
    ends = torch.stack([graph.valid, torch.zeros_like(graph.valid)])
    ld = CircuitEvaluator(model, graph, task, ablation)
    kl = CircuitEvaluator(model, graph, task.with_metric("kl"), ablation)
    m_full, m_empty = (float(x) for x in ld(ends))
    m = ld(masks)
    return {"m_full": m_full, "m_empty": m_empty, "m": m, "f": (m - m_empty) / (m_full - m_empty), "kl": kl(masks)}


def smallest(circuits, fig, ok: torch.Tensor) -> tuple | None:
    """The smallest circuit meeting ``ok`` (lowest KL among ties): (size, f, KL, circuit)."""
    hits = [i for i in range(len(circuits)) if bool(ok[i])]
    if not hits:
        return None
    n = min(len(circuits[i]) for i in hits)
    i = min((i for i in hits if len(circuits[i]) == n), key=lambda i: float(fig["kl"][i]))
    return n, float(fig["f"][i]), float(fig["kl"][i]), circuits[i]


def readings(circuits, fig) -> dict[str, tuple | None]:
    f, kl = fig["f"], fig["kl"]
    out = {"f ≥ 0.9": smallest(circuits, fig, f >= 0.9), "0.9 ≤ f ≤ 1.1": smallest(circuits, fig, (f - 1).abs() <= 0.1)}
    for eps in KL_LEVELS:
        out[f"KL ≤ {eps}"] = smallest(circuits, fig, kl <= eps)
    return out


def zoo_halves() -> None:
    """Per-position constants refitted on the zoo's 64 examples: in-sample against held-out KL."""
    import circuitgraph as cg
    from circuitgraph import zoo
    from circuitgraph.engine import Ablation, CircuitEvaluator

    entry = zoo.load("induction", device="cpu")
    model, task = entry.model, entry.tasks["induction"]
    g = cg.Graph.from_model(model)
    half = task.n_examples // 2
    fit_t, held_t = task.select(slice(0, half)), task.select(slice(half, task.n_examples))
    mean = Ablation("mean").prepare(model, g, task)

    def kl(t, abl, m) -> float:
        return float(CircuitEvaluator(model, g, t.with_metric("kl"), abl)(m[None])[0])

    for edges in [FIVE] + [list(c) for c in itertools.combinations(FIVE, 4)]:
        m = g.mask_from_edges(edges)
        t0 = time.perf_counter()
        on_all = Ablation("optimal", fit_kind="empty", per_position=True).fit_optimal(model, g, task, circuit=m)
        on_half = Ablation("optimal", fit_kind="empty", per_position=True).fit_optimal(model, g, fit_t, circuit=m)
        missing = sorted(set(FIVE) - set(edges))
        print(
            f"{len(edges)} edges (without {missing or '-'}): KL mean {kl(task, mean, m):.3f} | per-position optimal, "
            f"refitted: all {kl(task, on_all, m):.3f}, fit half {kl(fit_t, on_half, m):.3f}, held out "
            f"{kl(held_t, on_half, m):.3f} ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )


def main() -> None:  # noqa: C901  (one study, printed as it goes)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fit", type=int, default=2048, help="examples the constants and the mean are fitted on")
    ap.add_argument("--screen", type=int, default=32, help="examples every candidate is screened on")
    ap.add_argument("--held", type=int, default=256, help="held-out examples every reported figure is measured on")
    ap.add_argument("--steps", type=int, default=1500, help="Adam steps of each optimal-ablation fit")
    ap.add_argument("--lr", type=float, default=0.001)
    ap.add_argument("--batch", type=int, default=64, help="examples per Adam step")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--write", action="store_true", help=f"write the tables into {RESULTS.name}")
    ap.add_argument("--zoo-halves", action="store_true", help="the earlier in-sample / held-out check on the zoo task")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.zoo_halves:
        torch.set_num_threads(1)  # as RESULTS.md's figures were measured (Adam's path moves with the threads)
        zoo_halves()
        return

    import circuitgraph as cg
    from circuitgraph import zoo
    from circuitgraph.engine import Ablation

    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    t_all = time.perf_counter()
    model = zoo.load("induction", device="cpu").model
    graph = cg.Graph.from_model(model)
    fit, screen, held = induction_tasks(args.fit, args.screen, args.held)
    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    # Mean ablation: screen every candidate, re-measure the best of each size held out.
    mean = Ablation("mean", reference=fit.clean)
    pool = candidates(graph)
    t0 = time.perf_counter()
    fig = measure(model, graph, screen, mean, pool)
    keep: set[int] = set()
    for n in {len(c) for c in pool}:
        idx = torch.tensor([i for i, c in enumerate(pool) if len(c) == n])
        for key in (fig["kl"][idx], (fig["f"][idx] - 1).abs(), -fig["f"][idx]):
            keep.update(idx[key.argsort()[:6]].tolist())
    kept = [pool[i] for i in sorted(keep)]
    mean_fig = measure(model, graph, held, mean, kept)
    t_mean = time.perf_counter() - t0
    print(f"mean: {len(pool)} candidates screened, {len(kept)} re-measured held out ({t_mean:.0f} s)", flush=True)

    # Optimal ablation: constants refitted for each circuit on the fitting examples.
    # (and mean ablation's smallest circuit within 10 % of the model, where it is larger than FIVE)
    oa_circuits = [tuple(FIVE)] + [tuple(c) for c in itertools.combinations(FIVE, 4)]
    mean_best = readings(kept, mean_fig)
    for hit in (mean_best["0.9 ≤ f ≤ 1.1"], mean_best[f"KL ≤ {min(KL_LEVELS)}"]):
        if hit is not None and len(hit[3]) > len(FIVE) and hit[3] not in oa_circuits:
            oa_circuits.append(hit[3])
    oa_rows = []
    for c in oa_circuits:
        t0 = time.perf_counter()
        circuit = graph.mask_from_edges(list(c))
        oa = Ablation("optimal", per_position=True, steps=args.steps, lr=args.lr, checks=10)
        oa.fit_optimal(model, graph, fit, examples_per_step=args.batch, circuit=circuit)
        held_fig = measure(model, graph, held, oa, [c])
        mean_c = measure(model, graph, held, mean, [c])
        row = {
            "circuit": c,
            "fit_kl": (oa.fit["loss_at_mean"], oa.fit["loss_fitted"]),
            "f": float(held_fig["f"][0]),
            "kl": float(held_fig["kl"][0]),
            "m_empty": held_fig["m_empty"],
            "mean_f": float(mean_c["f"][0]),
            "mean_kl": float(mean_c["kl"][0]),
            "s": time.perf_counter() - t0,
        }
        oa_rows.append(row)
        print(row, flush=True)
    oa_fig = {"f": torch.tensor([r["f"] for r in oa_rows]), "kl": torch.tensor([r["kl"] for r in oa_rows])}

    say(SECTION)
    say()
    say(
        f"Command: `python benchmarks/optimal_ablation_heldout.py --write` (settings: --fit {args.fit} --screen "
        f"{args.screen} --held {args.held} --steps {args.steps} --lr {args.lr} --batch {args.batch} --threads "
        f"{args.threads}), started {started}, {time.perf_counter() - t_all:.0f} s on the 2-core CPU VM. "
        f"Induction model, examples drawn fresh from the task's generator: {args.fit} to fit the mean and the "
        f"optimal constants, {args.screen} to screen, {args.held} held out; every figure below is held out. "
        f"Model on the held-out examples: logit difference {mean_fig['m_full']:.2f}; empty circuit "
        f"{mean_fig['m_empty']:.2f} under mean ablation."
    )
    say()
    larger = [r for r in oa_rows if len(r["circuit"]) > len(FIVE)]  # mean ablation's circuits, refitted
    also = "".join(f" and mean ablation's {len(r['circuit'])}-edge circuit" for r in larger)
    say(
        'Smallest circuit under each reading of "the same faithfulness" (mean ablation: '
        f"{len(pool)} candidates screened, {len(kept)} re-measured; optimal ablation: the mechanism's 5 edges, "
        f"its 4-edge subsets{also}, constants refitted per circuit):"
    )
    say()
    say("| reading | mean: edges (f, KL) | optimal, refitted per circuit: edges (f, KL) | smaller? |")
    say("|---|---|---|---|")
    oa_best = readings(oa_circuits, oa_fig)

    def cell(hit) -> str:
        return "none of those measured" if hit is None else f"{hit[0]} ({hit[1]:.3f}, {hit[2]:.4f})"

    for reading in mean_best:
        a, b = mean_best[reading], oa_best[reading]
        verdict = "—" if a is None or b is None else ("yes" if b[0] < a[0] else "no")
        say(f"| {reading} | {cell(a)} | {cell(b)} | {verdict} |")
    say()
    say("Mean ablation's smallest circuit per reading:")
    say()
    for reading, hit in mean_best.items():
        if hit is not None:
            say(f"- {reading}: {', '.join(hit[3])}")
    say()
    five, fours = oa_rows[0], [r for r in oa_rows if len(r["circuit"]) == len(FIVE) - 1]
    smaller = [k for k in mean_best if mean_best[k] and oa_best[k] and oa_best[k][0] < mean_best[k][0]]
    same = [k for k in mean_best if mean_best[k] and oa_best[k] and oa_best[k][0] == mean_best[k][0]]
    sizes = {k: f"{oa_best[k][0]} edges against {mean_best[k][0]}" for k in smaller}
    two_sided = mean_best["0.9 ≤ f ≤ 1.1"]
    extra = ", ".join(sorted(set(two_sided[3]) - set(FIVE))) if two_sided else "none found"
    say(
        f"What it shows. The mechanism's five edges carry the token information induction needs (the "
        f"previous token into a0.h1's value, a0.h1 into the induction head's key, the current token into its "
        f"query, the attended token into its value, the head into the logits); without any one of them no "
        f"constant restores the task (held-out f ≤ {max(r['f'] for r in fours):.3f} and KL ≥ "
        f"{min(r['kl'] for r in fours):.2f} for every 4-edge subset under refitted optimal constants; with "
        f"{args.fit} fitting examples the constants no longer memorise answers: their in-sample KL stays at "
        f"{min(r['fit_kl'][1] for r in fours):.2f}–{max(r['fit_kl'][1] for r in fours):.2f}). So the mechanism "
        f"cannot lose an edge under either ablation, and mean ablation's search found no 4-edge circuit "
        f"anywhere else. Mean-ablated, though, those five edges overshoot the "
        f"model (f = {five['mean_f']:.3f}, KL {five['mean_kl']:.4f}): the mean of the ablated heads is not "
        f"what they contribute on each example, and mean ablation needs more edges ({extra}) to come "
        f"within 10 % of the model. Optimal constants refitted for the five edges remove that distortion "
        f"(f = {five['f']:.3f}, KL {five['kl']:.4f} held out). Optimal ablation's circuit is smaller under "
        f"{'; '.join(f'{k} ({v})' for k, v in sizes.items()) or 'no reading'}, and the same size under "
        f"{', '.join(same) or 'no reading'}. (0.9 ≤ f ≤ 1.1 is the circuit matching the model within 10 %, "
        f"the two-sided reading that MIB's CMD scores.)"
    )
    for r in larger:
        say()
        say(
            f"The refitted constants overfit the fitting examples somewhat: the 5 edges' KL is "
            f"{five['fit_kl'][1]:.4f} in-sample and {five['kl']:.4f} held out; for mean ablation's "
            f"{len(r['circuit'])}-edge circuit it is {r['fit_kl'][1]:.4f} in-sample and {r['kl']:.4f} held out, "
            f"{'worse' if r['kl'] > r['mean_kl'] else 'better'} than mean ablation's {r['mean_kl']:.4f} there."
        )
    say()
    say(
        "Optimal ablation, constants refitted per circuit (in-sample KL on the fitting examples, at the mean → "
        "fitted; held-out figures; the same circuit under mean ablation):"
    )
    say()
    say("| circuit | in-sample KL: mean → fitted | held out: f | KL | m(∅) | mean ablation: f | KL | fit s |")
    say("|---|---|---|---|---|---|---|---|")
    for r in oa_rows:
        missing, added = sorted(set(FIVE) - set(r["circuit"])), sorted(set(r["circuit"]) - set(FIVE))
        name = f"without {missing[0]}" if missing else ("the mechanism's 5 edges" if not added else f"5 + {added[0]}")
        say(
            f"| {name} | {r['fit_kl'][0]:.4f} → {r['fit_kl'][1]:.4f} | {r['f']:.3f} | {r['kl']:.4f} | "
            f"{r['m_empty']:.2f} | {r['mean_f']:.3f} | {r['mean_kl']:.4f} | {r['s']:.0f} |"
        )
    if args.write:
        from accuracy import write_section

        write_section(RESULTS, "\n".join(lines) + "\n", heading=SECTION)
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

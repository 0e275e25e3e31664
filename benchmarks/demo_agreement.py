"""Does the default demo's faithfulness agree with its causal-scrubbing result? (issue 12)

Runs ``python -m circuitgraph`` (the induction demo, its default config) at seeds 0…n−1 and prints,
per seed, the circuit's size, its faithfulness, the scrubbing recovery, their difference, and the
precision and recall against the zoo's known circuit. Both figures are estimates from random
partners (resampling), so they move with the seed; the table shows by how much.

Usage:
    python benchmarks/demo_agreement.py [--seeds 10] [extra overrides, e.g. export.scrub_samples=null]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from circuitgraph.cli import main as cli


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("overrides", nargs="*", help="extra overrides for every run")
    a = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(a.seeds):
            out = Path(tmp) / str(seed)
            cli.main(
                [
                    f"hydra.run.dir={out}",
                    f"seed={seed}",
                    "progress=false",
                    "export.curve=false",
                    "export.png=false",
                    "export.html=false",
                    *a.overrides,
                ]
            )
            s = json.loads((out / "summary.json").read_text())
            f, r = s["faithfulness"], s["scrubbing"]["circuit"]["loss_recovered"]
            gt = s["ground_truth"]
            rows.append((seed, s["edges_kept"], f, r, abs(f - r), gt["precision"], gt["recall"]))
    print("\n| seed | edges | faithfulness | scrubbing | difference | precision | recall |")
    print("|---|---|---|---|---|---|---|")
    for seed, edges, f, r, d, prec, rec in rows:
        print(f"| {seed} | {edges} | {f:.3f} | {r:.3f} | {d:.3f} | {prec:.2f} | {rec:.2f} |")
    diffs = [r[4] for r in rows]
    print(
        f"\nmean difference {sum(diffs) / len(diffs):.3f}, max {max(diffs):.3f}, "
        f"within 0.05 at {sum(d <= 0.05 for d in diffs)} of {len(diffs)} seeds ({' '.join(a.overrides) or 'defaults'})"
    )


if __name__ == "__main__":
    main()

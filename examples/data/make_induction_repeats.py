#!/usr/bin/env python
"""Write ``induction_repeats.jsonl``: a custom induction task for the zoo's ``induction`` model,
as token ids (the model's vocabulary is 128 ids, 0 = BOS, 1..127 content tokens).

Each row is one clean/corrupted pair, read at the last token (``cg.load_task``'s default):

clean      BOS, a few distinct filler tokens, a segment S of random length p, then S[:j]
answer     S[j]: the token that followed the current token's previous occurrence
corrupted  the same, with the first occurrence of S replaced by fresh tokens (nothing to copy)
wrong      the fresh token in the answer's slot of the first occurrence

All prompts have the same length (token-id task files need that). Deterministic:

    python examples/data/make_induction_repeats.py [--n 32] [--length 24] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path


def rows(n: int, length: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        p = rng.randint(4, min(9, (length - 1) // 2))  # segment length
        j = rng.randint(2, p - 1)  # tokens of the second occurrence already seen
        filler = length - 1 - p - j
        toks = rng.sample(range(1, 128), filler + 2 * p)
        pre, seg, fresh = toks[:filler], toks[filler : filler + p], toks[filler + p :]
        clean = [0, *pre, *seg, *seg[:j]]
        corrupted = [0, *pre, *fresh, *seg[:j]]
        out.append({"clean": clean, "corrupted": corrupted, "answer": seg[j], "wrong": fresh[j]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--length", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).with_name("induction_repeats.jsonl")))
    a = ap.parse_args()
    with open(a.out, "w") as f:
        for r in rows(a.n, a.length, a.seed):
            f.write(json.dumps(r) + "\n")
    print(a.out)


if __name__ == "__main__":
    main()

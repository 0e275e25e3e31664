"""A circuit for people to read: the mechanism in one sentence, and the edges ranked.

Each edge says whether it *helps* or *hurts* the task, in words that mean the same under every
metric (a raw score is m(ablated) − m(clean), whose good sign flips between higher-is-better and
lower-is-better metrics; :func:`circuitgraph.tasks.metrics.helpfulness` fixes the sign), with the
raw score beside it. When the circuit carries a ground-truth comparison
(``circuit.figures["ground_truth"]``, from
:func:`circuitgraph.evaluation.compare_with_ground_truth`), each edge also says whether it is in
the known circuit. Used by ``Circuit.summary()``, ``Circuit._repr_html_`` and ``circuitgraph show``.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

from circuitgraph.graph.names import dst_node, parse
from circuitgraph.tasks.metrics import LOWER_IS_BETTER, helpfulness

SLOT_WORDS = {"q": ("query", "Q-composition"), "k": ("key", "K-composition"), "v": ("value", "V-composition")}
STRONG = 0.1  # an edge enters the sentence when its |score| is at least this fraction of the largest


@dataclass(frozen=True)
class EdgeRow:
    """One edge of a circuit as the tables show it."""

    rank: int
    src: str
    dst: str
    score: float  # raw: m(edge ablated) − m(clean), in the score metric
    helps: bool
    in_ground_truth: bool | None  # None: no ground truth to compare with

    @property
    def effect(self) -> str:
        return "helps" if self.helps else "hurts"

    @property
    def name(self) -> str:
        return f"{self.src}->{self.dst}"


def score_metric(circuit: Any) -> str | None:
    """The metric the circuit's scores are in (ACDC's tracked metric may differ from the task's)."""
    meta = circuit.metadata or {}
    raw = meta.get("attribution")
    attribution = raw if isinstance(raw, dict) else {}
    return attribution.get("metric") or meta.get("metric")


def in_ground_truth(src: str, dst: str, ground_truth: dict) -> bool:
    """Whether edge ``src->dst`` belongs to a ground truth given as a comparison dict (``level``,
    ``truth``): by name at edge level, with q/k/v merged at head level, and at node level when
    both ends are ground-truth components (or input / logits)."""
    truth, level = set(ground_truth.get("truth") or ()), ground_truth.get("level")
    if level == "edge":
        return f"{src}->{dst}" in truth
    if level == "head":
        return f"{src}->{dst_node(dst)}" in truth
    ends = (src, dst_node(dst))
    return all(n in truth or n in ("input", "logits") for n in ends)


def edge_rows(circuit: Any, top: int | None = None, ground_truth: dict | None = None) -> list[EdgeRow]:
    """The circuit's edges, highest |score| first (the ``top`` first, or all)."""
    gt = ground_truth if ground_truth is not None else (circuit.figures or {}).get("ground_truth")
    metric = score_metric(circuit)
    edges = circuit.edges()
    rows = []
    for rank, (s, d, score) in enumerate(edges[:top] if top else edges, start=1):
        member = in_ground_truth(s, d, gt) if gt else None
        rows.append(EdgeRow(rank, s, d, score, helpfulness(score, metric) > 0, member))
    return rows


def known_roles(circuit: Any, roles: dict[str, str] | None = None) -> dict[str, str]:
    """``roles`` if given, else the roles saved with the circuit (``metadata["roles"]``)."""
    saved = (circuit.metadata or {}).get("roles")
    return dict(roles if roles is not None else saved if isinstance(saved, dict) else {})


def _named(node: str, roles: dict[str, str] | None) -> str:
    base = node.partition("@")[0]
    role = (roles or {}).get(base)
    return f"{role} {node}" if role else node


def describe(circuit: Any, roles: dict[str, str] | None = None) -> str:
    """The circuit in words, from its strongest helping edges: head-to-head compositions first
    ("previous-token head a0.h1 → induction head a1.h3 via key (K-composition)"), then the nodes
    that write the answer. ``roles`` names known heads (``{"a0.h1": "previous-token head"}``;
    default: the roles saved in the circuit's metadata)."""
    roles = known_roles(circuit, roles)
    metric = score_metric(circuit)
    edges = circuit.edges()
    if not edges:
        return "an empty circuit"
    peak = max(abs(x) for *_, x in edges)
    strong = [(s, d) for s, d, x in edges if abs(x) >= STRONG * peak and helpfulness(x, metric) > 0]
    clauses = []
    for s, d in strong:
        src, dst = parse(s), parse(d)
        if src is not None and dst is not None and src.kind == "head" and dst.kind == "slot":
            word, comp = SLOT_WORDS[dst.slot or "q"]
            clauses.append(f"{_named(s, roles)} → {_named(dst.owner, roles)} via {word} ({comp})")
    writers = [s for s, d in strong if d.partition("@")[0] == "logits" and s.partition("@")[0] != "input"]
    clauses += [f"{_named(s, roles)} → logits" for s in writers[:3]]
    if not clauses:  # no composition and no component writing the answer: the strongest edges
        clauses = [f"{_named(s, roles)} → {_named(d, roles)}" for s, d, _ in edges[:3]]
    return "; ".join(clauses[:4])


def node_totals(circuit: Any) -> list[tuple[str, float]]:
    """Components by the summed |score| of their kept edges (q/k/v folded into the head)."""
    total: dict[str, float] = {}
    for s, d, x in circuit.edges():
        for n in (s, dst_node(d)):
            if n.partition("@")[0] not in ("input", "logits"):
                total[n] = total.get(n, 0.0) + abs(x)
    return sorted(total.items(), key=lambda kv: -kv[1])


def _header(circuit: Any, gt: dict | None) -> list[str]:
    meta = circuit.metadata or {}
    raw = meta.get("attribution")
    attribution = raw if isinstance(raw, dict) else {}
    ablation = (meta.get("ablation") or {}).get("kind") or (attribution.get("ablation") or {}).get("kind")
    what = " / ".join(str(x) for x in (meta.get("model"), meta.get("task")) if x)
    how = ", ".join(x for x in (attribution.get("method"), f"{ablation} ablation" if ablation else None) if x)
    f = circuit.faithfulness
    lines = [
        f"{what}{' · ' if what and how else ''}{how}: {circuit.n_edges} of {circuit.graph.n_edges} edges"
        + (f", faithfulness {f:.3f}" if f is not None else "")
    ]
    if gt:
        lines.append("vs ground truth: " + ground_truth_text(gt))
    return lines


def ground_truth_text(gt: dict) -> str:
    """``precision 1.00, recall 1.00, edge ROC AUC 1.000 (resample)`` for a comparison dict."""

    def num(key: str, digits: int) -> str:
        v = gt.get(key)
        return "–" if v is None else f"{v:.{digits}f}"

    name = gt.get("convention") or gt.get("ablation") or "?"
    other = "" if gt.get("matches_ablation", True) else f", found under {gt.get('ablation')} ablation"
    return (
        f"precision {num('precision', 2)}, recall {num('recall', 2)}, {gt.get('level', 'edge')} ROC AUC "
        f"{num('auc', 3)} ({gt.get('n_correct')} of {gt.get('n_truth')} known {gt.get('level', 'edge')}s found; "
        f"convention {name!r}{other})"
    )


def sign_note(metric: str | None) -> str:
    """What the raw score's sign means under ``metric``."""
    if metric is None:
        return "score = metric(edge ablated) − metric(clean)"
    good = "positive" if metric in LOWER_IS_BETTER else "negative"
    kind = "lower" if metric in LOWER_IS_BETTER else "higher"
    return f"score = {metric}(edge ablated) − {metric}(clean); {kind} {metric} is better, so {good} scores help"


def summary_text(
    circuit: Any, top: int | None = 20, roles: dict[str, str] | None = None, ground_truth: dict | None = None
) -> str:
    """The circuit as text: header, the sentence, the nodes and the ranked edge table."""
    gt = ground_truth if ground_truth is not None else (circuit.figures or {}).get("ground_truth")
    rows = edge_rows(circuit, top, gt)
    lines = [*_header(circuit, gt), f"in words: {describe(circuit, roles)}"]
    nodes = node_totals(circuit)
    if nodes:
        lines.append("nodes (Σ|score| of their edges): " + ", ".join(f"{n} {v:.3g}" for n, v in nodes[:12]))
    lines.append("")
    width = max([len("edge"), *(len(r.name) for r in rows)])
    head = f"{'rank':>4}  {'edge':<{width}}  {'score':>10}  {'effect':<6}"
    lines.append(head + ("  in ground truth" if gt else ""))
    for r in rows:
        line = f"{r.rank:>4}  {r.name:<{width}}  {r.score:>+10.4g}  {r.effect:<6}"
        if gt:
            line += "  " + ("yes" if r.in_ground_truth else "no")
        lines.append(line)
    if top and circuit.n_edges > top:
        lines.append(f"  … {circuit.n_edges - top} more edges")
    if gt and gt.get("missing"):
        lines.append(f"known but not found: {', '.join(gt['missing'])}")
    lines.append(sign_note(score_metric(circuit)))
    return "\n".join(lines)


def summary_html(circuit: Any, top: int | None = 20, roles: dict[str, str] | None = None) -> str:
    """The same as :func:`summary_text`, as an HTML fragment for notebooks."""
    gt = (circuit.figures or {}).get("ground_truth")
    rows = edge_rows(circuit, top, gt)
    e = html.escape
    head = "".join(f"<div>{e(line)}</div>" for line in _header(circuit, gt))
    words = f"<div><b>in words:</b> {e(describe(circuit, roles))}</div>"
    cols = ["rank", "edge", "score", "effect"] + (["in ground truth"] if gt else [])
    th = "".join(f"<th>{c}</th>" for c in cols)
    body = []
    for r in rows:
        cells = [str(r.rank), e(r.name), f"{r.score:+.4g}", r.effect] + (
            ["yes" if r.in_ground_truth else "no"] if gt else []
        )
        color = "#1a7f37" if r.helps else "#b42318"
        tds = "".join(f'<td style="color:{color}">{c}</td>' if i == 3 else f"<td>{c}</td>" for i, c in enumerate(cells))
        body.append(f"<tr>{tds}</tr>")
    more = f"<div>… {circuit.n_edges - top} more edges</div>" if top and circuit.n_edges > top else ""
    note = f"<div><small>{e(sign_note(score_metric(circuit)))}</small></div>"
    return f"<div>{head}{words}<table><tr>{th}</tr>{''.join(body)}</table>{more}{note}</div>"

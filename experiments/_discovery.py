"""The study's circuit discovery (issue #17): what each behavioral induction head's inputs read, as
``scrub.discover`` finds it, beside the edges the two-head mechanism names.

For each behavioral head and each dataset (natural text, RRT), discovery searches only the head's own inputs
(``receivers=[head]``; every other edge of the model is kept), scored by KL at the induction candidates
(positions whose token occurred earlier), EAP-IG-ordered and verified exactly with resampled counterfactuals
(``eap-ig+verify``). The mechanism's edges into the head are read off the study's mechanism graph: its token
embedding into Q and V, its previous-token head into K. Held out (the study's own batches, not the discovery
data): KL recovered by the discovered inputs and by the mechanism's, both against every input of the head
resampled with the rest of the model kept, so 0 is "the head reads nothing" and 1 "the head reads everything".
"""

from __future__ import annotations

from typing import Callable

import networkx as nx
from torch import Tensor
from transformer_lens import HookedTransformer

from hypotheses._build import Mechanism, mechanism_graph
from scrub.claims.structure import Structure
from scrub.data.batches import induction_candidates
from scrub.discovery import discover
from scrub.discovery.edges import Edge, all_edges, graph_of, runnable
from scrub.discovery.result import Method
from scrub.experiment.runner import run

THRESHOLD = 0.01  # τ: KL nats per scored token
METHOD: Method = "eap-ig+verify"
SHOWN = 8  # edges the mechanism does not name, largest first, in the report


def mechanism_edges(model: HookedTransformer, roles, head: str) -> tuple[str, ...]:
    """The mechanism's one-step edges into ``head`` as discovery names them (copies by their component)."""
    g = mechanism_graph(model, roles, Mechanism(), (head,))
    out = []
    for sender, _, data in g.in_edges(head, data=True):
        component = g.nodes[sender].get("component", sender)
        out += [f"{component} -> {head}:{c}" for c in data.get("via", "")]
    return tuple(sorted(set(out)))


def _graph(edges: list[Edge]) -> nx.DiGraph:
    return graph_of(runnable(edges))


def _recovered(model: HookedTransformer, claim: nx.DiGraph, baseline: nx.DiGraph, data: Tensor, seed: int,
               n_bootstrap: int) -> dict:
    r = run(model, claim, data, baseline=baseline, positions=induction_candidates, metric="kl", seed=seed,
            n_bootstrap=n_bootstrap, progress=False)
    return {"value": r.loss_recovered, "ci": [r.ci_low, r.ci_high], "n_examples": r.n_examples}


def discover_head(model: HookedTransformer, roles, head: str, found: Tensor, held: Tensor, data: str, *, seed: int,
                  n_bootstrap: int) -> dict:
    """One head on one dataset: the discovered edges into it, the mechanism's, and both held out (JSON-ready)."""
    d = discover(model, found, heldout=held, receivers=[head], metric="kl", positions=induction_candidates,
                 threshold=THRESHOLD, method=METHOD, seed=seed, draws=3, n_bootstrap=n_bootstrap, curve=False)
    named = set(mechanism_edges(model, roles, head))
    edges = all_edges(Structure.of(model))
    rest = [e for e in edges if str(e.receiver) != head]
    baseline = _graph(rest)  # every input of the head resampled, the rest kept
    mechanism = _graph(rest + [e for e in edges if str(e) in named])
    into = [r for r in d.edges if r.receiver == head]
    rows = [{"edge": r.edge, "score": r.score, "effect": r.effect, "ci": None if r.ci is None else list(r.ci),
             "verdict": r.verdict, "how": r.how, "mechanism": r.edge in named} for r in into]
    return {"head": head, "data": data, "mechanism": sorted(named), "edges": rows,
            "discovered": _recovered(model, d.graph, baseline, held, seed, n_bootstrap),
            "mechanism_recovered": _recovered(model, mechanism, baseline, held, seed, n_bootstrap),
            "passes": {"forward": d.passes.forward, "backward": d.passes.backward}, "skipped": d.skipped,
            "n_discover": int(found.shape[0])}


def run_discovery(model: HookedTransformer, roles, batches: dict[str, tuple[Tensor, Tensor]], *, seed: int,
                  n_bootstrap: int, step: Callable[[], None] | None = None) -> dict:
    """Every behavioral head on every dataset of ``batches`` (name -> (discovery data, held-out data))."""
    heads = []
    for head in roles.behavioral_receivers():
        for data, (found, held) in batches.items():
            heads.append(discover_head(model, roles, head, found, held, data, seed=seed, n_bootstrap=n_bootstrap))
            if step is not None:
                step()
    return {"method": METHOD, "metric": "kl", "threshold": THRESHOLD, "positions": "candidates", "heads": heads}


def _ci(ci) -> str:
    return "" if ci is None else f" [{ci[0]:+.3f}, {ci[1]:+.3f}]"


def _edge(r: dict) -> str:
    effect = "not checked singly" if r["effect"] is None else f"{r['effect']:+.3f}{_ci(r['ci'])}"
    return f"`{r['edge']}` {effect}"


def _kept(h: dict) -> tuple[list[dict], list[dict]]:
    """One head's kept edges, and those of them the mechanism does not name, largest |effect| first."""
    kept = [r for r in h["edges"] if r["verdict"] != "dropped"]
    return kept, sorted((r for r in kept if not r["mechanism"]), key=lambda r: -abs(r["effect"] or 0.0))


def discovery_lines(found: dict | None) -> list[str]:
    """The report's section: one paragraph and one table row per head and dataset."""
    if not found or not found.get("heads"):
        return ["(Not run: results written before the study had a discovery section.)"]
    L = [f"`scrub.discover(method='{found['method']}', metric='kl', receivers=[head], positions=candidates, "
         f"threshold={found['threshold']})` on data disjoint from the held-out batches: every edge into the head "
         "is scored by EAP-IG and verified exactly by the engine (resampled counterfactuals, 3 draws, a paired "
         "bootstrap interval per edge; an effect is the KL change when the greedy search removes the edge from "
         "the claim at hand). Held out: KL recovered against every input of the head resampled (the rest of "
         "the model kept).", "",
         "| head | data | edges into the head kept | the mechanism's edges | kept that the mechanism does not name "
         "(largest first) | held out: discovered | held out: mechanism |", "|---|---|---|---|---|---|---|"]
    for h in found["heads"]:
        kept, extra = _kept(h)
        mech = [r for r in h["edges"] if r["mechanism"]]
        mech_text = "; ".join(f"{_edge(r)} {r['verdict']}" for r in mech) or "none"
        more = f"; and {len(extra) - SHOWN} more" if len(extra) > SHOWN else ""
        extra_text = "; ".join(_edge(r) for r in extra[:SHOWN]) + more or "none"
        dis, mec = h["discovered"], h["mechanism_recovered"]
        L.append(f"| {h['head']} | {h['data']} | {len(kept)} of {len(h['edges'])} | {mech_text} | {extra_text} | "
                 f"{dis['value']:.3f}{_ci(dis['ci'])} | {mec['value']:.3f}{_ci(mec['ci'])} |")
    return L + [""]


def discovery_sentence(found: dict | None, data: str = "natural") -> str:
    """The cross-model report's sentence: which paths the behavioral heads read besides the mechanism."""
    heads = [h for h in (found or {}).get("heads", []) if h["data"] == data]
    if found is None or not heads:
        return ""
    parts = []
    for h in heads:
        kept, extra = _kept(h)
        named = ", ".join(f"`{r['edge']}` {r['effect']:+.3f}" for r in extra[:3] if r["effect"] is not None)
        parts.append(f"{h['head']} keeps {len(kept)} of {len(h['edges'])} input edges, {len(extra)} of them not the "
                     f"mechanism's ({named or 'none'}), held-out KL recovered {h['discovered']['value']:.2f} against "
                     f"the mechanism's {h['mechanism_recovered']['value']:.2f}")
    return (f"Circuit discovery of each behavioral head's inputs ({'natural text' if data == 'natural' else data}, "
            f"τ = {found['threshold']} nats, section 9 of the model's report) names them: " + "; ".join(parts) + ". ")


def discovery_cell(found: dict | None) -> str:
    """The side-by-side table's cell: per head and dataset, edges kept and held-out KL recovered."""
    heads = (found or {}).get("heads", [])
    return "; ".join(f"{h['head']} {h['data']}: {len(_kept(h)[0])}/{len(h['edges'])} kept, "
                     f"{h['discovered']['value']:.2f} vs {h['mechanism_recovered']['value']:.2f}"
                     for h in heads) or "—"

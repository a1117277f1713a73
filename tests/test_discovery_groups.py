"""Group removal with bisection in the greedy search (issue #17): a receiver's low-score edges are removed
in groups whose joint removal is checked exactly, bisected where a check fails. Fewer claims are evaluated
than deciding every edge alone, and every skipped edge was removed in a group whose joint removal's interval
lies inside [−τ, τ], against the claim it was removed from."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from scrub.claims.structure import Structure
from scrub.discovery import all_edges
from scrub.discovery.attribution import attribute
from scrub.discovery.edges import Edge
from scrub.discovery.exact import ExactEvaluator
from scrub.discovery.search import How, Interval, Search, Verdict, greedy, verdict
from scrub.discovery.setup import paired
from scrub.engine.compute import clean_run
from tests.helpers import random_tokens, tiny_model

TAU, SEED = 0.01, 0
SILENT = ((0, 1), (0, 3), (1, 0), (1, 2), (2, 1))


@dataclass
class Logged(ExactEvaluator):
    """An evaluator that keeps every claim it evaluated with its per-example sums."""

    log: dict[frozenset[Edge], Tensor] = field(default_factory=dict)

    def totals(self, claims):
        out = super().totals(claims)  # [k, n]
        self.log.update(zip(claims, out, strict=True))
        return out


def quiet_model():
    """Three layers of four heads; heads 0.1, 0.3, 1.0, 1.2 and 2.1 write nothing: most edges have effect 0."""
    model = tiny_model(dtype=torch.float64, scale=0.4, n_heads=4, n_layers=3)
    with torch.no_grad():
        for layer, head in SILENT:
            model.blocks[layer].attn.W_O[head] = 0
    return model


def search(skip: float) -> tuple[Search, Logged, list[Edge]]:
    model = quiet_model()
    tokens, corrupted = random_tokens(16, 8, seed=3), random_tokens(16, 8, seed=4)
    mask = torch.ones(16, 7, dtype=torch.bool)  # [n, seq-1]
    cf = paired(tokens, corrupted, Structure.of(model))
    clean = clean_run(model, cf.data)
    scores = attribute(model, cf, clean, mask, "kl", "eap-ig", steps=5).scores
    ev = Logged(model, cf, clean, mask, "kl")
    edges = list(all_edges(model))
    found = greedy(ev, edges, TAU, scores=scores, searched=lambda r: True, skip=skip, spot=0.1, seed=SEED)
    return found, ev, edges


def inside(ev: Logged, before: frozenset[Edge], after: frozenset[Edge]) -> bool:
    effect, low, high = Interval.of(ev.counts, 1000, SEED)((ev.log[after] - ev.log[before])[None])
    return verdict(float(low[0]), float(high[0]), TAU) == Verdict.DROPPED


def test_groups_evaluate_fewer_claims_and_every_skipped_edge_left_in_a_verified_group():
    grouped, ev, edges = search(skip=1.0)  # edges with |score| < τ start in their receiver's group
    alone, _, _ = search(skip=0.0)  # the same order, every edge decided alone
    assert grouped.trees < 0.75 * alone.trees
    how = {d.edge: d.how for d in grouped.decisions}
    skipped = [e for e, h in how.items() if h in (How.SKIPPED, How.SPOT)]
    assert len(skipped) == grouped.skipped > 0 and grouped.spot_checked > 0
    split = {e.receiver for e in skipped} & {e.receiver for e in grouped.kept}
    assert split  # receivers whose first group failed and was bisected, removing part of it
    # each skipped edge: some evaluated claim A and A − P (P its group, 2+ edges, all dropped for good) with the
    # joint removal's interval inside [−τ, τ]
    dropped = {d.edge for d in grouped.decisions if d.verdict == Verdict.DROPPED}
    pairs = [(a, b) for a in ev.log for b in ev.log if b < a and len(a - b) >= 2 and a - b <= dropped]
    for e in skipped:
        assert any(e in a - b and inside(ev, a, b) for a, b in pairs), e
    # every edge kept by the grouped search was kept on its own exact interval against the claim of its time
    for d in grouped.decisions:
        if d.verdict != Verdict.DROPPED:
            assert d.how == How.EXACT and d.ci is not None
            assert not any(a - b == {d.edge} and inside(ev, a, b) for a in ev.log for b in ev.log if b < a)
    assert not any(str(e.sender) in {f"{layer}.{head}" for layer, head in SILENT} for e in grouped.kept)
    assert len(edges) == len(grouped.decisions)

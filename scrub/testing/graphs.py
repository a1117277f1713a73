"""Edits of hypothesis graphs and claims that the properties compare: sub-graphs of the full graph, claims with
an input's query-key masks replaced or its claimed edges dropped, and pruning to what still reaches the logits."""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import networkx as nx
from transformer_lens import HookedTransformer

from scrub.claims.hypothesis import Claim, ClaimEdge, full_graph, validate
from scrub.claims.masks import QKMask
from scrub.claims.sites import Channel, Head

InputKey = tuple[str, Channel]  # (receiving node id, its input channel)


def as_claim(claim: Claim | nx.DiGraph, model: HookedTransformer) -> Claim:
    """A validated claim from a claim or a hypothesis graph."""
    return claim if isinstance(claim, Claim) else validate(claim, model)


def n_channel_edges(model: HookedTransformer) -> int:
    """How many (edge, channel) pairs the full graph has: the length of ``subgraph``'s ``keep``."""
    return sum(len(a.get("via") or "x") for _, _, a in full_graph(model).edges(data=True))


def subgraph(model: HookedTransformer, keep: list[bool]) -> nx.DiGraph:
    """The full graph restricted to the edges (channel by channel, in ``full_graph``'s order) where ``keep`` is
    True (missing flags: False), pruned to the nodes that still reach the logits."""
    g = nx.DiGraph()
    flags = iter(keep)
    for src, dst, attrs in full_graph(model).edges(data=True):
        via = attrs.get("via")
        if via is None:
            if next(flags, False):
                g.add_edge(src, dst)
        else:
            chosen = "".join(c for c in via if next(flags, False))
            if chosen:
                g.add_edge(src, dst, via=chosen)
    return prune_graph(g)


def prune_graph(g: nx.DiGraph) -> nx.DiGraph:
    """``g`` restricted to ``logits`` and the nodes with a path to it (the empty graph without ``logits``)."""
    if "logits" not in g:
        return nx.DiGraph()
    return g.subgraph(nx.ancestors(g, "logits") | {"logits"}).copy()


def prune(claim: Claim) -> Claim:
    """``claim`` without the nodes (and their edges) that no longer reach its root."""
    if claim.root is None:
        return claim
    keep, todo = {claim.root}, [claim.root]
    while todo:
        for e in claim.inputs_of(todo.pop()):
            if e.source not in keep:
                keep.add(e.source)
                todo.append(e.source)
    if len(keep) == 1:
        return replace(claim, nodes=(), edges=(), root=None)
    return replace(claim, nodes=tuple(n for n in claim.nodes if n.id in keep),
                   edges=tuple(e for e in claim.edges if e.source in keep and e.target in keep))


def head_inputs(claim: Claim) -> tuple[InputKey, ...]:
    """Every (head node, channel) with a claimed edge and no positions-restricted one (those take no mask)."""
    out: dict[InputKey, bool] = {}
    for e in claim.edges:
        if isinstance(claim.node(e.target).component, Head):
            key = (e.target, e.channel)
            out[key] = out.get(key, True) and e.positions is None
    return tuple(k for k, ok in out.items() if ok)


def has_mask(claim: Claim, into: InputKey) -> bool:
    """Whether an edge into ``into`` carries a query-key mask."""
    return any((e.target, e.channel) == into and e.qk_mask is not None for e in claim.edges)


def _edit(claim: Claim, into: InputKey, change: Callable[[ClaimEdge], ClaimEdge | None]) -> Claim:
    edges = []
    for e in claim.edges:
        new = change(e) if (e.target, e.channel) == into else e
        if new is not None:
            edges.append(new)
    return prune(replace(claim, edges=tuple(edges)))


def with_mask(claim: Claim, into: InputKey, mask: QKMask | None) -> Claim:
    """Every edge into ``into`` carrying ``mask`` (None: no mask)."""
    return _edit(claim, into, lambda e: replace(e, qk_mask=mask))


def without_masked(claim: Claim, into: InputKey) -> Claim:
    """The claim with the edges into ``into`` that carry a query-key mask dropped (their input resampled)."""
    return _edit(claim, into, lambda e: None if e.qk_mask is not None else e)


def without_inputs(claim: Claim, node_id: str) -> Claim:
    """The claim with every edge into ``node_id`` dropped: all its inputs read its unclaimed datum."""
    return prune(replace(claim, edges=tuple(e for e in claim.edges if e.target != node_id)))

"""Hypothesis graphs: how users write claims, how they are validated, and built-in graphs (files are loaded
by ``scrub.claims.files``).

A hypothesis is a ``networkx.DiGraph`` whose nodes are components (``embed``, ``pos``, ``"L.H"``,
``"mlp.L"``, ``logits``) and whose edges say "this component's output enters that one". An edge into a
head names the input(s) it enters with the edge attribute ``via`` (``"q"``, ``"k"``, ``"v"``, or several
at once: ``via="kv"`` or ``via=("k", "v")``); edges into MLPs and ``logits`` take no ``via``. Optional
attributes: node ``feature`` (a ``scrub.claims.features.Feature``), node ``component`` (to give one component
several graph nodes, i.e. claim it differently on different paths), edge ``positions`` (a function
tokens -> bool mask [batch, seq]: the receiver positions where the edge is claimed), edge ``qk_mask`` (a
``scrub.claims.masks.QKMask``, on edges into a head: the (query, key) pairs through which the head reads the
claimed input; through the other pairs that input is resampled). The claim is the set of input -> logits
paths of the graph. ``validate`` turns a graph into a frozen ``Claim`` or raises
``HypothesisError`` naming the file, the node or edge, and the fix.

The rules a graph must follow are in ``scrub.claims.validation``; the validated ``Claim`` is in
``scrub.claims.claim``. Both are re-exported here, the module users import from.
"""

from __future__ import annotations

import networkx as nx
from transformer_lens import HookedTransformer, HookedTransformerConfig

from scrub.claims.claim import CheckedPositions, Claim, ClaimEdge, ClaimNode, HypothesisError, PositionFn
from scrub.claims.sites import HEAD_CHANNELS, Head
from scrub.claims.structure import Structure
from scrub.claims.validation import _channels, check_on, check_paths, validate

__all__ = ["CheckedPositions", "Claim", "ClaimEdge", "ClaimNode", "HypothesisError", "PositionFn", "Step", "add_path",
           "check_on", "check_paths", "empty_graph", "full_graph", "validate"]


# --- writing graphs by hand ----------------------------------------------------------------------------

Step = str | tuple[str, str]


def add_path(graph: nx.DiGraph, *steps: Step) -> nx.DiGraph:
    """Add one path, e.g. ``add_path(g, "embed", ("0.0", "v"), ("1.6", "k"), "logits")``.

    A step ``(node, channel)`` says the previous node enters ``node`` through ``channel``. Channels of an
    existing edge are merged, so the same pair may be entered through several inputs.
    """
    if not isinstance(graph, nx.DiGraph):
        raise HypothesisError(f"add_path(graph, *steps): the first argument is the networkx.DiGraph to add to, "
                              f"got {type(graph).__name__}")
    if len(steps) < 2:
        raise HypothesisError(f"add_path{tuple(steps)!r}: a path has at least two steps, e.g. "
                              f"add_path(g, 'embed', ('0.0', 'v'), 'logits')")
    for i, step in enumerate(steps):
        pair = isinstance(step, (tuple, list)) and len(step) == 2 and isinstance(step[0], str)
        if not (isinstance(step, str) or pair):
            raise HypothesisError(f"add_path step {step!r}: write a step as a node name such as '1.3', or as a pair "
                                  f"(node, via) such as ('1.3', 'q')")
        if pair and i == 0:
            raise HypothesisError(f"add_path step {tuple(step)!r}: the first step has no previous node to enter "
                                  f"{step[0]!r} through {step[1]!r}; start the path with a node name, e.g. 'embed'")
    names = [s[0] if isinstance(s, (tuple, list)) else s for s in steps]
    for prev, step, name in zip(names, steps[1:], names[1:], strict=False):
        via = step[1] if isinstance(step, (tuple, list)) else None
        if graph.has_edge(prev, name):
            old = _channels(graph.edges[prev, name].get("via"))
            new = old | _channels(via)
            if new:
                graph.edges[prev, name]["via"] = "".join(sorted(c.value for c in new))
        else:
            graph.add_edge(prev, name, **({"via": via} if via else {}))
    return graph


def full_graph(model: HookedTransformer | HookedTransformerConfig) -> nx.DiGraph:
    """Every path of the model: with identity features this reproduces the clean run exactly."""
    structure = Structure.of(model)
    g = nx.DiGraph()
    g.add_node("logits")
    for receiver in structure.receivers:
        for sender in structure.senders(receiver):
            if isinstance(receiver, Head):
                via = "".join(c.value for c in HEAD_CHANNELS if structure.feeds(sender, receiver, c))
                g.add_edge(str(sender), str(receiver), via=via)
            else:
                g.add_edge(str(sender), str(receiver))
    return g


def empty_graph() -> nx.DiGraph:
    """No path claimed: every input of the logits is resampled."""
    return nx.DiGraph()

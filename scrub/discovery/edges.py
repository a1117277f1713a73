"""The edges discovery searches: every sender -> receiver input of ``full_graph``, named as ``parse_path``
writes a one-step path ("0.3 -> 1.3:k", "embed -> 0.3:v", "mlp.0 -> 2.2:k", "1.3 -> logits").

``Structure`` is the one source of what feeds what; this module only enumerates it, orders receivers for
the greedy search and turns a set of kept edges back into a claim (a frozen ``Claim`` for the engine, a
``networkx`` graph a hypothesis file can return).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import networkx as nx
from transformer_lens import HookedTransformer

from scrub.claims.hypothesis import Claim, ClaimEdge, ClaimNode, add_path
from scrub.claims.sites import Channel, Component, Embed, Head, Logits, Mlp, Pos, parse_component
from scrub.claims.structure import Structure
from scrub.errors import ScrubError


class EdgeError(ScrubError):
    """An edge or receiver name the model does not have; the message says how to write it."""


@dataclass(frozen=True)
class Edge:
    """``sender``'s output enters ``receiver`` through ``channel`` (q, k, v of a head; ``in`` otherwise)."""

    sender: Component
    receiver: Component
    channel: Channel

    def __str__(self) -> str:
        into = f"{self.receiver}:{self.channel.value}" if isinstance(self.receiver, Head) else str(self.receiver)
        return f"{self.sender} -> {into}"

    @property
    def input(self) -> str:
        """The receiver input as the JSON and CSV name it: "q", "k", "v" or "in"."""
        return self.channel.value


def all_edges(model: HookedTransformer | Structure) -> tuple[Edge, ...]:
    """Every edge of ``full_graph``, receivers in computation order, senders in computation order."""
    structure = Structure.of(model)
    return tuple(Edge(s, r, c) for r in structure.receivers for c in structure.channels(r)
                 for s in structure.senders(r, c))


def receiver_order(model: HookedTransformer | Structure) -> tuple[Component, ...]:
    """Receivers in reverse topological order (logits first): ACDC's visiting order, so that a receiver's
    outgoing edges are decided before its incoming ones."""
    return tuple(reversed(Structure.of(model).receivers))


def parse_receivers(names: Sequence[str] | None, model: HookedTransformer) -> tuple[Component, ...] | None:
    """``["1.0", "1.3"]`` into components that have inputs (heads, MLPs, logits); None stays None."""
    if names is None:
        return None
    out = []
    for name in names:
        component = parse_component(name, model.cfg)
        if isinstance(component, (Embed, Pos)):
            raise EdgeError(f"receiver {name!r} is an input and has no inputs of its own: name heads ('1.3'), "
                            f"MLPs ('mlp.0') or 'logits'")
        out.append(component)
    if not out:
        raise EdgeError("receivers is empty: name at least one head ('1.3'), MLP ('mlp.0') or 'logits', or pass None "
                        "to search every edge")
    return tuple(dict.fromkeys(out))


def claim_of(edges: Iterable[Edge], name: str = "discovered") -> Claim:
    """The engine's claim of these edges (node ids are component names, as in ``full_graph``); edges from
    nodes that do not reach the logits are ignored by ``treeify``."""
    edges = tuple(edges)
    components = {c for e in edges for c in (e.sender, e.receiver)} | {Logits()}
    nodes = tuple(ClaimNode(str(c), c) for c in sorted(components, key=_order))
    claimed = tuple(ClaimEdge(str(e.sender), str(e.receiver), e.channel) for e in edges)
    return Claim(name=name, nodes=nodes, edges=claimed, root="logits")


def _order(component: Component) -> tuple[float, str]:
    return component.depth, str(component)


def runnable(edges: Iterable[Edge]) -> tuple[Edge, ...]:
    """The edges that lie on an input -> logits path (what ``check_paths`` and validation accept): a claim of
    them runs as a hypothesis file. Edges off every such path change nothing a claim can state."""
    edges = tuple(edges)
    g = nx.DiGraph()
    g.add_edges_from((str(e.sender), str(e.receiver)) for e in edges)
    if "logits" not in g:
        return ()
    inputs = [n for n in ("embed", "pos") if n in g]
    reach_out = nx.ancestors(g, "logits") | {"logits"}
    reach_in = set(inputs).union(*(nx.descendants(g, n) for n in inputs)) if inputs else set()
    return tuple(e for e in edges if str(e.sender) in reach_in and str(e.receiver) in reach_out
                 and str(e.sender) in reach_out)


def graph_of(edges: Iterable[Edge]) -> nx.DiGraph:
    """A hypothesis graph with one ``add_path`` per edge (channels of one sender -> receiver merge)."""
    g = nx.DiGraph()
    for e in edges:
        add_path(g, *path_steps(e))
    return g


def path_steps(edge: Edge) -> tuple[str, str | tuple[str, str]]:
    """The ``add_path`` steps of one edge: ``("0.3", ("1.3", "k"))`` or ``("1.3", "logits")``."""
    if isinstance(edge.receiver, Head):
        return str(edge.sender), (str(edge.receiver), edge.channel.value)
    return str(edge.sender), str(edge.receiver)


def is_source(component: Component) -> bool:
    """Whether ``component`` has an output (everything but the logits)."""
    return isinstance(component, (Embed, Pos, Head, Mlp))

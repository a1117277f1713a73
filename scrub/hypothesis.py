"""Hypothesis graphs: how users write claims, how they are loaded and validated, and built-in graphs.

A hypothesis is a ``networkx.DiGraph`` whose nodes are components (``embed``, ``pos``, ``"L.H"``,
``"mlp.L"``, ``logits``) and whose edges say "this component's output enters that one". An edge into a
head names the input(s) it enters with the edge attribute ``via`` (``"q"``, ``"k"``, ``"v"``, or several
at once: ``via="kv"`` or ``via=("k", "v")``); edges into MLPs and ``logits`` take no ``via``. Optional
attributes: node ``feature`` (a ``scrub.features.Feature``), node ``component`` (to give one component
several graph nodes, i.e. claim it differently on different paths), edge ``positions`` (a function
tokens -> bool mask [batch, seq]: the receiver positions where the edge is claimed). The claim is the
set of input -> logits paths of the graph. ``validate`` turns a graph into a frozen ``Claim`` or raises
``HypothesisError`` naming the file, the node or edge, and the fix.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterable

import networkx as nx
from torch import Tensor
from transformer_lens import HookedTransformer, HookedTransformerConfig

from scrub.features import Feature, as_feature
from scrub.sites import (
    HEAD_CHANNELS, Channel, Component, Embed, Head, Logits, Pos, SiteError, parse_channel, parse_component,
)
from scrub.structure import Structure

PositionFn = Callable[[Tensor], Tensor]


class HypothesisError(ValueError):
    """A hypothesis that cannot be run; the message names where and how to fix it."""


@dataclass(frozen=True)
class ClaimNode:
    id: str
    component: Component
    feature: Feature | None = None


@dataclass(frozen=True)
class ClaimEdge:
    """``source``'s output enters ``target`` through ``channel``, claimed at ``positions`` (None: everywhere)."""

    source: str
    target: str
    channel: Channel
    positions: PositionFn | None = None


@dataclass(frozen=True)
class Claim:
    """A validated hypothesis: the nodes and per-channel edges of the claimed paths, and the root id."""

    name: str
    nodes: tuple[ClaimNode, ...]
    edges: tuple[ClaimEdge, ...]
    root: str | None  # id of the logits node; None for the empty hypothesis
    description: str = ""

    def node(self, node_id: str) -> ClaimNode:
        return self._by_id[node_id]

    def inputs_of(self, node_id: str) -> tuple[ClaimEdge, ...]:
        return self._inputs.get(node_id, ())

    @cached_property
    def _by_id(self) -> dict[str, ClaimNode]:
        return {n.id: n for n in self.nodes}

    @cached_property
    def _inputs(self) -> dict[str, tuple[ClaimEdge, ...]]:
        out: dict[str, list[ClaimEdge]] = {}
        for e in self.edges:
            out.setdefault(e.target, []).append(e)
        return {k: tuple(v) for k, v in out.items()}

    def n_paths(self) -> int:
        """Number of input -> logits paths (counting each channel separately)."""
        if self.root is None:
            return 0
        memo: dict[str, int] = {}

        def count(node_id: str) -> int:
            if node_id not in memo:
                ins = self.inputs_of(node_id)
                comp = self.node(node_id).component
                memo[node_id] = (1 if isinstance(comp, (Embed, Pos)) else 0) + sum(count(e.source) for e in ins)
            return memo[node_id]

        return count(self.root)


# --- writing graphs by hand ----------------------------------------------------------------------------

Step = str | tuple[str, str]


def add_path(graph: nx.DiGraph, *steps: Step) -> nx.DiGraph:
    """Add one path, e.g. ``add_path(g, "embed", ("0.0", "v"), ("1.6", "k"), "logits")``.

    A step ``(node, channel)`` says the previous node enters ``node`` through ``channel``. Channels of an
    existing edge are merged, so the same pair may be entered through several inputs.
    """
    names = [s[0] if isinstance(s, tuple) else s for s in steps]
    for prev, step, name in zip(names, steps[1:], names[1:]):
        via = step[1] if isinstance(step, tuple) else None
        if graph.has_edge(prev, name):
            old = _channels(graph.edges[prev, name].get("via"))
            new = old | _channels(via)
            if new:
                graph.edges[prev, name]["via"] = "".join(sorted(c.value for c in new))
        else:
            graph.add_edge(prev, name, **({"via": via} if via else {}))
    return graph


def _channels(via: object) -> set[Channel]:
    if via is None:
        return set()
    if isinstance(via, (str, Channel)):
        text = via.value if isinstance(via, Channel) else via
        items: Iterable[str] = [text] if text in ("in",) else list(text.replace(",", "").replace(" ", ""))
    else:
        items = [c.value if isinstance(c, Channel) else str(c) for c in via]  # type: ignore[union-attr]
    return {parse_channel(c) for c in items}


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


# --- validation ----------------------------------------------------------------------------------------

def validate(graph: nx.DiGraph, model: HookedTransformer | HookedTransformerConfig, *, origin: str = "<graph>") -> Claim:
    """Check a hypothesis graph against the model and freeze it into a ``Claim``."""
    cfg = getattr(model, "cfg", model)
    where = f"{origin}: "
    if isinstance(graph, nx.MultiGraph):
        raise HypothesisError(f"{where}use a networkx.DiGraph, not a MultiDiGraph: write several inputs of one edge as via='kv'")
    if not isinstance(graph, nx.DiGraph):
        raise HypothesisError(f"{where}hypothesis(model) must return a networkx.DiGraph, got {type(graph).__name__}")
    nodes = []
    for node_id, attrs in graph.nodes(data=True):
        name = attrs.get("component", node_id)
        try:
            component = parse_component(str(name), cfg)
        except SiteError as err:
            raise HypothesisError(f"{where}node {node_id!r}: {err}") from None
        try:
            feature = as_feature(attrs.get("feature"), where=f"node {node_id!r}: ")
        except TypeError as err:
            raise HypothesisError(f"{where}{err}") from None
        if feature is not None and isinstance(component, Logits):
            raise HypothesisError(f"{where}node {node_id!r}: logits always see the reference input; remove its feature")
        nodes.append(ClaimNode(str(node_id), component, feature))
    by_id = {n.id: n for n in nodes}
    roots = [n.id for n in nodes if isinstance(n.component, Logits)]
    if len(roots) > 1:
        raise HypothesisError(f"{where}several logits nodes {roots}: a hypothesis has one 'logits' node")
    try:
        cycle = nx.find_cycle(graph)
        raise HypothesisError(f"{where}the graph has a cycle {' -> '.join(str(e[0]) for e in cycle)} -> {cycle[0][0]}: "
                              f"paths must run from inputs towards the logits")
    except nx.NetworkXNoCycle:
        pass
    structure = Structure.of(cfg)
    edges = []
    for src, dst, attrs in graph.edges(data=True):
        s, d = by_id[str(src)], by_id[str(dst)]
        label = f"edge {src!r} -> {dst!r}"
        edges.extend(_check_edge(s, d, attrs, structure, where, label))
    reach = {str(n) for n in nx.ancestors(graph, roots[0])} if roots else set()
    for n in nodes:
        if n.id not in roots and n.id not in reach:
            raise HypothesisError(f"{where}node {n.id!r} lies on no path that reaches 'logits': add an edge from it "
                                  f"towards 'logits' or remove it")
    name = Path(origin).stem if origin != "<graph>" else "graph"
    return Claim(name=name, nodes=tuple(nodes), edges=tuple(edges), root=roots[0] if roots else None)


def _check_edge(s: ClaimNode, d: ClaimNode, attrs: dict, structure: Structure, where: str, label: str) -> list[ClaimEdge]:
    if isinstance(s.component, Logits):
        raise HypothesisError(f"{where}{label} leaves 'logits': logits are the end of every path")
    if isinstance(d.component, (Embed, Pos)):
        raise HypothesisError(f"{where}{label} enters an input ({d.component}): inputs have no inputs of their own")
    if not structure.feeds(s.component, d.component) and not isinstance(s.component, Pos):
        raise HypothesisError(f"{where}{label}: {structure.why_not(s.component, d.component)}")
    positions = attrs.get("positions")
    if positions is not None and not callable(positions):
        raise HypothesisError(f"{where}{label}: 'positions' must be a function tokens -> bool mask [batch, seq]")
    try:
        channels = _channels(attrs.get("via"))
    except SiteError as err:
        raise HypothesisError(f"{where}{label}: {err}") from None
    if isinstance(d.component, Head):
        if not channels or Channel.IN in channels:
            raise HypothesisError(f"{where}{label} enters head {d.component} without saying how: add via='q', 'k', "
                                  f"'v' or several, e.g. g.add_edge({s.id!r}, {d.id!r}, via='kv')")
        for c in sorted(channels, key=lambda c: c.value):
            if not structure.feeds(s.component, d.component, c):
                raise HypothesisError(f"{where}{label} via {c.value!r}: {structure.why_not(s.component, d.component, c)}")
    else:
        if channels - {Channel.IN}:
            raise HypothesisError(f"{where}{label} has via={attrs.get('via')!r}, but {d.component} has a single input: "
                                  f"drop 'via' (only edges into heads name q, k or v)")
        if not structure.feeds(s.component, d.component):
            raise HypothesisError(f"{where}{label}: {structure.why_not(s.component, d.component)}")
        channels = {Channel.IN}
    order = {c: i for i, c in enumerate((*HEAD_CHANNELS, Channel.IN))}
    return [ClaimEdge(s.id, d.id, c, positions) for c in sorted(channels, key=order.__getitem__)]


# --- hypothesis files ----------------------------------------------------------------------------------

def load_hypothesis(path: str | Path, model: HookedTransformer) -> Claim:
    """Import a hypothesis file, call its ``hypothesis(model)`` and validate the graph it returns."""
    path = Path(path)
    if not path.is_file():
        raise HypothesisError(f"no hypothesis file at {path}: pass a .py file that defines hypothesis(model)")
    module_name = f"scrub_hypothesis_{abs(hash(path.resolve()))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise HypothesisError(f"{path}: not a Python file; a hypothesis file is a .py module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    # the file's folder and its parent are importable while it loads (e.g. `from hypotheses import _heads`)
    extra = [str(path.resolve().parent), str(path.resolve().parent.parent)]
    sys.path[:0] = extra
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(module_name, None)
        for entry in extra:
            sys.path.remove(entry)
    fn = getattr(module, "hypothesis", None)
    if not callable(fn):
        raise HypothesisError(f"{path}: defines no function hypothesis(model) -> networkx.DiGraph; add one")
    graph = fn(model)
    claim = validate(graph, model, origin=str(path))
    return replace(claim, description=(module.__doc__ or "").strip())

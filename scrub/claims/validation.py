"""Validation: a hypothesis graph in, a frozen ``Claim`` out, or one ``HypothesisError`` naming the file, the
node or edge, and the fix (``validate``); checks that need the paths (``check_paths``) or a batch
(``check_on``).

The rules, each checked with a one-line error (``HypothesisError``, a ``ValueError``):

- node ids are strings. A node without ``component`` is named by its id, which must be the component's
  one spelling (``"1.3"``, not ``"1.03"`` or ``" 1.3"``: a non-canonical spelling would otherwise be a
  second node of the same head). To give a component a second node, use an id that is not a component
  name with ``component="1.3"`` (e.g. ``"1.3#k"``); an id that reads as a component name must be its own.
- node attributes are ``feature`` and ``component``; edge attributes are ``via``, ``positions`` and
  ``qk_mask``. Anything else (``features=``, ``position=``, ``mask_qk=``) is a misspelling, and is rejected
  with a suggestion.
- ``qk_mask`` is a ``scrub.claims.masks.QKMask`` (a plain function is rejected, with ``QKMask(name, fn)`` as the
  fix), only on edges into a head (MLPs and logits have no keys), not together with ``positions`` on one
  edge, and applies to every input the edge names (``via="kv"``: k and v), or is a dict naming the inputs it
  masks (``via="qkv", qk_mask={"k": m, "v": m}``: q claimed at every pair). All masked edges into one input
  of one node carry the same (equal) mask: an input is split once, into the pairs that read the claimed
  input and the pairs that read one resampled input. Unmasked edges into that input stay claimed at every
  pair. ``check_on`` builds every mask once for the batch's sequence length.
- one node of a component per input: two nodes of one component (``"0.1"`` and a copy ``"0.1#b"``) may not
  both enter one input of one node, even at other positions: the component's output enters that input once, so
  two claims of it there describe no model run. A copy is for the receivers and inputs its original does not enter.
- every node lies on a path to ``logits``; no cycles; every edge goes forward in the model and enters an
  input the receiver has (``Structure``).
- paths start at inputs (``check_paths``; run by ``hypothesis_file.load_hypothesis`` and ``check_on``, not by
  ``validate``, which accepts any graph the engine can evaluate). A node with no in-edges is legal: all its
  inputs are unclaimed and read another datum (``full_graph`` minus the edges into a head is how a head's
  inputs are resampled). A node that has in-edges, but none of whose in-paths starts at ``embed`` or
  ``pos``, is an error: its claimed inputs all come from nodes computed entirely on other data, so the
  claim says nothing about the input, yet it changes the loss. Claim an input of the node where the
  paths start, or drop the node's in-edges.
- features return integer (or bool) codes, one row per example; float codes are rejected, even when
  whole (write ``.long()`` yourself, so that rounding is visible). Positions masks are bool tensors of the
  tokens' shape ``[batch, seq]``; 0/1 integer or float masks are rejected (they would weight the claim),
  with ``.bool()`` as the fix. ``check_on(claim, tokens)`` evaluates every feature, positions function and
  query-key mask once on a batch, before any work; positions functions are also checked on every call.
- hypothesis files (``scrub.claims.files``): syntax errors and exceptions raised while importing the file or inside
  ``hypothesis(model)`` are reported with the file and line; ``print`` inside a file goes to stderr.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import re
from pathlib import Path
from typing import Iterable

import networkx as nx
from torch import Tensor
from transformer_lens import HookedTransformer, HookedTransformerConfig

from scrub.claims.claim import CheckedPositions, Claim, ClaimEdge, ClaimNode, HypothesisError, PositionFn
from scrub.claims.features import Feature, FeatureError, as_feature
from scrub.claims.masks import MaskError, QKMask
from scrub.claims.sites import (
    HEAD_CHANNELS,
    Channel,
    Component,
    Embed,
    Head,
    Logits,
    Mlp,
    Pos,
    SiteError,
    parse_channel,
    parse_component,
)
from scrub.claims.structure import Structure
from scrub.errors import ScrubError

NODE_ATTRIBUTES = ("feature", "component")
EDGE_ATTRIBUTES = ("via", "positions", "qk_mask")
_MEANT = {"channel": "via", "channels": "via", "input": "via", "inputs": "via", "mask": "positions",
          "where": "positions", "at": "positions", "head": "component", "alias": "component", "of": "component",
          "qk": "qk_mask", "mask_qk": "qk_mask", "qkmask": "qk_mask", "qk_masks": "qk_mask",
          "query_key_mask": "qk_mask", "attn_mask": "qk_mask", "attention_mask": "qk_mask", "pattern_mask": "qk_mask"}
_MASK_FACTORIES = ("previous_position", "within", "all_keys", "no_keys")
_LOOKS_LIKE_COMPONENT = re.compile(r"^\s*(embed|pos|logits|\d+\s*\.\s*\d+|mlp\s*\.\s*\d+)\s*$", re.IGNORECASE)


def _channels(via: object) -> set[Channel]:
    """The channels ``via`` names: ``"q"``, ``"kv"``, ``"q,k"``, ``("k", "v")``, a ``Channel``, or None."""
    if via is None:
        return set()
    if isinstance(via, Channel):
        return {via}
    if isinstance(via, str):
        text = via.replace(",", "").replace(" ", "")
        items: Iterable[str] = [text] if text.lower() == "in" else list(text)
        return {parse_channel(c) for c in items}
    if isinstance(via, (tuple, list, set, frozenset)) and all(isinstance(c, (str, Channel)) for c in via):
        return set().union(*(_channels(c) for c in via))
    raise SiteError(f"via={via!r} is not a list of inputs: write the inputs of a head as a string, 'q', 'k', 'v' or "
                    f"several ('kv'), or as a tuple ('k', 'v')")


def _unknown_attributes(attrs: dict, allowed: tuple[str, ...], what: str) -> str | None:
    for key in attrs:
        if key in allowed:
            continue
        lower = str(key).lower()
        guess = _MEANT.get(lower) or next(iter(difflib.get_close_matches(lower, allowed, 1, 0.6)), None)
        hint = f"did you mean {guess!r}? " if guess in allowed else ""
        listed = " and ".join([", ".join(repr(a) for a in allowed[:-1]), repr(allowed[-1])] if len(allowed) > 1
                              else [repr(a) for a in allowed])
        return (f"{what} has an unknown attribute {key!r}: {hint}{what.split()[0]} attributes are {listed}; "
                f"rename or remove it")
    return None


def _node(node_id: object, attrs: dict, cfg: HookedTransformerConfig, where: str) -> ClaimNode:
    label = f"node {node_id!r}"
    if not isinstance(node_id, str):
        guess = str(node_id)
        raise HypothesisError(f"{where}{label} is a {type(node_id).__name__}: node ids are strings, write {guess!r}"
                              + (" (a float such as 1.10 would be read as 1.1)" if isinstance(node_id, float) else ""))
    if problem := _unknown_attributes(attrs, NODE_ATTRIBUTES, label):
        raise HypothesisError(f"{where}{problem}")
    try:
        if "component" in attrs:
            name = attrs["component"]
            if not isinstance(name, (str, Head, Mlp, Embed, Pos, Logits)):
                raise SiteError(f"component={name!r} is a {type(name).__name__}: "
                                f"write the component's name, e.g. '1.3'")
            component = parse_component(name, cfg, strict=True)
            if _LOOKS_LIKE_COMPONENT.match(node_id) and node_id != str(component):
                raise SiteError(f"its id reads as a component name but it has component={str(component)!r}: an id that "
                                f"names a component must be that component's; use an alias such as "
                                f"'{component}#{node_id.strip()}' for a second node of {component}")
        else:
            component = parse_component(node_id, cfg, strict=True)
    except SiteError as err:
        hint = ""
        if "is not how this component is written" in str(err) and "component" not in attrs:
            with contextlib.suppress(SiteError):
                canonical = str(parse_component(node_id.strip().lower(), cfg))
                hint = f"; to give {canonical} a second node, use another id with component={canonical!r}"
        raise HypothesisError(f"{where}{label}: {err}{hint}") from None
    try:
        feature = as_feature(attrs.get("feature"), where=f"{label}: ")
    except TypeError as err:
        raise HypothesisError(f"{where}{err}") from None
    if feature is not None and isinstance(component, Logits):
        raise HypothesisError(f"{where}{label}: logits always see the reference input; remove its feature")
    return ClaimNode(node_id, component, feature)


def validate(graph: nx.DiGraph, model: HookedTransformer | HookedTransformerConfig, *,
             origin: str = "<graph>") -> Claim:
    """Check a hypothesis graph against the model and freeze it into a ``Claim``.

    This checks everything the engine needs (see the module docstring); ``check_paths`` adds the check that
    every claimed path starts at an input, and ``check_on`` the checks that need data."""
    cfg = model.cfg if isinstance(model, HookedTransformer) else getattr(model, "cfg", model)
    where = f"{origin}: "
    if isinstance(graph, nx.MultiGraph):
        raise HypothesisError(f"{where}use a networkx.DiGraph, not a MultiDiGraph: "
                              f"write several inputs of one edge as via='kv'")
    if not isinstance(graph, nx.DiGraph):
        hint = (" (does hypothesis(model) end with `return g`?)" if graph is None else
                ": an undirected networkx.Graph has no direction" if isinstance(graph, nx.Graph) else "")
        raise HypothesisError(f"{where}hypothesis(model) must return a networkx.DiGraph, "
                              f"got {type(graph).__name__}{hint}")
    nodes = [_node(node_id, attrs, cfg, where) for node_id, attrs in graph.nodes(data=True)]
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
        s, d = by_id[src], by_id[dst]
        label = f"edge {src!r} -> {dst!r}"
        edges.extend(_check_edge(s, d, attrs, structure, where, label))
    if nodes and not roots:
        raise HypothesisError(f"{where}the graph has no 'logits' node, so {nodes[0].id!r} lies on no path that reaches "
                              f"'logits': every claimed path ends at 'logits' (to claim nothing, return an empty "
                              f"networkx.DiGraph)")
    reach = set(nx.ancestors(graph, roots[0])) if roots else set()
    for n in nodes:
        if n.id not in roots and n.id not in reach:
            raise HypothesisError(f"{where}node {n.id!r} lies on no path that reaches 'logits': add an edge from it "
                                  f"towards 'logits' or remove it")
    _check_one_mask_per_input(edges, where)
    _check_one_claim_per_source(edges, by_id, where)
    name = Path(origin).stem if origin != "<graph>" else "graph"
    return Claim(name=name, nodes=tuple(nodes), edges=tuple(edges), root=roots[0] if roots else None, origin=origin)


def _check_edge(s: ClaimNode, d: ClaimNode, attrs: dict, structure: Structure, where: str,
                label: str) -> list[ClaimEdge]:
    if problem := _unknown_attributes(attrs, EDGE_ATTRIBUTES, label):
        raise HypothesisError(f"{where}{problem}")
    if isinstance(s.component, Logits):
        raise HypothesisError(f"{where}{label} leaves 'logits': logits are the end of every path")
    if isinstance(d.component, (Embed, Pos)):
        raise HypothesisError(f"{where}{label} enters an input ({d.component}): inputs have no inputs of their own")
    if not structure.feeds(s.component, d.component) and not isinstance(s.component, Pos):
        raise HypothesisError(f"{where}{label}: {structure.why_not(s.component, d.component)}")
    positions = attrs.get("positions")
    if isinstance(positions, Feature) or (positions is not None and not callable(positions)):
        got = "a Feature (features go on nodes)" if isinstance(positions, Feature) else f"a {type(positions).__name__}"
        raise HypothesisError(f"{where}{label}: 'positions' must be a function tokens -> bool mask [batch, seq], "
                              f"got {got}")
    if positions is not None and not isinstance(positions, CheckedPositions):
        positions = CheckedPositions(positions, f"{where}{label}")
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
                why = structure.why_not(s.component, d.component, c)
                raise HypothesisError(f"{where}{label} via {c.value!r}: {why}")
    else:
        if channels - {Channel.IN}:
            raise HypothesisError(f"{where}{label} has via={attrs.get('via')!r}, but {d.component} has a single input: "
                                  f"drop 'via' (only edges into heads name q, k or v)")
        if not structure.feeds(s.component, d.component):
            raise HypothesisError(f"{where}{label}: {structure.why_not(s.component, d.component)}")
        channels = {Channel.IN}
    masks = _qk_masks(attrs, d, channels, positions, where, label)
    order = {c: i for i, c in enumerate((*HEAD_CHANNELS, Channel.IN))}
    return [ClaimEdge(s.id, d.id, c, positions, masks.get(c)) for c in sorted(channels, key=order.__getitem__)]


def _qk_masks(attrs: dict, d: ClaimNode, channels: set[Channel], positions: PositionFn | None, where: str,
              label: str) -> dict[Channel, QKMask]:
    """The edge's ``qk_mask`` per channel: one ``QKMask`` for every channel of the edge, or a dict naming the
    channels it masks (``{"k": m, "v": m}``; the others are claimed at every pair)."""
    mask = attrs.get("qk_mask")
    if not isinstance(mask, dict):
        one = _qk_mask(mask, d, positions, where, label)
        return {} if one is None else {c: one for c in channels}
    out = {}
    for key, value in mask.items():
        try:
            channel = parse_channel(key) if isinstance(key, str) else key
        except SiteError:
            channel = None
        if channel not in channels:
            names = "".join(sorted(c.value for c in channels))
            raise HypothesisError(f"{where}{label}: qk_mask names input {key!r}, but the edge enters through "
                                  f"via={names!r}; key the dict by those inputs, e.g. {{'k': mask}}")
        one = _qk_mask(value, d, positions, where, label)
        if one is not None:
            out[channel] = one
    return out


def _qk_mask(mask: object, d: ClaimNode, positions: PositionFn | None, where: str, label: str) -> QKMask | None:
    """One ``qk_mask`` value: a ``QKMask``, on an edge into a head, without ``positions``."""
    if mask is None:
        return None
    if not isinstance(d.component, Head):
        raise HypothesisError(f"{where}{label} has a qk_mask, but {d.component} is not a head: a query-key mask "
                              f"splits a head's attention by (query, key) pair, and MLPs and logits have no keys; "
                              f"remove it")
    if positions is not None:
        raise HypothesisError(f"{where}{label} has both 'positions' and 'qk_mask': restrict an edge by one of them "
                              f"(a qk_mask depends only on the query and key positions, so a token-independent "
                              f"positions restriction can be written into it)")
    if isinstance(mask, QKMask):
        return mask
    name = getattr(mask, "__name__", None)
    if mask is QKMask:
        got = "is the QKMask class: build a mask, qk_mask=scrub.claims.masks.QKMask(name, fn)"
    elif (inspect.isfunction(mask) and getattr(mask, "__module__", None) == "scrub.claims.masks"
          and name in _MASK_FACTORIES):
        args = "" if not inspect.signature(mask).parameters else "..."
        got = f"is {name}, a function that makes a mask, not a mask: call it, qk_mask={name}({args})"
    elif callable(mask):
        got = (f"is a plain function {name or type(mask).__name__!r}: wrap it with a name, "
               f"qk_mask=scrub.claims.masks.QKMask('name', fn) (fn(query, key) -> bool)")
    else:
        got = (f"is a {type(mask).__name__}: it must be a scrub.claims.masks.QKMask, e.g. "
               "scrub.claims.masks.previous_position() "
               f"or scrub.claims.masks.QKMask('name', lambda q, k: ...)")
    raise HypothesisError(f"{where}{label}: qk_mask {got}")


def _check_one_mask_per_input(edges: list[ClaimEdge], where: str) -> None:
    """All masked edges into one (node, input) carry equal masks: the engine splits each input once."""
    first: dict[tuple[str, Channel], tuple[str, QKMask]] = {}
    for e in edges:
        if e.qk_mask is None:
            continue
        source, mask = first.setdefault((e.target, e.channel), (e.source, e.qk_mask))
        if mask == e.qk_mask:
            continue
        same = " (same name, different functions: build the mask once and reuse it)" * (mask.name == e.qk_mask.name)
        raise HypothesisError(
            f"{where}edges {source!r} -> {e.target!r} and {e.source!r} -> {e.target!r} enter {e.channel.value!r} of "
            f"{e.target!r} with different query-key masks {mask.name!r} and {e.qk_mask.name!r}{same}: one input takes "
            f"one mask (its masked pairs read the claimed input, the others a resampled one); give every masked edge "
            f"into it the same QKMask, or claim the other through a second node of the head (another id with "
            f"component=...)")


# --- whole-claim and data checks, before any work ------------------------------------------------------

def _check_one_claim_per_source(edges: list[ClaimEdge], by_id: dict[str, ClaimNode], where: str) -> None:
    """One node of a component per input of a node: a component's output enters an input once (one node of the
    treeified model), so two nodes of it claimed there (an original and a ``component=`` copy) are two claims
    of one activation, which no model run computes."""
    first: dict[tuple[str, Channel, Component], str] = {}
    for e in edges:
        component = by_id[e.source].component
        source = first.setdefault((e.target, e.channel, component), e.source)
        if source == e.source:
            continue
        into = f"the input of {e.target!r}" if e.channel == Channel.IN else f"{e.channel.value!r} of {e.target!r}"
        raise HypothesisError(
            f"{where}edges {source!r} -> {e.target!r} and {e.source!r} -> {e.target!r} both claim {component}'s "
            f"output in {into}: a component's output enters an input once, so one node of it can be claimed there "
            f"(even at other positions or query-key pairs); keep one of the two edges (a copy of a component claims "
            f"it into the receivers and inputs that its other nodes do not enter)")


def check_paths(claim: Claim) -> None:
    """Every node with claimed inputs must be reached by a path from an input (``embed`` or ``pos``).

    A node without in-edges is legal (its inputs are all resampled). A node with in-edges none of whose
    in-paths starts at an input reads only nodes computed on other data: the claim on it says nothing about
    the input but changes the loss, so it is an error, reported at the first such node."""
    where = f"{claim.origin}: "
    g = nx.DiGraph()
    g.add_nodes_from(n.id for n in claim.nodes)
    g.add_edges_from((e.source, e.target) for e in claim.edges)
    reached = {n.id for n in claim.nodes if isinstance(n.component, (Embed, Pos))}
    for node_id in nx.topological_sort(g):
        preds = list(g.predecessors(node_id))
        if not preds or node_id in reached:
            continue
        if any(p in reached for p in preds):
            reached.add(node_id)
            continue
        starts = sorted(a for a in nx.ancestors(g, node_id) if g.in_degree(a) == 0)
        named = ", ".join(repr(a) for a in starts)
        raise HypothesisError(
            f"{where}node {node_id!r} has claimed inputs, but none of its paths starts at an input ('embed' or 'pos'): "
            f"they start at {named}, which {'has' if len(starts) == 1 else 'have'} no claimed inputs and so "
            f"{'is' if len(starts) == 1 else 'are'} computed entirely on another datum; "
            f"claim an input of {starts[0]!r} (e.g. an edge from 'embed'), "
            f"or remove the edges into {node_id!r} to resample all its inputs")


def check_on(claim: Claim, tokens: Tensor) -> None:
    """Check a claim before a run: its paths start at inputs (``check_paths``), and every feature and every
    positions function, evaluated once on ``tokens`` [batch, seq] (e.g. the first batch), returns integer
    codes with one row per example, or a bool mask [batch, seq]. Raises ``HypothesisError`` naming the file,
    the node or edge, and the fix."""
    if not isinstance(tokens, Tensor) or tokens.dim() != 2 or tokens.dtype.is_floating_point:
        raise ScrubError("check_on(claim, tokens): tokens are the integer token ids of a batch, [batch, seq]")
    check_paths(claim)
    where = f"{claim.origin}: "
    for node in claim.nodes:
        if node.feature is not None:
            try:
                node.feature.codes(tokens)
            except FeatureError as err:
                raise HypothesisError(f"{where}node {node.id!r}: {err}") from None
    seen: set[int] = set()
    for e in claim.edges:
        if e.qk_mask is not None and id(e.qk_mask) not in seen:
            seen.add(id(e.qk_mask))
            try:
                e.qk_mask.matrix(tokens.shape[1], tokens.device)
            except MaskError as err:
                raise HypothesisError(f"{where}edge {e.source!r} -> {e.target!r}: {err}") from None
        if e.positions is None or id(e.positions) in seen:
            continue
        seen.add(id(e.positions))
        fn = e.positions
        if not isinstance(fn, CheckedPositions):
            fn = CheckedPositions(fn, f"{where}edge {e.source!r} -> {e.target!r}")
        fn(tokens)

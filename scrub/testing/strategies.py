"""Hypothesis strategies for property tests of scrub and its extensions (needs ``pip install scrub[testing]``).

``models`` draws tiny random models over every supported architecture, ``token_batches`` token ids for one,
``claims`` random hypothesis graphs that ``validate`` accepts (sub-graphs of ``full_graph`` with features,
positions masks, query-key masks and ``component=`` copies), ``features``/``qk_masks``/``positions_functions``
the pieces, ``sampling_options`` the draw settings. Every strategy shrinks towards a small readable example:
fewer layers and heads, the first architecture, fewer edges, no features or masks, token id 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import networkx as nx
import torch
from hypothesis import strategies as st
from torch import Tensor
from transformer_lens import HookedTransformer

from scrub.claims.features import Feature
from scrub.claims.hypothesis import full_graph
from scrub.claims.masks import QKMask, all_keys, no_keys, previous_position, within
from scrub.claims.structure import Structure
from scrub.engine.treeify import SamplingOptions, Unit
from scrub.testing.graphs import prune_graph
from scrub.testing.models import MlpKind, ModelSpec, Norm, Positions
from scrub.testing.pieces import FromPosition, KeyMod, RepeatCount, TokenBelow, TokenMod, feature, qk_mask

__all__ = ["claims", "extensions", "features", "model_specs", "models", "positions_functions", "qk_masks",
           "sampling_options", "token_batches"]


@st.composite
def model_specs(draw, *, positions: Sequence[Positions] = tuple(Positions), norms: Sequence[Norm] = tuple(Norm),
                mlps: Sequence[MlpKind] = tuple(MlpKind), parallel: bool | None = None, gqa: bool | None = None,
                min_layers: int = 1, max_layers: int = 3, max_heads: int = 3, min_heads: int = 1,
                float64: bool = False) -> ModelSpec:
    """A ``ModelSpec``: the architecture axes drawn from the given values (``parallel``/``gqa`` None: either),
    ``min_layers``..``max_layers`` layers of ``min_heads``..``max_heads`` heads, a weight seed; float64 weights
    with ``float64``."""
    mlp = draw(st.sampled_from(list(mlps)))
    n_heads = draw(st.integers(min_heads, max_heads))
    pos = draw(st.sampled_from(list(positions)))
    is_parallel = mlp != MlpKind.NONE and draw(st.booleans() if parallel is None else st.just(parallel))
    grouped = n_heads > 1 and draw(st.booleans() if gqa is None else st.just(gqa))
    partial = pos == Positions.ROTARY and draw(st.booleans())
    return ModelSpec(n_layers=draw(st.integers(min_layers, max_layers)), n_heads=n_heads, positions=pos,
                     norm=draw(st.sampled_from(list(norms))), mlp=mlp, parallel=is_parallel,
                     n_kv_heads=1 if grouped else None, rotary_dim=2 if partial else None,
                     seed=draw(st.integers(0, 1000)), float64=float64)


def models(**restrictions) -> st.SearchStrategy[HookedTransformer]:
    """Random tiny models: ``model_specs(**restrictions)`` built (each remembers its spec for reproducers)."""
    return model_specs(**restrictions).map(ModelSpec.build)


def token_batches(model: HookedTransformer, *, min_rows: int = 2, max_rows: int = 6, min_seq: int = 2,
                  max_seq: int = 8, vocab: int | None = None) -> st.SearchStrategy[Tensor]:
    """Token ids [rows, seq] below ``vocab`` (default: the model's vocabulary), at most the model's n_ctx long;
    shrinks to fewer, shorter rows of token 0."""
    top = min(max_seq, model.cfg.n_ctx)
    ids = st.integers(0, (vocab or model.cfg.d_vocab) - 1)

    @st.composite
    def batch(draw) -> Tensor:
        seq = draw(st.integers(min(min_seq, top), top))
        rows = draw(st.lists(st.lists(ids, min_size=seq, max_size=seq), min_size=min_rows, max_size=max_rows))
        return torch.tensor(rows, dtype=torch.long)  # [rows, seq]

    return batch()


def features(*, per_position: bool | None = None) -> st.SearchStrategy[Feature]:
    """Features of the kit (``scrub.testing.pieces``): a token modulo 2 or 3 at a position, or how many tokens
    repeat; ``per_position`` True: only per-position ones, False: none, None: either."""
    whole = st.one_of(st.builds(TokenMod, st.integers(2, 3), st.integers(0, 1)),
                      st.builds(RepeatCount, st.integers(1, 3)))
    each = st.builds(TokenMod, st.integers(2, 3), st.none())
    fns = {True: each, False: whole, None: st.one_of(whole, each)}[per_position]
    return fns.map(feature)


def positions_functions() -> st.SearchStrategy:
    """Positions masks tokens -> bool [batch, seq]: tokens below a threshold, or positions from a start on."""
    return st.one_of(st.builds(TokenBelow, st.integers(1, 15)), st.builds(FromPosition, st.integers(0, 3)))


def qk_masks() -> st.SearchStrategy[QKMask]:
    """Query-key masks: the previous key, a window back, every key, no key, or keys of one parity."""
    return st.one_of(st.just(previous_position()), st.integers(0, 3).map(within), st.just(all_keys()),
                     st.just(no_keys()), st.builds(KeyMod, st.just(2), st.integers(0, 1)).map(qk_mask))


def sampling_options(*, units: Sequence[Unit] = tuple(Unit), independent: bool | None = None,
                     allow_self: bool | None = None, pools: Sequence[int | None] = (None,)) -> st.SearchStrategy:
    """``SamplingOptions`` with the given units and pools (``independent``/``allow_self`` None: either)."""
    flag = lambda v: st.booleans() if v is None else st.just(v)  # noqa: E731
    return st.builds(SamplingOptions, flag(independent), flag(allow_self), st.sampled_from(list(units)),
                     st.sampled_from(list(pools)))


def _channel_edges(model: HookedTransformer) -> list[tuple[str, str, str | None]]:
    """The full graph's (sender, receiver, channel) triples (channel None into MLPs and logits)."""
    out: list[tuple[str, str, str | None]] = []
    for src, dst, attrs in full_graph(model).edges(data=True):
        out.extend((src, dst, c) for c in attrs.get("via") or [None])
    return out


def _graph(edges: list[tuple[str, str, str | None]]) -> nx.DiGraph:
    g = nx.DiGraph()
    for src, dst, channel in edges:
        if channel is None:
            g.add_edge(src, dst)
        else:
            old = g.edges[src, dst].get("via", "") if g.has_edge(src, dst) else ""
            g.add_edge(src, dst, via="".join(sorted(set(old + channel))))
    return prune_graph(g)


def _add_copy(draw, g: nx.DiGraph, model: HookedTransformer, index: int) -> None:
    """A ``component=`` copy of one head or MLP node: some of its in-edges copied, some of its out-edges moved."""
    movable = [n for n in g.nodes if n not in ("embed", "pos", "logits") and "#" not in n and g.out_degree(n)]
    if not movable:
        return
    node = draw(st.sampled_from(sorted(movable)))
    alias = f"{node}#{index}"
    g.add_node(alias, component=node)
    for src, _, attrs in list(g.in_edges(node, data=True)):
        if draw(st.booleans()):
            g.add_edge(src, alias, **dict(attrs))
    outs = sorted(g.out_edges(node, data=True), key=lambda e: e[1])
    moved = draw(st.lists(st.sampled_from(range(len(outs))), min_size=1, max_size=len(outs), unique=True))
    for i in moved:
        _, dst, attrs = outs[i]
        g.remove_edge(node, dst)
        g.add_edge(alias, dst, **dict(attrs))


@dataclass(frozen=True)
class _Pieces:
    """The strategies ``claims`` draws its decorations from, built once per ``claims`` call (a strategy built
    inside every draw costs hypothesis more than the draw itself)."""

    whole: st.SearchStrategy = field(default_factory=lambda: st.one_of(st.none(), features(per_position=False)))
    either: st.SearchStrategy = field(default_factory=lambda: st.one_of(st.none(), features(per_position=None)))
    masks: st.SearchStrategy = field(default_factory=lambda: st.one_of(st.none(), qk_masks()))
    positions: st.SearchStrategy = field(default_factory=positions_functions)
    kinds: st.SearchStrategy = field(default_factory=lambda: st.sampled_from(["plain", "positions", "mask"]))


def _decorate(draw, g: nx.DiGraph, model: HookedTransformer, pieces: _Pieces, *, with_features: bool,
              per_position: bool, with_positions: bool, with_masks: bool) -> None:
    """Features on nodes, positions restrictions and query-key masks (one per head input) on edges."""
    heads = {n for n in g.nodes if n not in ("embed", "pos", "logits")
             and not str(g.nodes[n].get("component", n)).startswith("mlp")}
    if with_features:
        for n in sorted(g.nodes):
            if n not in ("logits", "pos"):
                chosen = draw(pieces.either if per_position and n != "embed" else pieces.whole)
                if chosen is not None:
                    g.nodes[n]["feature"] = chosen
    masks = {(n, c): draw(pieces.masks) if with_masks else None for n in sorted(heads) for c in "qkv"}
    shortformer = Structure.of(model).pos == "shortformer"
    for src, dst, attrs in sorted(g.edges(data=True), key=lambda e: (e[0], e[1])):
        kind = draw(pieces.kinds)
        if kind == "positions" and with_positions and not (src == "pos" and shortformer):
            attrs["positions"] = draw(pieces.positions)
        elif kind == "mask" and dst in heads:
            chosen = {c: masks[(dst, c)] for c in attrs["via"] if masks[(dst, c)] is not None}
            if chosen:
                attrs["qk_mask"] = chosen


def claims(model: HookedTransformer, *, max_edges: int = 8, with_features: bool = True, per_position: bool = True,
           with_positions: bool = True, with_masks: bool = True, max_copies: int = 1) -> st.SearchStrategy[nx.DiGraph]:
    """A random hypothesis graph ``validate`` accepts: up to ``max_edges`` channel-edges of ``full_graph``,
    pruned to what reaches the logits, up to ``max_copies`` ``component=`` copies, then features (per position
    unless ``per_position`` is False: copy mode refuses them), positions masks and query-key masks."""
    edges = _channel_edges(model)
    pieces = _Pieces()
    picks = st.lists(st.sampled_from(range(len(edges))), max_size=max_edges, unique=True)

    @st.composite
    def graph(draw) -> nx.DiGraph:
        g = _graph([edges[i] for i in sorted(draw(picks))])
        for i in range(draw(st.integers(0, max_copies))):
            _add_copy(draw, g, model, i)
        g = prune_graph(g)
        _decorate(draw, g, model, pieces, with_features=with_features, per_position=per_position,
                  with_positions=with_positions, with_masks=with_masks)
        return g

    return graph()


def _claimed_by_a_copy(g: nx.DiGraph, src: str, dst: str, channel: str | None) -> bool:
    """Whether another node of ``src``'s component (a ``component=`` copy, or its original) enters ``dst``'s input
    ``channel`` (None: the one input of an MLP or the logits)."""
    if dst not in g:
        return False
    component = str(g.nodes[src].get("component", src)) if src in g else src
    return any(other != src and str(g.nodes[other].get("component", other)) == component
               and (channel is None or channel in attrs.get("via", ""))
               for other, _, attrs in g.in_edges(dst, data=True))


@st.composite
def extensions(draw, model: HookedTransformer, graph: nx.DiGraph, *, max_extra: int = 4) -> nx.DiGraph:
    """``graph`` with up to ``max_extra`` more channel-edges of the full graph (features and masks kept)."""
    g = graph.copy()
    edges = _channel_edges(model)
    for i in draw(st.lists(st.sampled_from(range(len(edges))), max_size=max_extra, unique=True)):
        src, dst, channel = edges[i]
        if _claimed_by_a_copy(g, src, dst, channel):
            continue  # a copy of src already enters that input: a second node of src there is refused
        if not g.has_edge(src, dst):
            g.add_edge(src, dst, **({} if channel is None else {"via": channel}))
        elif channel is not None and channel not in g.edges[src, dst].get("via", ""):
            if g.edges[src, dst].get("qk_mask") is not None or g.edges[src, dst].get("positions") is not None:
                continue  # a restricted edge keeps its channels
            g.edges[src, dst]["via"] = "".join(sorted(g.edges[src, dst]["via"] + channel))
    return prune_graph(g)

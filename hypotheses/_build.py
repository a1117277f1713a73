"""Graph builders shared by the induction hypothesis files: the Redwood induction baseline, the "thirds"
and the two-head mechanism with optional refinements. Each hypothesis file is one call to these.

Convention (Chan et al. 2022, "Causal scrubbing: results on induction heads"): start from the full graph,
remove every edge into the induction heads (the Redwood baseline: their inputs resampled), then add back
the claimed paths into them. A previous-token head on a mechanism path is a separate graph node (an
alias, node attr ``component``) whose own inputs are claimed as in the mechanism: V reads the token
embedding, Q/K read the positions only, while the head's ordinary node keeps its full inputs elsewhere.

Models with MLPs: "the token embedding" is ``roles.embedding``, the embedding alone or the embedding and
mlp.0 (when ``hypotheses._heads.mlp0_token_share`` says mlp.0's output is mostly a function of the current
token). mlp.0 then enters as an alias node ``mlp.0~token`` that reads the embedding only (its input from
the layer-0 heads is resampled). The previous-token head of each induction head is the one the roles name
for it (``HeadRoles.previous_for``: any earlier layer); its K path is the direct one through the residual
stream. Every role is filtered to the components computed before the receiver.

REMIX ladder (``Remix``, ``remix_graph``): Redwood's REMIX day-3 rungs in the same convention: each rung
resamples one part of the induction heads' inputs and claims every other input in full (the ``hypotheses/remix_*.py``
files; the previous-token head on K keeps all its own inputs, as REMIX's ``a0.prev`` does).
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
from transformer_lens import HookedTransformer

from hypotheses._heads import HeadRoles
from scrub.claims.features import after_earlier_occurrence
from scrub.claims.hypothesis import full_graph
from scrub.claims.sites import Head, parse_channel, parse_component
from scrub.claims.structure import Structure


def senders_before(model: HookedTransformer, receiver: str) -> list[str]:
    """Every component whose output can enter ``receiver`` (embed, pos, earlier heads and MLPs), as the
    model's structure says."""
    return [str(s) for s in Structure.of(model).senders(parse_component(receiver, model.cfg))]


def _component(g: nx.DiGraph, model: HookedTransformer, node: str):
    """The model component a graph node stands for (an alias node names it in its ``component``)."""
    name = g.nodes[node].get("component", node) if node in g else node
    return parse_component(name, model.cfg)


def _via(g: nx.DiGraph, model: HookedTransformer, sender: str, receiver: str, channels: str) -> str:
    """``channels`` minus those ``sender`` cannot enter (positions never enter v in a shortformer model);
    "in" for a receiver that is not a head."""
    structure = Structure.of(model)
    s, r = _component(g, model, sender), _component(g, model, receiver)
    if not isinstance(r, Head):
        return "in" if structure.feeds(s, r) else ""
    return "".join(c for c in channels if structure.feeds(s, r, parse_channel(c)))


def add_edge(g: nx.DiGraph, model: HookedTransformer, sender: str, receiver: str, channels: str,
             positions=None, qk_mask=None) -> None:
    """Claim ``sender`` -> ``receiver`` through ``channels`` (ignored for MLP and logits receivers), merged
    with an existing unrestricted edge. A position-restricted edge where the pair already has an edge goes
    through a full copy of ``sender`` (a graph has one edge per pair, and one edge has one ``positions``).
    ``qk_mask`` (a ``scrub.claims.masks.QKMask``, heads only): the edge is claimed through the masked (query, key)
    pairs only; it merges with an existing edge of the same mask and goes through a full copy otherwise."""
    via = _via(g, model, sender, receiver, channels)
    if not via:
        return
    attrs = {} if via == "in" else {"via": via}
    if qk_mask is not None:
        attrs["qk_mask"] = qk_mask
    if g.has_edge(sender, receiver):
        old = g.edges[sender, receiver]
        if positions is None and old.get("positions") is None and old.get("qk_mask") == qk_mask:
            if via != "in":
                g.edges[sender, receiver]["via"] = "".join(sorted(set(old["via"]) | set(via)))
            return
        sender = full_copy(g, model, sender, f"{receiver}:{via}")
    g.add_edge(sender, receiver, **attrs, **({"positions": positions} if positions is not None else {}))


def full_copy(g: nx.DiGraph, model: HookedTransformer, component: str, tag: str) -> str:
    """A copy of ``component`` with all its inputs claimed (the same as its full-graph node)."""
    node = f"{component}#{tag}"
    g.add_node(node, component=component)
    if component not in ("embed", "pos"):
        for sender in senders_before(model, component):
            add_edge(g, model, sender, node, "qkv")
    return node


def remove_inputs(g: nx.DiGraph, heads: tuple[str, ...]) -> nx.DiGraph:
    """Drop every edge into ``heads``: their inputs become unclaimed (resampled)."""
    g.remove_edges_from([(s, t) for s, t in list(g.edges) if t in heads])
    return g


TOKEN_MLP = "mlp.0~token"  # the alias of mlp.0 that reads the token embedding only


def add_token_embedding(g: nx.DiGraph, model: HookedTransformer, embedding: tuple[str, ...], receiver: str,
                        channel: str) -> set[str]:
    """Claim "the token embedding" into ``receiver``'s ``channel``: ``embed``, and with ``"mlp.0"`` in
    ``embedding`` the alias ``mlp.0~token`` (mlp.0 reading the embedding only) where mlp.0 can feed the
    receiver. Returns the components claimed."""
    add_edge(g, model, "embed", receiver, channel)
    claimed = {"embed"}
    if "mlp.0" in embedding and Structure.of(model).has_mlps and _via(g, model, "mlp.0", receiver, channel):
        if TOKEN_MLP not in g:
            g.add_node(TOKEN_MLP, component="mlp.0")
            add_edge(g, model, "embed", TOKEN_MLP, "in")
        add_edge(g, model, TOKEN_MLP, receiver, channel)
        claimed.add("mlp.0")
    return claimed


def mechanism_alias(g: nx.DiGraph, model: HookedTransformer, head: str, receiver: str,
                    embedding: tuple[str, ...] = ("embed",)) -> str:
    """A copy of the previous-token ``head`` for the mechanism path into ``receiver``: V reads the token
    embedding (``embedding``), Q and K the positions (its attention is claimed to be positional); nothing
    else of its input is claimed."""
    node = f"{head}~{receiver}"
    g.add_node(node, component=head)
    add_token_embedding(g, model, embedding, node, "v")
    add_edge(g, model, "pos", node, "qk")
    return node


@dataclass(frozen=True)
class Mechanism:
    """Which paths into an induction head are claimed. The defaults are the minimal two-head mechanism
    (Elhage et al. 2021): Q and V read the token embedding, K reads the previous-token head."""

    q: bool = True  # claim Q by the mechanism (False: Q keeps all its inputs)
    k: bool = True
    v: bool = True
    k_heads: str = "previous"  # "previous": the receiver's previous-token head; "like": all previous-token-like
    further_back: bool = False  # K also reads the earlier heads that attend 2-4 tokens back
    positions: bool = False  # pos into Q and K of the induction heads
    qv_layer0: bool = False  # Q and V also read the earlier heads that are not previous-token-like and the
    # earlier MLPs outside the token embedding (full inputs); at 2 layers: the other layer-0 heads
    k_embed: bool = False  # K also reads the token embedding directly
    restricted: bool = False  # at key positions where no match is possible, K and V read all their inputs


def _k_heads(roles: HeadRoles, mech: Mechanism, receiver: str) -> list[str]:
    own = roles.previous_for(receiver)
    if mech.k_heads == "previous":
        heads = [own]
    else:
        heads = list(dict.fromkeys([own, *roles.early(roles.previous_like, receiver)]))
    return heads + (roles.early(roles.further_back, receiver) if mech.further_back else [])


def _other_early(model: HookedTransformer, roles: HeadRoles, receiver: str) -> list[str]:
    """What the Q/V refinement adds: earlier heads in no previous-token-like role, and earlier MLPs that are
    not part of the token embedding."""
    early = tuple(dict.fromkeys((*roles.further_back, *(roles.other_early or roles.other_layer0))))
    heads = roles.early(early, receiver)
    layer = parse_component(receiver, model.cfg).layer
    mlps = [f"mlp.{lay}" for lay in range(layer)
            if Structure.of(model).has_mlps and f"mlp.{lay}" not in roles.embedding]
    return heads + mlps


def no_match_keys(tokens):
    """Key positions whose previous token occurs only once: no induction match can land there."""
    return ~after_earlier_occurrence(tokens)  # [batch, seq]


def claim_mechanism(g: nx.DiGraph, model: HookedTransformer, roles: HeadRoles, receiver: str, mech: Mechanism) -> None:
    """Add the claimed paths into ``receiver`` (whose inputs were removed) as ``mech`` says."""
    others = _other_early(model, roles, receiver)  # earlier components other than previous-token-like heads
    claimed = {"q": set(), "k": set(), "v": set()}
    for channel, on in (("q", mech.q), ("k", mech.k), ("v", mech.v)):
        if not on:  # this channel is not under test: it keeps every input
            for sender in senders_before(model, receiver):
                add_edge(g, model, sender, receiver, channel)
            continue
        if channel in "qv" or mech.k_embed:
            claimed[channel] |= add_token_embedding(g, model, roles.embedding, receiver, channel)
        if channel in "qk" and mech.positions:
            add_edge(g, model, "pos", receiver, channel)
        if channel in "qv" and mech.qv_layer0:
            for sender in others:
                add_edge(g, model, sender, receiver, channel)
                claimed[channel].add(sender)
        if channel == "k":
            for head in _k_heads(roles, mech, receiver):
                if parse_component(receiver, model.cfg).layer > 0:
                    add_edge(g, model, mechanism_alias(g, model, head, receiver, roles.embedding), receiver, "k")
                    claimed["k"].add(head)
    if mech.restricted:
        for channel in "kv":
            if getattr(mech, channel):
                for sender in senders_before(model, receiver):
                    if sender not in claimed[channel] and sender != "pos":
                        add_edge(g, model, sender, receiver, channel, positions=no_match_keys)


def induction_baseline(model: HookedTransformer, roles: HeadRoles,
                       receivers: tuple[str, ...] | None = None) -> nx.DiGraph:
    """The full graph with every input of the induction heads resampled (Redwood's induction baseline)."""
    return remove_inputs(full_graph(model), receivers or roles.induction)


def mechanism_graph(model: HookedTransformer, roles: HeadRoles, mech: Mechanism = Mechanism(),
                    receivers: tuple[str, ...] | None = None) -> nx.DiGraph:
    """The induction baseline plus the claimed paths of ``mech`` into each receiver."""
    receivers = receivers or roles.induction
    g = induction_baseline(model, roles, receivers)
    for receiver in receivers:
        claim_mechanism(g, model, roles, receiver, mech)
    return g


def behavioral_graph(model: HookedTransformer, roles: HeadRoles) -> nx.DiGraph:
    """Only the behavioral induction heads reach the logits, each with all its inputs (full subgraph)."""
    heads = roles.behavioral or roles.induction
    g = full_graph(model)
    g.remove_edges_from([(s, "logits") for s in list(g.predecessors("logits")) if s not in heads])
    keep = nx.ancestors(g, "logits") | {"logits"}
    g.remove_nodes_from([n for n in list(g.nodes) if n not in keep])
    return g


def claim_k_via_mlp0(g: nx.DiGraph, model: HookedTransformer, roles: HeadRoles) -> nx.DiGraph:
    """Add to a mechanism graph the route previous-token head -> mlp.0 -> induction head K: for each induction
    head, a copy of mlp.0 (``mlp.0~R:k``) that reads the token embedding and the layer-0 previous-token-like
    heads (each as the mechanism's copy: V the token embedding, Q/K positions) enters its K. Models with MLPs
    only (in sequential blocks mlp.0 reads the layer-0 heads' output)."""
    structure = Structure.of(model)
    if not structure.has_mlps or structure.parallel:
        return g
    for receiver in roles.induction:
        if not _via(g, model, "mlp.0", receiver, "k"):
            continue
        node = f"mlp.0~{receiver}:k"
        g.add_node(node, component="mlp.0")
        add_edge(g, model, "embed", node, "in")
        for head in (h for h in roles.previous_like if parse_component(h, model.cfg).layer == 0):
            add_edge(g, model, mechanism_alias(g, model, head, node, roles.embedding), node, "in")
        add_edge(g, model, node, receiver, "k")
    return g


# --- Redwood's REMIX day-3 induction ladder ------------------------------------------------------------------

@dataclass(frozen=True)
class Remix:
    """One rung of Redwood's REMIX day-3 induction ladder (``remix_d3_instructions.md`` of
    redwoodresearch/remix_public): starting from the induction baseline (every input of the induction heads
    resampled), the inputs not under test are claimed in full and each input under test reads only:

    - ``v``: the token embedding (REMIX "ev": the paths into V through the layer-0 attention resampled);
    - ``q``: the token embedding (REMIX "eq"), and the positions (never resampled in REMIX);
    - ``k``: the previous-token head of the receiver with all its own inputs (REMIX "pth-k": the direct
      embedding path and the other layer-0 heads into K resampled), and the positions.

    ``prev_mask`` (a ``scrub.claims.masks.QKMask``, with ``k``): the previous-token head as it feeds K is a copy whose
    V input reads its claimed inputs only through the masked (query, key) pairs, e.g. the previous position
    only (REMIX's bonus "fancy k", the ``attn_probs * mask`` split); its Q and K keep all their inputs.
    ``local`` (a ``QKMask``): this project's "second role" refinement, not REMIX's: through the masked pairs
    (e.g. ``within(4)``, the last few keys) each input under test named in ``local_channels`` also reads all
    the other inputs of the head, so the head is claimed as an induction head beyond the mask and as an
    unrestricted local head inside it. ``k_embed`` (ours): with ``k``, K also reads the token embedding directly,
    a second, duplicate-token role (keys that match the current token itself)."""

    v: bool = False
    q: bool = False
    k: bool = False
    prev_mask: object | None = None  # scrub.claims.masks.QKMask
    local: object | None = None  # scrub.claims.masks.QKMask
    local_channels: str = "qkv"  # the inputs under test that take the ``local`` second role
    k_embed: bool = False  # with ``k``: K also reads the token embedding (a duplicate-token second role; ours)


def masked_previous(g: nx.DiGraph, model: HookedTransformer, head: str, receiver: str, mask) -> str:
    """A copy of the previous-token ``head`` for ``receiver``'s K: Q and K read all its inputs; V reads all its
    inputs through the (query, key) pairs of ``mask`` and resampled ones through the others."""
    node = f"{head}~{receiver}@{mask}"
    g.add_node(node, component=head)
    for sender in senders_before(model, head):
        add_edge(g, model, sender, node, "qk")
        add_edge(g, model, sender, node, "v", qk_mask=mask)
    return node


def claim_remix(g: nx.DiGraph, model: HookedTransformer, roles: HeadRoles, receiver: str, rung: Remix) -> None:
    """Add the claimed inputs of ``receiver`` (whose inputs were removed) as ``rung`` says."""
    for channel, on in (("q", rung.q), ("k", rung.k), ("v", rung.v)):
        if not on:
            for sender in senders_before(model, receiver):
                add_edge(g, model, sender, receiver, channel)
            continue
        claimed: set[str] = set()
        if channel in "qv":
            claimed |= add_token_embedding(g, model, roles.embedding, receiver, channel)
        if channel in "qk":
            add_edge(g, model, "pos", receiver, channel)
            claimed.add("pos")
        if channel == "k":
            prev = roles.previous_for(receiver)
            node = prev if rung.prev_mask is None else masked_previous(g, model, prev, receiver, rung.prev_mask)
            add_edge(g, model, node, receiver, "k")
            claimed.add(prev)
            if rung.k_embed:
                claimed |= add_token_embedding(g, model, roles.embedding, receiver, "k")
        if rung.local is not None and channel in rung.local_channels:
            for sender in senders_before(model, receiver):
                if sender not in claimed:
                    add_edge(g, model, sender, receiver, channel, qk_mask=rung.local)


def remix_graph(model: HookedTransformer, roles: HeadRoles, rung: Remix,
                receivers: tuple[str, ...] | None = None) -> nx.DiGraph:
    """The induction baseline plus the claimed inputs of ``rung`` into each receiver (the induction heads)."""
    receivers = receivers or roles.induction
    g = induction_baseline(model, roles, receivers)
    for receiver in receivers:
        claim_remix(g, model, roles, receiver, rung)
    return g

"""Graph views: a claim's components laid out by layer with its claimed edges by input (q, k, v) and the
resampled inputs of its nodes faint; and the path-patching effects of a ``PatchMatrix`` as edges, top k by
|effect| with a control (a 12 x 12 model has about 33k paths)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from scrub.claims.hypothesis import Claim
from scrub.claims.sites import Channel, Component, Embed, Head, Logits, Mlp, Pos
from scrub.claims.structure import Structure
from scrub.views.page import View, ViewKind, rounded

if TYPE_CHECKING:
    from scrub.patching.paths import PatchMatrix

TOP_K = 40  # edges with a value shown at first; the view's slider changes it
RESAMPLED_LIMIT = 600  # resampled inputs drawn at first only up to this many (a checkbox shows them all)


def column(component: Component, n_layers: int) -> float:
    """The column of a component: inputs, then each layer's heads and MLP, then the logits."""
    if isinstance(component, (Embed, Pos)):
        return 0.0
    if isinstance(component, Logits):
        return 2.0 * n_layers + 2.0
    return 1.0 + 2.0 * component.depth  # a head at 1 + 2L, an MLP at 2 + 2L


def kind(component: Component) -> str:
    """The box style of a component in the graph."""
    if isinstance(component, (Embed, Pos)):
        return "input"
    if isinstance(component, Logits):
        return "logits"
    return "mlp" if isinstance(component, Mlp) else "head"


def graph_node(node_id: str, component: Component, n_layers: int, *, claimed: bool,
               note: str = "") -> dict[str, Any]:
    return {"id": node_id, "label": node_id, "col": column(component, n_layers), "kind": kind(component),
            "claimed": claimed, "note": note}


def graph_edge(source: str, target: str, channel: Channel, *, claimed: bool, value: float | None = None,
               low: float | None = None, high: float | None = None, note: str = "", status: str | None = None,
               label: str | None = None) -> dict[str, Any]:
    """One edge of a graph view; ``note`` is shown on hover, ``status`` styles it (``uncertain``: dotted),
    ``label`` names its value where it is not the view's ``value_label``."""
    out = {"source": source, "target": target, "channel": channel.value, "claimed": claimed,
           "value": None if value is None else rounded(value), "low": None if low is None else rounded(low),
           "high": None if high is None else rounded(high), "note": note}
    return out | ({} if status is None else {"status": status}) | ({} if label is None else {"label": label})


def claim_graph(claim: Claim, structure: Structure, *, title: str | None = None) -> View:
    """The claim on every component of the model: claimed edges drawn by input channel, each claimed node's
    unclaimed (resampled) inputs faint."""
    n_layers = structure.n_layers
    components: list[Component] = [*structure.sources, Logits()]
    claimed_ids = {n.id for n in claim.nodes}
    nodes = [graph_node(str(c), c, n_layers, claimed=str(c) in claimed_ids) for c in components]
    nodes += [graph_node(n.id, n.component, n_layers, claimed=True, note=f"({n.component} with a feature)")
              for n in claim.nodes if n.id != str(n.component)]
    edges = []
    for e in claim.edges:
        where = ("at positions " + getattr(e.positions, "__name__", "fn")) if e.positions is not None else ""
        edges.append(graph_edge(e.source, e.target, e.channel, claimed=True,
                           note=where + (" with a query-key mask" if e.qk_mask is not None else "")))
    for node in claim.nodes:
        receiver = node.component
        if isinstance(receiver, (Embed, Pos)):
            continue
        for channel in structure.channels(receiver):
            kept = {str(claim.node(e.source).component) for e in claim.inputs_of(node.id) if e.channel == channel}
            edges += [graph_edge(str(s), node.id, channel, claimed=False) for s in structure.senders(receiver, channel)
                      if str(s) not in kept]
    n_claimed = len(claim.edges)
    note = (f"{n_claimed} claimed edges; resampled inputs of the claimed nodes faint. Hover an edge or a node."
            if claim.root is not None else "The empty claim: every path is resampled.")
    return View(ViewKind.GRAPH, title or f"Claim graph: {claim.name}",
                {"nodes": nodes, "edges": edges, "value_label": "effect", "top_k": TOP_K,
                 "resampled_limit": RESAMPLED_LIMIT}, note=note)


def matrix_graph(matrix: PatchMatrix, n_layers: int, *, title: str = "Path-patching effects as a graph") -> View:
    """Every sender -> receiver:channel -> logits effect and every sender -> logits effect as an edge with
    its value; the view shows the top k by |effect| (dashed: negative)."""
    components: dict[str, Component] = {str(c): c for c in (*matrix.senders, *matrix.receivers)}
    components["logits"] = Logits()
    nodes = [graph_node(name, c, n_layers, claimed=False) for name, c in components.items()]
    edges = []
    effects = matrix.effects.double()  # [sender, receiver, channel]
    finite = ~torch.isnan(effects)
    for i, j, k in finite.nonzero().tolist():
        receiver = matrix.receivers[j]
        if isinstance(receiver, Mlp) and k > 0:
            continue  # an MLP's one input is written to every channel column
        channel = Channel.IN if isinstance(receiver, Mlp) else matrix.channels[k]
        edges.append(graph_edge(str(matrix.senders[i]), str(receiver), channel, claimed=True,
                           value=float(effects[i, j, k])))
    edges += [graph_edge(str(s), "logits", Channel.IN, claimed=True, value=float(v))
              for s, v in zip(matrix.senders, matrix.to_logits.tolist(), strict=True)]
    note = (f"{len(edges)} paths ({matrix.metric}: patched − clean; clean {matrix.clean:.4g}, corrupted "
            f"{matrix.corrupted:.4g}); width: |effect|, dashed: negative. Move the slider to show more.")
    return View(ViewKind.GRAPH, title, {"nodes": nodes, "edges": edges, "value_label": "effect",
                                        "top_k": TOP_K, "resampled_limit": RESAMPLED_LIMIT}, note=note)


def heads_of(claim: Claim) -> list[Head]:
    """The claim's heads in layer order, once each."""
    return sorted({n.component for n in claim.nodes if isinstance(n.component, Head)})

"""Treeification: which datum every claimed and unclaimed input reads.

Following the causal scrubbing write-up (Chan et al. 2022), every path of the claim is evaluated on its own
data. Two sampling units are offered (``Unit``):

- ``Unit.NODE`` (default, Redwood's implementation): one draw per hypothesis node per datum. Every path
  through a node shares that node's draws, so a node's value depends only on the datum it is computed
  on: the claim is kept as a graph of ``TreeNode``s (one per hypothesis node, children shared), each
  computed once on the data its parents read it on, and a parent on datum d reads its child's row ``read[d]``.
  Cost grows with the number of hypothesis nodes, not of paths, so it runs at any depth.
- ``Unit.COPY`` (strict treeification): the claim graph is unrolled from ``logits`` into a tree with one
  copy per path prefix, and every copy draws its own data, row by row. Exact to the write-up, but the
  tree grows exponentially with depth: refused beyond ``MAX_TREE_NODES`` copies.

``assign`` gives every node the data it is computed on (its *rows*), the datum its unclaimed inputs read
(one draw per node by default; optionally one per unclaimed input) and, for a feature, the agreeing datum,
all as dataset ids drawn by ``sampling.Sampler`` from the whole dataset of a run (or a pool of it).
``localize`` then numbers the data a batch needs (the batch first, then every datum drawn from outside it)
so that one clean run covers them all. In node mode a node is computed only on the data its parents read
it on, and ``Assignment.read`` tells a parent on datum d which row to read (per position for a
per-position feature). Draws are seeded by the node's identity (its hypothesis node, or its path in copy
mode) and the datum (or, in copy mode, the root example), so adding a path never changes what the other
nodes see, and the batch size never changes any draw.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import torch
from torch import Tensor

from scrub.claims.features import Feature
from scrub.claims.hypothesis import Claim, ClaimEdge, PositionFn
from scrub.claims.masks import QKMask
from scrub.claims.sites import Channel, Component, Embed, Logits, Pos
from scrub.claims.structure import Structure
from scrub.engine.sampling import Sampler
from scrub.errors import ScrubError

MAX_TREE_NODES = 20_000


class TreeTooLargeError(ScrubError):
    """The unrolled claim has more copies than the engine will evaluate."""


class Unit(str, Enum):
    """What one draw of data is made for: each hypothesis node (shared by its paths), or each tree copy."""

    NODE = "node"
    COPY = "copy"


@dataclass(frozen=True, eq=False)
class TreeInput:
    """A claimed input of a tree node: ``child``'s output enters through ``channel`` at ``positions`` (receiver
    positions), or, into a head, through the (query, key) pairs of ``qk_mask`` (``scrub.claims.masks``)."""

    channel: Channel
    child: "TreeNode"
    positions: PositionFn | None
    qk_mask: QKMask | None = None


@dataclass(frozen=True, eq=False)
class TreeNode:
    """One copy of a component with a stable identity ``path``: the path from the logits (copy mode), or
    ``("node", id)`` for a hypothesis node shared by every path through it (node mode). ``pieces``
    (unrolled per-position nodes only, for the naive reference): position s of the value is position s of
    ``pieces[s]``."""

    component: Component
    path: tuple[str, ...]
    feature: Feature | None
    inputs: tuple[TreeInput, ...]
    shared: bool = False  # node mode: parents read this node's value through its ``read`` draw
    pieces: tuple["TreeNode", ...] = ()

    def walk(self):
        """This node and every node below it, once each, parents before children."""
        order: list[TreeNode] = []
        seen: set[int] = set()

        def visit(node: TreeNode) -> None:  # depth-first post-order, reversed below: a topological order
            if id(node) in seen:
                return
            seen.add(id(node))
            for inp in node.inputs:
                visit(inp.child)
            for piece in node.pieces:
                visit(piece)
            order.append(node)

        visit(self)
        return reversed(order)


def treeify(claim: Claim, unit: Unit = Unit.NODE) -> TreeNode:
    """The claim as nodes to evaluate: one per hypothesis node (``Unit.NODE``), or unrolled from its logits
    node into a tree with one copy per path prefix (``Unit.COPY``)."""
    if Unit(unit) == Unit.NODE:
        return _node_graph(claim)
    count = [0]

    def build(node_id: str, path: tuple[str, ...]) -> TreeNode:
        count[0] += 1
        if count[0] > MAX_TREE_NODES:
            raise TreeTooLargeError(
                f"hypothesis {claim.name!r} unrolls into more than {MAX_TREE_NODES} path copies, which strict "
                f"treeification (unit 'copy') evaluates one by one; use the default unit 'node' (one draw per "
                f"hypothesis node, any depth), or claim fewer paths"
            )
        node = claim.node(node_id)
        inputs = tuple(
            TreeInput(e.channel, build(e.source, path + (_step(e),)), e.positions, e.qk_mask)
            for e in claim.inputs_of(node_id)
        )
        return TreeNode(node.component, path, node.feature, inputs)

    if claim.root is None:
        return TreeNode(Logits(), ("logits",), None, ())
    return build(claim.root, ("logits",))


def _node_graph(claim: Claim) -> TreeNode:
    """One shared ``TreeNode`` per hypothesis node that reaches the logits."""
    if claim.root is None:
        return TreeNode(Logits(), ("node", "logits"), None, (), shared=True)
    built: dict[str, TreeNode] = {}

    def build(node_id: str) -> TreeNode:
        if node_id not in built:
            node = claim.node(node_id)
            inputs = tuple(TreeInput(e.channel, build(e.source), e.positions, e.qk_mask)
                           for e in claim.inputs_of(node_id))
            built[node_id] = TreeNode(node.component, ("node", node_id), node.feature, inputs, shared=True)
        return built[node_id]

    return build(claim.root)


def _step(edge: ClaimEdge) -> str:
    return f"{edge.source}:{edge.channel.value}"


@dataclass(frozen=True)
class SamplingOptions:
    """How data are drawn. ``unit``: one draw per hypothesis node per datum (default) or per tree copy;
    ``independent``: one draw per unclaimed input instead of one per node; ``allow_self``: a draw may
    return the datum it is drawn for (else only when nothing else agrees); ``pool``: draws come from this
    many sequences of the dataset, chosen by the seed (default None: the whole dataset)."""

    independent: bool = False
    allow_self: bool = False
    unit: Unit = Unit.NODE
    pool: int | None = None


UnclaimedKey = tuple[Channel, str]  # (channel, source) of an unclaimed input, for independent draws


@dataclass(frozen=True)
class Assignment:
    """The data one tree node reads. Before ``localize`` every datum is a dataset id; after it, an index
    into the run's data (the batch first, then the data drawn from outside it)."""

    datum: Tensor  # [rows] the data this node is computed on
    other: Tensor  # [rows] the datum its unclaimed inputs read (one draw per node)
    forced_self: Tensor  # [draws] bool: a feature draw could only return the datum it was drawn for
    other_is_self: Tensor  # [rows] bool: the unclaimed draw equals the row's own datum
    read: Tensor | None = None  # node mode: [data] or [data, seq] (per position): the row a parent on datum d reads
    keys: Tensor | None = None  # node mode, before localize: [k] the parent data ``rows`` are listed for
    rows: Tensor | None = None  # node mode, before localize: [k] or [k, seq] the row each of ``keys`` reads
    unclaimed: dict[UnclaimedKey, Tensor] | None = None  # independent mode: [rows] datum per unclaimed input


@dataclass
class Assignments:
    """Assignments for every tree node, keyed by path."""

    by_path: dict[tuple[str, ...], Assignment] = field(default_factory=dict)
    options: SamplingOptions = SamplingOptions()

    def __getitem__(self, node: TreeNode) -> Assignment:
        return self.by_path[node.path]

    def unclaimed(self, node: TreeNode, channel: Channel, source: str) -> Tensor:
        """The datum [rows] that ``source``'s unclaimed contribution to ``node``'s ``channel`` is read from."""
        a = self.by_path[node.path]
        if not self.options.independent:
            return a.other
        assert a.unclaimed is not None  # independent mode draws every unclaimed input
        return a.unclaimed[(channel, source)]

    def self_sample_rate(self) -> float:
        """Share of all draws (feature draws and unclaimed draws) that returned the datum they were drawn for."""
        flags = [torch.cat([a.forced_self.reshape(-1), a.other_is_self]) for a in self.by_path.values()]
        return float(torch.cat(flags).float().mean()) if flags else 0.0

    def self_draws(self) -> dict[str, float]:
        """Per node (hypothesis node id, or copy path): the share of its feature draws (per position, for a
        per-position feature) that could only return the datum they were drawn for. 0 without a feature."""
        return {_label(path): float(a.forced_self.float().mean()) if a.forced_self.numel() else 0.0
                for path, a in self.by_path.items()}


def _label(path: tuple[str, ...]) -> str:
    return path[1] if path[0] == "node" else " <- ".join(path)


def assign(root: TreeNode, sampler: Sampler, ids: Tensor, *, options: SamplingOptions = SamplingOptions(),
           structure: Structure | None = None) -> Assignments:
    """Draw, as dataset ids, the data of every node of ``root`` evaluated on the examples ``ids`` [batch].
    Independent draws need the model's ``structure`` (which unclaimed inputs each node has)."""
    if root.shared != (Unit(options.unit) == Unit.NODE):
        raise ScrubError(f"the tree was built for unit {'node' if root.shared else 'copy'!r} but the sampling options "
                         f"say {Unit(options.unit).value!r}: build it with treeify(claim, options.unit)")
    if options.independent and structure is None:
        raise ScrubError("independent draws need the model's structure: assign(..., structure=Structure.of(model))")
    out = Assignments(options=options)
    empty = torch.zeros(0, dtype=torch.bool, device="cpu")  # draws and their bookkeeping live on the CPU (sampling)

    def unclaimed(node: TreeNode, datum: Tensor, by: Tensor | None) -> dict[UnclaimedKey, Tensor] | None:
        if not options.independent or isinstance(node.component, (Embed, Pos)):
            return None
        assert structure is not None
        draws = {}
        for channel in structure.channels(node.component):
            for source in structure.residual_senders(node.component):
                purpose = f"unclaimed:{channel.value}:{source}"
                draws[(channel, str(source))] = sampler.agreeing(None, datum, node.path, purpose, by).datum
        return draws

    if root.shared:  # node mode: each node on the data its parents read it on
        parents: dict[tuple[str, ...], list[Tensor]] = {}
        for node in root.walk():
            keys = ids if node is root else torch.unique(torch.cat(parents[node.path]))  # [k] parent data
            if node.feature is None:
                datum, rows, forced = keys, torch.arange(keys.shape[0], device="cpu"), empty
            else:
                d = sampler.agreeing(node.feature, keys, node.path, "feature")  # [k] or [k, seq]
                datum, rows = torch.unique(d.datum, return_inverse=True)  # [rows], [k] or [k, seq]
                forced = d.is_self if options.allow_self else d.forced_self
            other = sampler.agreeing(None, datum, node.path, "unclaimed")
            out.by_path[node.path] = Assignment(datum, other.datum, forced, other.is_self, keys=keys, rows=rows,
                                                unclaimed=unclaimed(node, datum, None))
            for inp in node.inputs:
                parents.setdefault(inp.child.path, []).append(datum)
        return out

    def visit(node: TreeNode, parent: Tensor) -> None:  # copy mode: one row per root example
        if node.feature is None:
            datum, forced = parent, empty
        else:
            if node.feature.per_position:
                raise ScrubError(f"per-position feature {node.feature.name!r} needs the default unit 'node' (in unit "
                                 f"'copy' a copy would need one datum per position for each of its own copies)")
            d = sampler.agreeing(node.feature, parent, node.path, "feature", by=ids)
            datum, forced = d.datum, d.is_self if options.allow_self else d.forced_self
        other = sampler.agreeing(None, datum, node.path, "unclaimed", by=ids)
        out.by_path[node.path] = Assignment(datum, other.datum, forced, other.is_self,
                                            unclaimed=unclaimed(node, datum, ids))
        for inp in node.inputs:
            visit(inp.child, datum)

    visit(root, ids)
    return out


def localize(datas: list[Assignments], ids: Tensor, n: int, *, whole: bool = False) -> tuple[Tensor, list[Assignments]]:
    """Number every datum the assignments use: the examples ``ids`` [batch] first, then the others (``whole``:
    keep dataset ids, for a clean run of the whole dataset). Returns the dataset ids of the run's data [m] and
    the assignments with indices into them (and ``read`` tables)."""
    # dataset ids are CPU bookkeeping, like the draws they number; they index device tensors as they are
    lookup = torch.full((n,), -1, dtype=torch.long, device="cpu")  # dataset id -> index
    if whole:
        every = torch.arange(n, device="cpu")  # [n]
    else:
        used = [ids] + [t for data in datas for a in data.by_path.values()
                        for t in (a.datum, a.other, *(a.unclaimed or {}).values())]
        extra = torch.unique(torch.cat(used))
        every = torch.cat([ids, extra[~torch.isin(extra, ids)]])  # [m]
    lookup[every] = torch.arange(every.shape[0], device="cpu")
    out = []
    for data in datas:
        local = Assignments(options=data.options)
        for path, a in data.by_path.items():
            read = None
            if a.keys is not None and a.rows is not None:
                read = torch.full((every.shape[0], *a.rows.shape[1:]), -1, dtype=torch.long,
                                  device="cpu")  # [m] or [m, seq]
                read[lookup[a.keys]] = a.rows
            local.by_path[path] = Assignment(
                lookup[a.datum], lookup[a.other], a.forced_self, a.other_is_self, read,
                unclaimed=None if a.unclaimed is None else {k: lookup[v] for k, v in a.unclaimed.items()})
        out.append(local)
    return every, out


def assign_data(root: TreeNode, tokens: Tensor, *, seed: int, options: SamplingOptions = SamplingOptions(),
                structure: Structure | None = None) -> Assignments:
    """Draws among the rows of ``tokens`` only (the dataset is this batch), as indices into it: for tests,
    path patching and callers that evaluate one batch alone."""
    sampler = Sampler(tokens, seed=seed, pool_size=options.pool, allow_self=options.allow_self)
    ids = torch.arange(tokens.shape[0], device="cpu")  # [n] dataset ids for the CPU sampler
    every, (local,) = localize([assign(root, sampler, ids, options=options, structure=structure)], ids, ids.shape[0])
    assert torch.equal(every, ids)  # every datum is a row of the batch
    return local


def unroll(root: TreeNode, data: Assignments) -> tuple[TreeNode, Assignments]:
    """The copy-mode tree of a (localized) node-mode graph with the per-copy data its draws imply: a copy of
    node X under a parent copy on datum d is computed on X's row read_X[d]; a per-position node becomes one
    piece per position, each its own subtree. For the naive reference, which evaluates trees literally;
    small claims only."""
    out = Assignments(options=SamplingOptions(data.options.independent, data.options.allow_self, Unit.COPY))
    count = [0]

    def visit(node: TreeNode, path: tuple[str, ...], parent: Tensor | None) -> TreeNode:
        count[0] += 1
        if count[0] > MAX_TREE_NODES:
            raise TreeTooLargeError(f"the claim unrolls into more than {MAX_TREE_NODES} path copies")
        a = data[node]
        if parent is None:
            rows = torch.arange(a.datum.shape[0], device=a.datum.device)  # [batch] the root
        else:
            assert a.read is not None  # node mode: every child has a read table
            rows = a.read[parent]  # [batch] or [batch, seq]
        if rows.dim() == 2:
            pieces = tuple(copy(node, path + (f"@{s}",), rows[:, s]) for s in range(rows.shape[1]))
            return TreeNode(node.component, path, node.feature, (), pieces=pieces)
        return copy(node, path, rows)

    def copy(node: TreeNode, path: tuple[str, ...], rows: Tensor) -> TreeNode:
        a = data[node]
        datum, other = a.datum[rows], a.other[rows]  # [batch] x2
        none = torch.zeros(0, dtype=torch.bool, device=datum.device)  # [0] no feature draws in a copy
        out.by_path[path] = Assignment(datum, other, none, other == datum,
                                       unclaimed=None if a.unclaimed is None
                                       else {k: v[rows] for k, v in a.unclaimed.items()})
        inputs = tuple(TreeInput(i.channel, visit(i.child, path + (f"{i.child.path[-1]}:{i.channel.value}",), datum),
                                 i.positions, i.qk_mask) for i in node.inputs)
        return TreeNode(node.component, path, node.feature, inputs)

    tree = visit(root, ("logits",), None)
    return tree, out

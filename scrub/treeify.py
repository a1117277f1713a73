"""Treeification: which datum every claimed and unclaimed input reads.

Following the causal scrubbing write-up (Chan et al. 2022), every path of the claim is evaluated on its own
data. Two sampling units are offered (``Unit``):

- ``Unit.NODE`` (default, Redwood's implementation): one draw per hypothesis node per datum. Every path
  through a node shares that node's draws, so a node's value depends only on the datum it is computed
  on: the claim is kept as a graph of ``TreeNode``s (one per hypothesis node, children shared), each
  computed once on every datum of the batch, and a parent on datum d reads its child on ``read[d]``.
  Cost grows with the number of hypothesis nodes, not of paths, so it runs at any depth.
- ``Unit.COPY`` (strict treeification): the claim graph is unrolled from ``logits`` into a tree with one
  copy per path prefix, and every copy draws its own data, row by row. Exact to the write-up, but the
  tree grows exponentially with depth: refused beyond ``MAX_TREE_NODES`` copies.

``assign_data`` gives every node the datum it is computed on, the datum its unclaimed inputs read (one
draw per node by default; optionally one per unclaimed input) and, for a feature, the agreeing datum.
Draws are seeded by the node's identity (its hypothesis node, or its path in copy mode), so adding a
path never changes what the other nodes see.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import Enum

import torch
from torch import Tensor

from scrub.features import Feature, sample_agreeing, sample_other
from scrub.hypothesis import Claim, ClaimEdge, PositionFn
from scrub.sites import Channel, Component, Logits

MAX_TREE_NODES = 20_000


class TreeTooLargeError(ValueError):
    """The unrolled claim has more copies than the engine will evaluate."""


class Unit(str, Enum):
    """What one draw of data is made for: each hypothesis node (shared by its paths), or each tree copy."""

    NODE = "node"
    COPY = "copy"


@dataclass(frozen=True, eq=False)
class TreeInput:
    """A claimed input of a tree node: ``child``'s output enters through ``channel`` at ``positions``."""

    channel: Channel
    child: "TreeNode"
    positions: PositionFn | None


@dataclass(frozen=True, eq=False)
class TreeNode:
    """One copy of a component with a stable identity ``path``: the path from the logits (copy mode), or
    ``("node", id)`` for a hypothesis node shared by every path through it (node mode)."""

    component: Component
    path: tuple[str, ...]
    feature: Feature | None
    inputs: tuple[TreeInput, ...]
    shared: bool = False  # node mode: parents read this node's value through its ``read`` draw

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
            TreeInput(e.channel, build(e.source, path + (_step(e),)), e.positions) for e in claim.inputs_of(node_id)
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
            inputs = tuple(TreeInput(e.channel, build(e.source), e.positions) for e in claim.inputs_of(node_id))
            built[node_id] = TreeNode(node.component, ("node", node_id), node.feature, inputs, shared=True)
        return built[node_id]

    return build(claim.root)


def _step(edge: ClaimEdge) -> str:
    return f"{edge.source}:{edge.channel.value}"


@dataclass(frozen=True)
class SamplingOptions:
    """How data are drawn. ``unit``: one draw per hypothesis node per datum (default) or per tree copy;
    ``independent``: one draw per unclaimed input instead of one per node; ``allow_self``: a draw may
    return the datum it is drawn for (else only when nothing else agrees)."""

    independent: bool = False
    allow_self: bool = False
    unit: Unit = Unit.NODE


@dataclass(frozen=True)
class Assignment:
    """The data one tree node reads, as indices into the batch, one per reference row."""

    datum: Tensor  # [batch] the datum this copy is computed on
    other: Tensor  # [batch] the datum its unclaimed inputs read (shared draw)
    forced_self: Tensor  # [batch] bool: the feature draw could only return the parent's datum
    other_is_self: Tensor  # [batch] bool: the unclaimed draw equals this copy's own datum
    read: Tensor | None = None  # [batch] node mode: a parent's row d reads this node's row read[d] (None: d)


@dataclass
class Assignments:
    """Assignments for every tree node, keyed by path, plus the per-input draws in independent mode."""

    by_path: dict[tuple[str, ...], Assignment] = field(default_factory=dict)
    options: SamplingOptions = SamplingOptions()
    seed: int = 0
    salt: str = ""
    node_of: dict[tuple[str, ...], tuple[tuple[str, ...], Tensor]] = field(default_factory=dict)  # see ``unroll``

    def __getitem__(self, node: TreeNode) -> Assignment:
        return self.by_path[node.path]

    def unclaimed(self, node: TreeNode, channel: Channel, source: str) -> Tensor:
        """The datum that ``source``'s unclaimed contribution to ``node``'s ``channel`` is read from."""
        a = self.by_path[node.path]
        if not self.options.independent:
            return a.other
        path, rows = self.node_of.get(node.path, (node.path, None))  # an unrolled copy draws as its node does
        gen = generator(self.seed, self.salt, path, f"unclaimed:{channel.value}:{source}")
        if rows is not None:
            every = torch.arange(a.datum.shape[0])
            return sample_other(every, gen, allow_self=self.options.allow_self).index[rows]
        return sample_other(a.datum, gen, allow_self=self.options.allow_self).index

    def self_sample_rate(self) -> float:
        """Share of all draws (feature draws and unclaimed draws) that returned the datum they were drawn for."""
        flags = [torch.cat([a.forced_self, a.other_is_self]) for a in self.by_path.values()]
        return float(torch.cat(flags).float().mean()) if flags else 0.0

    def self_draws(self) -> dict[str, float]:
        """Per node (hypothesis node id, or copy path): the share of its feature draws that could only return
        the datum they were drawn for (the feature found no other agreeing datum). 0 for nodes without one."""
        return {_label(path): float(a.forced_self.float().mean()) for path, a in self.by_path.items()}


def _label(path: tuple[str, ...]) -> str:
    return path[1] if path[0] == "node" else " <- ".join(path)


def generator(seed: int, salt: str, path: tuple[str, ...], purpose: str) -> torch.Generator:
    """A generator seeded by (seed, batch salt, tree path, purpose) only: stable under adding paths."""
    digest = hashlib.sha256(repr((seed, salt, path, purpose)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def assign_data(root: TreeNode, tokens: Tensor, *, seed: int, salt: str = "",
                options: SamplingOptions = SamplingOptions()) -> Assignments:
    """Draw the datum of every node and of its unclaimed inputs for one batch of reference data."""
    if root.shared != (Unit(options.unit) == Unit.NODE):
        raise ValueError(f"the tree was built for unit {'node' if root.shared else 'copy'!r} but the sampling options "
                         f"say {Unit(options.unit).value!r}: build it with treeify(claim, options.unit)")
    n = tokens.shape[0]
    out = Assignments(options=options, seed=seed, salt=salt)
    codes_cache: dict[int, Tensor] = {}  # feature codes of the batch, computed once per feature

    def codes(feature: Feature) -> Tensor:
        if id(feature) not in codes_cache:
            codes_cache[id(feature)] = feature.codes(tokens)
        return codes_cache[id(feature)]

    if root.shared:  # node mode: each node computed on every datum; draws are maps datum -> datum
        every = torch.arange(n)
        for node in root.walk():
            read, forced = None, torch.zeros(n, dtype=torch.bool)
            if node.feature is not None:
                draw = sample_agreeing(codes(node.feature), every, generator(seed, salt, node.path, "feature"),
                                       allow_self=options.allow_self)
                read, forced = draw.index, draw.index == every if options.allow_self else draw.forced_self
            other = sample_other(every, generator(seed, salt, node.path, "unclaimed"), allow_self=options.allow_self)
            out.by_path[node.path] = Assignment(every, other.index, forced, other.index == every, read)
        return out

    def visit(node: TreeNode, parent: Tensor) -> None:
        if node.feature is None:
            datum, forced = parent, torch.zeros(n, dtype=torch.bool)
        else:
            draw = sample_agreeing(codes(node.feature), parent, generator(seed, salt, node.path, "feature"),
                                   allow_self=options.allow_self)
            datum, forced = draw.index, draw.forced_self & (draw.index == parent)
            if options.allow_self:
                forced = draw.index == parent
        other = sample_other(datum, generator(seed, salt, node.path, "unclaimed"), allow_self=options.allow_self)
        out.by_path[node.path] = Assignment(datum, other.index, forced, other.index == datum)
        for inp in node.inputs:
            visit(inp.child, datum)

    visit(root, torch.arange(n))
    return out


def unroll(root: TreeNode, data: Assignments) -> tuple[TreeNode, Assignments]:
    """The copy-mode tree of a node-mode graph with the per-copy data its draws imply: a copy of node X under
    a parent copy on datum d is computed on read_X[d] and reads its unclaimed inputs where X's draws for
    that datum say. For the naive reference, which evaluates trees literally; small claims only."""
    out = Assignments(options=SamplingOptions(data.options.independent, data.options.allow_self, Unit.COPY),
                      seed=data.seed, salt=data.salt)
    count = [0]

    def visit(node: TreeNode, path: tuple[str, ...], parent: Tensor) -> TreeNode:
        count[0] += 1
        if count[0] > MAX_TREE_NODES:
            raise TreeTooLargeError(f"the claim unrolls into more than {MAX_TREE_NODES} path copies")
        a = data[node]
        datum = parent if a.read is None else a.read[parent]  # [batch]
        other = a.other[datum]  # [batch]
        out.by_path[path] = Assignment(datum, other, a.forced_self[parent], other == datum)
        out.node_of[path] = (node.path, datum)
        inputs = tuple(TreeInput(i.channel, visit(i.child, path + (f"{i.child.path[-1]}:{i.channel.value}",), datum),
                                 i.positions) for i in node.inputs)
        return TreeNode(node.component, path, node.feature, inputs)

    tree = visit(root, ("logits",), torch.arange(data[root].datum.shape[0]))
    return tree, out

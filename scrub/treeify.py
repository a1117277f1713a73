"""Treeification: which datum every claimed and unclaimed input reads.

Following the causal scrubbing write-up (Chan et al. 2022), each path of the claim gets its own copy of
the components on it: the claim graph is unrolled from ``logits`` into a tree of ``TreeNode``s, one per
path prefix. ``assign_data`` then gives every tree node the datum it is computed on (its parent's datum,
or one drawn to agree with it on the node's feature) and the datum its unclaimed inputs read (one draw
per tree node by default, as in Redwood's implementation; optionally one per unclaimed input). Draws are
seeded by the tree node's path, so adding a path never changes what the other nodes see.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch
from torch import Tensor

from scrub.features import Feature, sample_agreeing, sample_other
from scrub.hypothesis import Claim, ClaimEdge, PositionFn
from scrub.sites import Channel, Component, Logits

MAX_TREE_NODES = 20_000


class TreeTooLargeError(ValueError):
    """The unrolled claim has more copies than the engine will evaluate."""


@dataclass(frozen=True)
class TreeInput:
    """A claimed input of a tree node: ``child``'s output enters through ``channel`` at ``positions``."""

    channel: Channel
    child: "TreeNode"
    positions: PositionFn | None


@dataclass(frozen=True)
class TreeNode:
    """One copy of a component, reached from the logits along ``path`` (its stable identity)."""

    component: Component
    path: tuple[str, ...]
    feature: Feature | None
    inputs: tuple[TreeInput, ...]

    def walk(self):
        """This node and all below it, parents before children."""
        yield self
        for inp in self.inputs:
            yield from inp.child.walk()


def treeify(claim: Claim) -> TreeNode:
    """Unroll the claim graph from its logits node into a tree with one copy per path prefix."""
    count = [0]

    def build(node_id: str, path: tuple[str, ...]) -> TreeNode:
        count[0] += 1
        if count[0] > MAX_TREE_NODES:
            raise TreeTooLargeError(
                f"hypothesis {claim.name!r} unrolls into more than {MAX_TREE_NODES} path copies; claim fewer "
                f"paths, or split it with node 'component' aliases so shared sub-claims are not repeated"
            )
        node = claim.node(node_id)
        inputs = tuple(
            TreeInput(e.channel, build(e.source, path + (_step(e),)), e.positions) for e in claim.inputs_of(node_id)
        )
        return TreeNode(node.component, path, node.feature, inputs)

    if claim.root is None:
        return TreeNode(Logits(), ("logits",), None, ())
    return build(claim.root, ("logits",))


def _step(edge: ClaimEdge) -> str:
    return f"{edge.source}:{edge.channel.value}"


@dataclass(frozen=True)
class SamplingOptions:
    """How data are drawn. ``independent``: one draw per unclaimed input instead of one per node;
    ``allow_self``: a draw may return the datum it is drawn for (else only when nothing else agrees)."""

    independent: bool = False
    allow_self: bool = False


@dataclass(frozen=True)
class Assignment:
    """The data one tree node reads, as indices into the batch, one per reference row."""

    datum: Tensor  # [batch] the datum this copy is computed on
    other: Tensor  # [batch] the datum its unclaimed inputs read (shared draw)
    forced_self: Tensor  # [batch] bool: the feature draw could only return the parent's datum
    other_is_self: Tensor  # [batch] bool: the unclaimed draw equals this copy's own datum


@dataclass
class Assignments:
    """Assignments for every tree node, keyed by path, plus the per-input draws in independent mode."""

    by_path: dict[tuple[str, ...], Assignment] = field(default_factory=dict)
    options: SamplingOptions = SamplingOptions()
    seed: int = 0
    salt: str = ""

    def __getitem__(self, node: TreeNode) -> Assignment:
        return self.by_path[node.path]

    def unclaimed(self, node: TreeNode, channel: Channel, source: str) -> Tensor:
        """The datum that ``source``'s unclaimed contribution to ``node``'s ``channel`` is read from."""
        a = self.by_path[node.path]
        if not self.options.independent:
            return a.other
        gen = generator(self.seed, self.salt, node.path, f"unclaimed:{channel.value}:{source}")
        return sample_other(a.datum, gen, allow_self=self.options.allow_self).index

    def self_sample_rate(self) -> float:
        """Share of all draws (feature draws and unclaimed draws) that returned the datum they were drawn for."""
        flags = [torch.cat([a.forced_self, a.other_is_self]) for a in self.by_path.values()]
        return float(torch.cat(flags).float().mean()) if flags else 0.0


def generator(seed: int, salt: str, path: tuple[str, ...], purpose: str) -> torch.Generator:
    """A generator seeded by (seed, batch salt, tree path, purpose) only: stable under adding paths."""
    digest = hashlib.sha256(repr((seed, salt, path, purpose)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def assign_data(root: TreeNode, tokens: Tensor, *, seed: int, salt: str = "", options: SamplingOptions = SamplingOptions()) -> Assignments:
    """Draw the datum of every tree node and of its unclaimed inputs for one batch of reference data."""
    n = tokens.shape[0]
    out = Assignments(options=options, seed=seed, salt=salt)
    codes_cache: dict[int, Tensor] = {}  # feature codes of the batch, computed once per feature

    def visit(node: TreeNode, parent: Tensor) -> None:
        if node.feature is None:
            datum, forced = parent, torch.zeros(n, dtype=torch.bool)
        else:
            if id(node.feature) not in codes_cache:
                codes_cache[id(node.feature)] = node.feature.codes(tokens)
            codes = codes_cache[id(node.feature)]
            draw = sample_agreeing(codes, parent, generator(seed, salt, node.path, "feature"), allow_self=options.allow_self)
            datum, forced = draw.index, draw.forced_self & (draw.index == parent)
            if options.allow_self:
                forced = draw.index == parent
        other = sample_other(datum, generator(seed, salt, node.path, "unclaimed"), allow_self=options.allow_self)
        out.by_path[node.path] = Assignment(datum, other.index, forced, other.index == datum)
        for inp in node.inputs:
            visit(inp.child, datum)

    visit(root, torch.arange(n))
    return out

"""Grouping a node's reads into batched work (``group_reads``) and building the input residual a plan describes
(``build_input``): the optimisation kept apart from the semantics in ``reads``. Sources read clean on one datum
map are summed once, as the clean residual on that map minus the few sources that differ, so a node costs one
component's computation whatever the number of paths."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import einops
import torch
from torch import Tensor

from scrub.claims.sites import Component, Head
from scrub.engine.compute import residual_slot
from scrub.engine.reads import Claimed, Context, Job, Read, Value, child_rows, take
from scrub.engine.treeify import TreeNode


@dataclass(frozen=True)
class Plan:
    """A node's input on one channel: Σ over ``groups`` of the clean outputs of the group's sources read on
    the group's datum map, plus ``deltas``, plus the attention biases. ``key`` is equal for equal inputs."""

    groups: tuple[tuple[Tensor, frozenset[Component]], ...]  # (datum map [rows], sources read clean on it)
    deltas: tuple[Delta, ...]
    key: tuple

    def clean_on(self) -> Tensor | None:
        """The datum map on which this input is exactly the clean input, if it is one."""
        return self.groups[0][0] if len(self.groups) == 1 and not self.deltas else None


@dataclass(frozen=True)
class Delta:
    """A recomputed contribution to an input: ``z`` of ``head`` (added as z @ W_O) or a residual ``tensor``;
    ``mask`` [rows, seq, 1] restricts it to the claimed positions. ``key`` identifies it for sharing."""

    key: tuple
    z: Tensor | None = None
    head: Head | None = None
    tensor: Tensor | None = None


def group_reads(ctx: Context, job: Job, reads: list[Read]) -> Plan:
    """Group a node's reads into batched work: sources read clean on one datum map are summed once; a lone
    unrestricted claim is read clean on its child's map or added as the child's recomputed output; restricted
    (and repeated) claims add their difference to the unclaimed read at the claimed positions."""
    groups: dict[bytes, tuple[Tensor, set[Component]]] = {}
    deltas: list[Delta] = []

    def read_on(index: Tensor, source: Component) -> None:
        groups.setdefault(ctx.mkey(index), (index, set()))[1].add(source)

    for read in reads:
        if len(read.claims) == 1 and read.claims[0].inp.positions is None:
            claim = read.claims[0]
            if claim.value.clean_on is not None:
                read_on(claim.value.clean_on, read.source)
            else:
                deltas.append(_delta(ctx, job, claim.inp.child, claim.value))
            continue
        read_on(read.on, read.source)
        deltas.extend(_difference(ctx, job, claim, read.on) for claim in read.claims)
    ordered = tuple((index, frozenset(sources)) for index, sources in groups.values())
    key = (residual_slot(job.node.component), tuple((k, s) for k, (_, s) in zip(groups, ordered, strict=True)),
           tuple(d.key for d in deltas))
    return Plan(ordered, tuple(deltas), key)


def _delta(ctx: Context, job: Job, child: TreeNode, value: Value) -> Delta:
    rows = child_rows(ctx, job, child)
    key = (job.tree, child.path, None if rows is None else ctx.mkey(rows))
    if value.z is not None:
        assert isinstance(child.component, Head)  # only heads are recomputed as z
        return Delta(key, z=value.z, head=child.component)
    return Delta(key, tensor=value.tensor)


def _difference(ctx: Context, job: Job, claim: Claimed, other: Tensor) -> Delta:
    """The claimed value minus the unclaimed one (source clean on ``other``), at the claim's positions."""
    inp, value, mask = claim.inp, claim.value, claim.mask
    src = inp.child.component
    if value.clean_on is not None:
        diff = take(ctx.clean.out(src), value.clean_on) - ctx.clean.out(src)[other]  # [rows, seq, d_model]
    elif value.z is not None:
        assert isinstance(src, Head)  # only heads are recomputed as z
        diff = einops.einsum(value.z - ctx.clean.z[src.layer][other][:, :, src.head],  # -> [rows, seq, d_model]
                             ctx.model.blocks[src.layer].attn.W_O[src.head], "b s h, h d -> b s d")
    else:
        assert value.tensor is not None  # a value is clean_on, z or tensor
        diff = value.tensor - ctx.clean.out(src)[other]  # [rows, seq, d_model]
    if mask is not None:
        diff = diff * mask.to(diff.dtype)
    key = ("diff", job.key, id(inp), ctx.mkey(other))
    return Delta(key, tensor=diff)


def build_input(ctx: Context, comp: Component, plan: Plan) -> Tensor:
    """The input residual a plan describes: [rows, seq, d_model]. A group of most senders is the clean
    residual on its map minus the senders left out; the heads among those, and the recomputed heads, are
    added d_head-wide in one matmul per layer (z @ W_O), memoised per layer and terms: every later node that
    reads the same heads of a layer reuses the sum (``Context.head_sum``)."""
    senders = ctx.structure.residual_senders(comp)
    resid, biases = None, 0  # how many attention-bias sums ``resid`` holds
    heads: dict[int, list[_HeadTerm]] = {}  # layer -> the z terms summed @ W_O in one matmul
    rest: list[Tensor] = []  # other residual addends [rows, seq, d_model]

    def add(term: Tensor) -> None:
        nonlocal resid
        resid = term if resid is None else resid + term

    def clean_z(s: Head, index: Tensor, sign: int) -> _HeadTerm:
        return _HeadTerm(("clean", s.head, sign, ctx.mkey(index)), s.head,
                         lambda: sign * take(ctx.clean.z[s.layer][:, :, s.head], index))  # [rows, seq, d_head]

    for index, sources in plan.groups:
        left_out = [s for s in senders if s not in sources]
        if len(left_out) < len(sources):  # the clean residual on this map, minus what is left out
            add(take(ctx.clean.resid_before(comp), index))
            biases += 1
            for s in left_out:
                if isinstance(s, Head):
                    heads.setdefault(s.layer, []).append(clean_z(s, index, -1))
                else:
                    rest.append(-take(ctx.clean.out(s), index))
        else:
            for s in sources:
                if isinstance(s, Head):
                    heads.setdefault(s.layer, []).append(clean_z(s, index, 1))
                else:
                    rest.append(take(ctx.clean.out(s), index))
    for d in plan.deltas:
        if d.z is not None:
            assert d.head is not None  # a z delta always names its head
            heads.setdefault(d.head.layer, []).append(_HeadTerm(("z", d.key), d.head.head, partial(_same, d.z)))
        else:
            assert d.tensor is not None  # a delta is z (with its head) or tensor
            rest.append(d.tensor)
    for layer, terms in heads.items():  # one matmul per layer, once per call for equal terms
        add(ctx.head_sum((layer, tuple(t.key for t in terms)), partial(_heads_out, ctx, layer, terms)))
    for term in rest:
        add(term)
    if biases != 1:
        add((1 - biases) * ctx.clean.bias_before(comp))
    assert resid is not None  # every input has at least one sender (the embedding)
    return resid


@dataclass(frozen=True)
class _HeadTerm:
    """One head's z entering an input (``make()``: [rows, seq, d_head], built only when the layer's sum is not
    memoised), and ``key``, equal for equal terms."""

    key: tuple
    head: int
    make: Callable[[], Tensor]


def _same(t: Tensor) -> Tensor:
    return t


def _heads_out(ctx: Context, layer: int, terms: list[_HeadTerm]) -> Tensor:
    """Σ z_h @ W_O[h] over a layer's terms as one matmul: [rows, seq, d_model]."""
    z = torch.cat([t.make() for t in terms], -1)  # [rows, seq, n*d_head]
    w_o = ctx.model.blocks[layer].attn.W_O[[t.head for t in terms]].reshape(z.shape[-1], -1)  # [n*d_head, d_model]
    return z @ w_o  # [rows, seq, d_model]

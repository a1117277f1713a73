"""The batched evaluator: logits of a treeified claim, given the data every copy reads.

Every claimed copy's input is the clean residual of its unclaimed datum plus, for each claimed input,
the difference between that input's treeified value and its clean value on the unclaimed datum (the
"masked difference" trick), so a copy costs one head's attention, not a forward pass. Copies whose every
input comes from one datum are read from the clean run instead of recomputed; the rest are stacked per
layer and computed in one batched call (``compute.heads_forward``). This is where activations are
resampled; ``reference.py`` does the same literally, for the tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from scrub.compute import CleanRun, heads_forward, mlp_forward, unembed
from scrub.sites import HEAD_CHANNELS, Channel, Component, Embed, Head, Logits, Mlp, Pos
from scrub.treeify import Assignments, TreeNode

COPY_BUDGET = 120_000_000  # floats per stacked input tensor; bounds memory of one batched call


@dataclass
class _Value:
    """A copy's output: either recomputed (``tensor``) or the clean output on datum ``clean_on``."""

    tensor: Tensor | None
    clean_on: Tensor | None  # [batch]


@dataclass(frozen=True)
class EvalStats:
    copies: int  # tree nodes below logits
    recomputed: int  # copies that needed their own computation


@torch.no_grad()
def evaluate(model: HookedTransformer, root: TreeNode, data: Assignments, clean: CleanRun) -> tuple[Tensor, EvalStats]:
    """Logits [batch, seq, d_vocab] of the treeified claim under the given data assignments."""
    nodes = [n for n in root.walk() if n is not root]
    values: dict[tuple[str, ...], _Value] = {}
    for n in nodes:
        if isinstance(n.component, (Embed, Pos)):
            values[n.path] = _Value(None, data[n].datum)
    recomputed = 0
    for depth in sorted({n.component.depth for n in nodes if not isinstance(n.component, (Embed, Pos))}):
        layer_nodes = [n for n in nodes if n.component.depth == depth]
        todo = []
        for n in layer_nodes:
            channels = HEAD_CHANNELS if isinstance(n.component, Head) else (Channel.IN,)
            ons = [_clean_on(n, c, data, clean, values) for c in channels]
            if ons[0] is not None and all(o is not None and torch.equal(o, ons[0]) for o in ons):
                values[n.path] = _Value(None, ons[0])
            else:
                todo.append(n)
        recomputed += len(todo)
        _recompute(model, todo, data, clean, values)
    on = _clean_on(root, Channel.IN, data, clean, values)
    if on is not None:
        logits = clean.logits[on]
    else:
        logits = unembed(model, _input(root, Channel.IN, data, clean, values))
    return logits, EvalStats(copies=len(nodes), recomputed=recomputed)


def _materialise(node: TreeNode, clean: CleanRun, values: dict) -> Tensor:
    v = values[node.path]
    return v.tensor if v.tensor is not None else clean.out(node.component)[v.clean_on]  # [batch, seq, d_model]


def _claimed(node: TreeNode, channel: Channel, clean: CleanRun):
    """Claimed inputs on ``channel`` that are residual sources (shortformer positions are not: they are
    added after the LayerNorm, identically for every datum)."""
    return [i for i in node.inputs if i.channel == channel and not (clean.shortformer and isinstance(i.child.component, Pos))]


def _clean_on(node: TreeNode, channel: Channel, data: Assignments, clean: CleanRun, values: dict) -> Tensor | None:
    """The datum d if ``node``'s input on ``channel`` equals the clean input on d row by row, else None."""
    claimed = _claimed(node, channel, clean)
    reads: list[Tensor] = []
    covered: set[Component] = set()
    for inp in claimed:
        if isinstance(inp.child.component, Pos):
            continue  # data-independent
        child = values[inp.child.path]
        if child.clean_on is None:
            return None
        reads.append(child.clean_on)
        if inp.positions is None:
            covered.add(inp.child.component)
    sources = [s for s in clean.sources_before(node.component) if not isinstance(s, Pos)]
    uncovered = [s for s in sources if s not in covered]
    if uncovered or any(i.positions is not None for i in claimed):
        if data.options.independent:
            reads += [data.unclaimed(node, channel, str(s)) for s in uncovered]
            reads += [data.unclaimed(node, channel, str(i.child.component)) for i in claimed if i.positions is not None]
        else:
            reads.append(data[node].other)
    if not reads:
        return data[node].datum
    first = reads[0]
    return first if all(torch.equal(r, first) for r in reads[1:]) else None


def _input(node: TreeNode, channel: Channel, data: Assignments, clean: CleanRun, values: dict) -> Tensor:
    """The treeified input residual of ``node`` on ``channel``: [batch, seq, d_model]."""
    comp = node.component
    if data.options.independent:
        pick = lambda s: data.unclaimed(node, channel, str(s))  # noqa: E731
        resid = clean.constant_before(comp) + sum(clean.out(s)[pick(s)] for s in clean.sources_before(comp))
    else:
        other = data[node].other
        pick = lambda s: other  # noqa: E731
        resid = clean.resid_before(comp)[other]  # [batch, seq, d_model]
    tokens = clean.tokens[data[node].datum]  # [batch, seq] the receiver's own datum
    for inp in _claimed(node, channel, clean):
        src = inp.child.component
        delta = _materialise(inp.child, clean, values) - clean.out(src)[pick(src)]  # [batch, seq, d_model]
        if inp.positions is not None:
            delta = delta * inp.positions(tokens).to(delta.dtype)[..., None]
        resid = resid + delta
    return resid


def _recompute(model: HookedTransformer, todo: list[TreeNode], data: Assignments, clean: CleanRun, values: dict) -> None:
    """Compute the copies in ``todo`` (all of one depth) in stacked chunks."""
    if not todo:
        return
    batch, seq, d_model = clean.embed.shape
    chunk = max(1, COPY_BUDGET // (batch * seq * max(d_model, seq)))
    pos = clean.pos[0] if clean.shortformer else None  # [seq, d_model]
    for start in range(0, len(todo), chunk):
        part = todo[start : start + chunk]
        comp = part[0].component
        if isinstance(comp, Head):
            q, k, v = (torch.stack([_input(n, c, data, clean, values) for n in part]) for c in HEAD_CHANNELS)  # [copy, batch, seq, d_model]
            heads = torch.tensor([n.component.head for n in part])
            out = heads_forward(model, comp.layer, heads, q, k, v, pos)  # [copy, batch, seq, d_model]
        else:
            x = torch.stack([_input(n, Channel.IN, data, clean, values) for n in part])  # [copy, batch, seq, d_model]
            out = mlp_forward(model, comp.layer, x)
        for n, o in zip(part, out):
            values[n.path] = _Value(o, None)

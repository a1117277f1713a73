"""The batched evaluator: logits of a treeified claim, given the data every copy reads.

Every claimed copy's input is the clean residual of its unclaimed datum plus, for each claimed input,
the difference between that input's treeified value and its clean value on the unclaimed datum (the
"masked difference" trick), so a copy costs one head's attention, not a forward pass. Copies whose every
input comes from one datum are read from the clean run instead of recomputed; the rest are stacked per
layer and computed in one batched call (``compute.heads_z_normed``). This is where activations are
resampled; ``reference.py`` does the same literally, for the tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from scrub.compute import CleanRun, head_out, heads_z_normed, mlp_forward, normalise
from scrub.sites import HEAD_CHANNELS, Channel, Component, Embed, Head, Logits, Mlp, Pos
from scrub.treeify import Assignments, TreeNode
from scrub.unembed import FactoredUnembed, Term, unembed

COPY_BUDGET = 120_000_000  # floats per stacked input tensor; bounds memory of one batched call


@dataclass
class _Value:
    """A copy's output: either recomputed (``tensor``) or the clean output on datum ``clean_on``."""

    tensor: Tensor | None
    clean_on: Tensor | None  # [batch]
    z: Tensor | None = None  # [batch, seq, d_head] for a recomputed head: tensor = z @ W_O


@dataclass(frozen=True)
class EvalStats:
    copies: int  # tree nodes below logits
    recomputed: int  # copies that needed their own computation


@torch.no_grad()
def evaluate(model: HookedTransformer, root: TreeNode, data: Assignments, clean: CleanRun) -> tuple[Tensor, EvalStats]:
    """Logits [batch, seq, d_vocab] of the treeified claim under the given data assignments."""
    (logits,), stats = evaluate_many(model, [root], [data], clean)
    return logits, stats


@torch.no_grad()
def evaluate_many(model: HookedTransformer, roots: list[TreeNode], datas: list[Assignments], clean: CleanRun,
                  reduce: Callable[[Tensor], Tensor] | None = None,
                  positions: Tensor | None = None) -> tuple[list[Tensor], EvalStats]:
    """Evaluate several trees on one clean run, stacking their copies of each layer into shared batched
    calls. Returns ``reduce(logits)`` per tree (the logits themselves without ``reduce``). ``positions``
    [n_pos] (sequence indices) unembeds only those positions: logits are then [batch, n_pos, d_vocab], and
    trees whose logits differ from the clean run through head outputs are unembedded in factored form."""
    jobs = [_Job(node, data, i) for i, (root, data) in enumerate(zip(roots, datas)) for node in root.walk() if node is not root]
    values: dict[tuple[int, tuple[str, ...]], _Value] = {}
    cache = _Cache()
    for job in jobs:
        if isinstance(job.node.component, (Embed, Pos)):
            values[job.key] = _Value(None, job.data[job.node].datum)
    recomputed = 0
    for depth in sorted({j.node.component.depth for j in jobs if not isinstance(j.node.component, (Embed, Pos))}):
        todo = []
        for job in (j for j in jobs if j.node.component.depth == depth):
            channels = HEAD_CHANNELS if isinstance(job.node.component, Head) else (Channel.IN,)
            ons = [_clean_on(job, c, clean, values) for c in channels]
            if ons[0] is not None and all(o is not None and torch.equal(o, ons[0]) for o in ons):
                values[job.key] = _Value(None, ons[0])
            else:
                todo.append(job)
        recomputed += len(todo)
        _recompute(model, todo, clean, values, cache)
    outputs = []
    factored = FactoredUnembed.of(model) if positions is not None else None
    for i, (root, data) in enumerate(zip(roots, datas)):
        job = _Job(root, data, i)
        on = _clean_on(job, Channel.IN, clean, values)
        if on is not None:
            logits = clean.logits[on] if positions is None else clean.logits[on][:, positions]
        elif factored is not None and not data.options.independent:
            logits = _factored_logits(job, clean, values, cache, factored, positions)  # [batch, n_pos, d_vocab]
        else:
            resid = _input(job, Channel.IN, clean, values, cache)  # [batch, seq, d_model]
            logits = unembed(model, resid if positions is None else resid[:, positions])
        outputs.append(logits if reduce is None else reduce(logits))
    return outputs, EvalStats(copies=len(jobs), recomputed=recomputed)


@dataclass
class _Cache:
    """Tensors shared by many copies within one ``evaluate_many`` call: the clean residual before each depth,
    and ``ln1`` of a clean residual that many copies read unchanged (keyed by layer and datum rows)."""

    resid: dict = field(default_factory=dict)
    normed: dict = field(default_factory=dict)

    def resid_before(self, clean: CleanRun, comp: Component) -> Tensor:
        if comp.depth not in self.resid:
            self.resid[comp.depth] = clean.resid_before(comp)  # [batch, seq, d_model]
        return self.resid[comp.depth]


@dataclass(frozen=True)
class _Job:
    """One tree copy to evaluate, with the assignments of its tree and the tree's index."""

    node: TreeNode
    data: Assignments
    tree: int

    @property
    def key(self) -> tuple[int, tuple[str, ...]]:
        return (self.tree, self.node.path)

    def child(self, node: TreeNode) -> "_Job":
        return _Job(node, self.data, self.tree)


def _materialise(job: _Job, clean: CleanRun, values: dict) -> Tensor:
    v = values[job.key]
    return v.tensor if v.tensor is not None else clean.out(job.node.component)[v.clean_on]  # [batch, seq, d_model]


def _claimed(node: TreeNode, channel: Channel, clean: CleanRun):
    """Claimed inputs on ``channel`` that are residual sources (shortformer positions are not: they are
    added after the LayerNorm, identically for every datum)."""
    return [i for i in node.inputs if i.channel == channel and not (clean.shortformer and isinstance(i.child.component, Pos))]


def _clean_on(job: _Job, channel: Channel, clean: CleanRun, values: dict) -> Tensor | None:
    """The datum d if the copy's input on ``channel`` equals the clean input on d row by row, else None."""
    node, data = job.node, job.data
    claimed = _claimed(node, channel, clean)
    reads: list[Tensor] = []
    covered: set[Component] = set()
    for inp in claimed:
        if isinstance(inp.child.component, Pos):
            continue  # data-independent
        child = values[job.child(inp.child).key]
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


def _input(job: _Job, channel: Channel, clean: CleanRun, values: dict, cache: _Cache) -> Tensor:
    """The treeified input residual of the copy on ``channel``: [batch, seq, d_model]."""
    node, data = job.node, job.data
    comp = node.component
    if data.options.independent:
        pick = lambda s: data.unclaimed(node, channel, str(s))  # noqa: E731
        resid = clean.constant_before(comp) + sum(clean.out(s)[pick(s)] for s in clean.sources_before(comp))
    else:
        other = data[node].other
        pick = lambda s: other  # noqa: E731
        resid = cache.resid_before(clean, comp)[other]  # [batch, seq, d_model]
    tokens = clean.tokens[data[node].datum]  # [batch, seq] the receiver's own datum
    for inp in _claimed(node, channel, clean):
        src = inp.child.component
        delta = _materialise(job.child(inp.child), clean, values) - clean.out(src)[pick(src)]  # [batch, seq, d_model]
        if inp.positions is not None:
            delta = delta * inp.positions(tokens).to(delta.dtype)[..., None]
        resid = resid + delta
    return resid


def _factored_logits(job: _Job, clean: CleanRun, values: dict, cache: _Cache, factored: FactoredUnembed,
                     positions: Tensor) -> Tensor:
    """The logits ``_input`` + ``unembed`` would give at ``positions``, with each head's difference kept
    d_head-wide (``unembed.FactoredUnembed``); the clean base is unembedded once per call."""
    node, data = job.node, job.data
    other = data[node].other
    base = cache.resid_before(clean, node.component)[other][:, positions]  # [batch, n_pos, d_model]
    tokens = clean.tokens[data[node].datum]  # [batch, seq]
    terms = []
    for inp in _claimed(node, Channel.IN, clean):
        src = inp.child.component
        mask = None if inp.positions is None else inp.positions(tokens)[:, positions, None]  # [batch, n_pos, 1]
        value = values[job.child(inp.child).key]
        if isinstance(src, Head):
            z_clean = clean.z[src.layer][:, positions, src.head]  # [data, n_pos, d_head]
            z = value.z[:, positions] if value.z is not None else z_clean[value.clean_on]  # [batch, n_pos, d_head]
            dz = z - z_clean[other]  # [batch, n_pos, d_head]
            terms.append(Term(dz=dz if mask is None else dz * mask.to(dz.dtype), head=src))
        else:
            delta = (_materialise(job.child(inp.child), clean, values) - clean.out(src)[other])[:, positions]  # [batch, n_pos, d_model]
            terms.append(Term(resid=delta if mask is None else delta * mask.to(delta.dtype)))
    return factored.logits(base, (node.component.depth, tuple(other.tolist())), terms)


def _unchanged_on(job: _Job, channel: Channel, clean: CleanRun, values: dict) -> Tensor | None:
    """The datum d if the copy's input on ``channel`` is exactly the clean residual on d, as ``_input`` would
    compute it (every claimed child is the clean output on the unclaimed datum, so each delta is exactly 0)."""
    if job.data.options.independent:
        return None
    other = job.data[job.node].other
    for inp in _claimed(job.node, channel, clean):
        child = values[job.child(inp.child).key]
        if child.clean_on is None or not torch.equal(child.clean_on, other):
            return None
    return other


def _input_key(job: _Job, channel: Channel, clean: CleanRun, values: dict) -> tuple | None:
    """Equal for copies whose ``_input`` on ``channel`` is the same tensor: same component depth, unclaimed
    datum and claimed children (each a recomputed tensor or a clean output on some data), e.g. the copies of
    every receiver that one sender feeds in path patching. None (never shared) with independent draws."""
    node, data = job.node, job.data
    if data.options.independent:
        return None
    claimed = _claimed(node, channel, clean)
    children = []
    for inp in claimed:
        value = values[job.child(inp.child).key]
        source = id(value.tensor) if value.tensor is not None else tuple(value.clean_on.tolist())
        children.append((inp.child.component, source, inp.positions))
    masked = any(inp.positions is not None for inp in claimed)  # masks read the copy's own datum
    datum = tuple(data[node].datum.tolist()) if masked else None
    return node.component.depth, tuple(data[node].other.tolist()), datum, tuple(children)


def _normed_inputs(model: HookedTransformer, part: list[_Job], channel: Channel, clean: CleanRun, values: dict,
                   cache: _Cache) -> Tensor:
    """``ln1`` of the copies' inputs on ``channel``, [copy, batch, seq, d_model]; an input that is a clean
    residual is normalised once per call and shared ([batch, seq, d_model] if every copy reads it), and
    copies with equal inputs (``_input_key``) share one computation."""
    comp = part[0].node.component
    ln1 = model.blocks[comp.layer].ln1
    rows: list[Tensor | int] = []  # a shared normalised tensor, or an index into ``fresh``
    fresh: list[Tensor] = []
    seen: dict[tuple, int] = {}
    for j in part:
        on = _unchanged_on(j, channel, clean, values)
        if on is None:
            key = _input_key(j, channel, clean, values)
            if key is None or key not in seen:
                fresh.append(_input(j, channel, clean, values, cache))
                if key is not None:
                    seen[key] = len(fresh) - 1
            rows.append(seen[key] if key is not None else len(fresh) - 1)
            continue
        key = (comp.layer, tuple(on.tolist()))
        if key not in cache.normed:
            cache.normed[key] = normalise(ln1, cache.resid_before(clean, comp)[on])  # [batch, seq, d_model]
        rows.append(cache.normed[key])
    if not fresh and all(r is rows[0] for r in rows):
        return rows[0]  # [batch, seq, d_model] shared by every copy: heads_z_normed projects it unstacked
    normed = normalise(ln1, torch.stack(fresh)) if fresh else None  # [fresh, batch, seq, d_model]
    return torch.stack([normed[r] if isinstance(r, int) else r for r in rows])  # [copy, batch, seq, d_model]


def _recompute(model: HookedTransformer, todo: list[_Job], clean: CleanRun, values: dict, cache: _Cache) -> None:
    """Compute the copies in ``todo`` (all of one depth) in stacked chunks."""
    if not todo:
        return
    batch, seq, d_model = clean.embed.shape
    chunk = max(1, COPY_BUDGET // (batch * seq * max(d_model, seq)))
    pos = clean.pos[0] if clean.shortformer else None  # [seq, d_model]
    for start in range(0, len(todo), chunk):
        part = todo[start : start + chunk]
        comp = part[0].node.component
        if isinstance(comp, Head):
            xq, xk, xv = (_normed_inputs(model, part, c, clean, values, cache) for c in HEAD_CHANNELS)  # [copy, batch, seq, d_model] x3
            heads = torch.tensor([j.node.component.head for j in part])
            z = heads_z_normed(model, comp.layer, heads, xq, xk, xv, pos)  # [copy, batch, seq, d_head]
            out = head_out(model, comp.layer, heads, z)  # [copy, batch, seq, d_model]
            for j, o, zj in zip(part, out, z):
                values[j.key] = _Value(o, None, zj)
        else:
            x = torch.stack([_input(j, Channel.IN, clean, values, cache) for j in part])  # [copy, batch, seq, d_model]
            for j, o in zip(part, mlp_forward(model, comp.layer, x)):
                values[j.key] = _Value(o, None)

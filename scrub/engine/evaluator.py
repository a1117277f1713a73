"""The batched evaluator: logits of a treeified claim, given the data every node reads.

Where activations are resampled is one step, ``_reads``: for a node's input on a channel, every component
that feeds it (``structure``) is read clean on the node's unclaimed datum, unless the claim names it; a
claimed child replaces it (everywhere, or at its claimed positions). The rest is optimisation, kept apart:
``_plan`` groups those reads by the datum they are read on (the clean residual minus the few sources that
differ, so a node costs one component's computation whatever the number of paths), ``_recompute`` stacks
the nodes of a layer into one batched call, nodes whose every input is the clean input on one datum map
are read from the clean run, and ``_factored_logits`` unembeds the root's reads d_head-wide. The query-key
split reads the same ``_reads`` with the masked claims dropped. ``testing/reference.py`` does the same
literally, for the tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import einops
import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from scrub.claims.masks import QKMask
from scrub.claims.sites import Channel, Component, Embed, Head, Mlp, Pos
from scrub.claims.structure import Structure
from scrub.engine.compute import CleanRun, heads_z_normed, mlp_forward, normalise, residual_slot
from scrub.engine.treeify import Assignment, Assignments, TreeInput, TreeNode
from scrub.engine.unembed import FactoredUnembed, Term, unembed

COPY_BUDGET = 120_000_000  # floats per stacked input tensor; bounds memory of one batched call


@dataclass
class _Value:
    """A node's output, one row per row of its data: the clean output on datum ``clean_on`` [rows], or
    recomputed: ``z`` [rows, seq, d_head] for a head (its output is z @ W_O), ``tensor`` for an MLP."""

    clean_on: Tensor | None = None
    z: Tensor | None = None
    tensor: Tensor | None = None


@dataclass(frozen=True)
class EvalStats:
    copies: int  # nodes below logits
    recomputed: int  # nodes that needed their own computation


@dataclass(frozen=True)
class _Job:
    """One node to evaluate, with the assignments of its tree and the tree's index."""

    node: TreeNode
    data: Assignments
    tree: int

    @property
    def key(self) -> tuple[int, tuple[str, ...]]:
        return (self.tree, self.node.path)

    @property
    def a(self) -> Assignment:
        return self.data[self.node]


@dataclass(frozen=True)
class _Delta:
    """A recomputed contribution to an input: ``z`` of ``head`` (added as z @ W_O) or a residual ``tensor``;
    ``mask`` [rows, seq, 1] restricts it to the claimed positions. ``key`` identifies it for sharing."""

    key: tuple
    z: Tensor | None = None
    head: Head | None = None
    tensor: Tensor | None = None


@dataclass(frozen=True)
class _Plan:
    """A node's input on one channel: Σ over ``groups`` of the clean outputs of the group's sources read on
    the group's datum map, plus ``deltas``, plus the attention biases. ``key`` is equal for equal inputs."""

    groups: tuple[tuple[Tensor, frozenset[Component]], ...]  # (datum map [rows], sources read clean on it)
    deltas: tuple[_Delta, ...]
    key: tuple

    def clean_on(self) -> Tensor | None:
        """The datum map on which this input is exactly the clean input, if it is one."""
        return self.groups[0][0] if len(self.groups) == 1 and not self.deltas else None


@dataclass
class _Context:
    """What one ``evaluate_many`` call shares: the model, its structure, the clean run and caches of
    normalised inputs and datum-map keys (equal maps are compared by bytes, not elementwise)."""

    model: HookedTransformer
    clean: CleanRun
    values: dict = field(default_factory=dict)
    normed: dict = field(default_factory=dict)
    keys: dict = field(default_factory=dict)
    rows: dict = field(default_factory=dict)  # (parent job key, child path) -> the child rows the parent reads

    def mkey(self, index: Tensor) -> bytes:
        """The shape and bytes of a datum map [rows] or [rows, seq], memoised per tensor object (kept alive
        here, so ids stay unique)."""
        hit = self.keys.get(id(index))
        if hit is None:
            hit = self.keys[id(index)] = (index, repr(tuple(index.shape)).encode() + index.cpu().numpy().tobytes())
        return hit[1]

    @property
    def structure(self) -> Structure:
        return self.clean.structure


@torch.no_grad()
def evaluate(model: HookedTransformer, root: TreeNode, data: Assignments, clean: CleanRun) -> tuple[Tensor, EvalStats]:
    """Logits [batch, seq, d_vocab] of the treeified claim under the given data assignments."""
    (logits,), stats = evaluate_many(model, [root], [data], clean)
    return logits, stats


@torch.no_grad()
def evaluate_many(model: HookedTransformer, roots: list[TreeNode], datas: list[Assignments], clean: CleanRun,
                  reduce: Callable[[Tensor], Tensor] | None = None,
                  positions: Tensor | None = None) -> tuple[list[Tensor], EvalStats]:
    """Evaluate several trees on one clean run, stacking their nodes of each layer into shared batched
    calls. Returns ``reduce(logits)`` per tree (the logits themselves without ``reduce``). ``positions``
    [n_pos] (sequence indices) unembeds only those positions: logits are then [batch, n_pos, d_vocab], and
    trees whose logits differ from the clean run through head outputs are unembedded in factored form."""
    ctx = _Context(model, clean)
    jobs = [_Job(node, data, i) for i, (root, data) in enumerate(zip(roots, datas, strict=True))
            for node in root.walk() if node is not root]
    for job in jobs:
        if isinstance(job.node.component, (Embed, Pos)):
            ctx.values[job.key] = _Value(clean_on=job.a.datum)
    recomputed = 0
    for depth in sorted({j.node.component.depth for j in jobs if not isinstance(j.node.component, (Embed, Pos))}):
        todo: list[_Todo] = []
        for job in (j for j in jobs if j.node.component.depth == depth):
            plans, alts = _inputs(ctx, job)
            on = _clean_input(job, plans, alts)
            if on is not None:
                ctx.values[job.key] = _Value(clean_on=on)
            else:
                todo.append(_Todo(job, plans, alts))
        recomputed += len(todo)
        _recompute(ctx, todo)
    factored = FactoredUnembed.of(model) if positions is not None else None
    outputs = [_logits(ctx, _Job(root, data, i), factored, positions)
               for i, (root, data) in enumerate(zip(roots, datas, strict=True))]
    outputs = outputs if reduce is None else [reduce(logits) for logits in outputs]
    return outputs, EvalStats(copies=len(jobs), recomputed=recomputed)


def _clean_input(job: _Job, plans: list[_Plan], alts: dict) -> Tensor | None:
    """The datum map a node's output can be read from the clean run on, if its every input is the clean input on
    that map. A per-position map [rows, seq] only qualifies for an MLP (position by position); a head mixes
    positions whose inputs come from different data."""
    ons = [p.clean_on() for p in plans]
    on = ons[0]
    if (on is None or alts or (on.dim() != 1 and not isinstance(job.node.component, Mlp))
            or not all(o is not None and torch.equal(o, on) for o in ons[1:])):
        return None
    return on


def _logits(ctx: _Context, job: _Job, factored: FactoredUnembed | None, positions: Tensor | None) -> Tensor:
    """The root's logits [batch, seq or n_pos, d_vocab]: read from the clean run, unembedded in factored form,
    or unembedded from the built final residual."""
    plan = _plan(ctx, job, _reads(ctx, job, Channel.IN))
    on = plan.clean_on()
    if on is not None:
        return _take(ctx.clean.logits, on, positions)  # [batch, seq or n_pos, d_vocab]
    if factored is not None and positions is not None and not job.data.options.independent:
        return _factored_logits(ctx, job, factored, positions)  # [batch, n_pos, d_vocab]
    resid = _build(ctx, job.node.component, plan)  # [batch, seq, d_model]
    return unembed(ctx.model, resid if positions is None else resid[:, positions])


def _take(t: Tensor, index: Tensor, positions: Tensor | None = None) -> Tensor:
    """Rows of a clean tensor t [data, seq, ...] on a datum map: [rows] (whole sequences) or [rows, seq]
    (a datum per position, from a per-position draw) -> [rows, seq or n_pos, ...]."""
    if index.dim() == 1:
        return t[index] if positions is None else t[index][:, positions]
    at = torch.arange(t.shape[1], device=index.device) if positions is None else positions
    return t[index[:, at], at[None, :]]


def _clean_on(value: _Value) -> Tensor:
    """The datum map of a value that is not recomputed (a value is clean_on, z or tensor)."""
    assert value.clean_on is not None
    return value.clean_on


def _rows(ctx: _Context, job: _Job, child: TreeNode) -> Tensor | None:
    """The child's rows ``job``'s rows read: [rows] or [rows, seq], None for the same rows (copy mode, or a child
    computed on exactly the parent's data), memoised per (parent, child)."""
    key = (job.key, child.path)
    if key not in ctx.rows:
        read = job.data[child].read
        rows = None if read is None else read[job.a.datum]  # [rows] or [rows, seq]
        same = (rows is not None and rows.dim() == 1 and job.data[child].datum.shape[0] == rows.shape[0]
                and torch.equal(rows, torch.arange(rows.shape[0])))
        ctx.rows[key] = None if same else rows
    return ctx.rows[key]


def _child(ctx: _Context, job: _Job, child: TreeNode) -> _Value:
    """``child``'s value as ``job``'s rows read it (node mode: through the child's ``read`` table; per position
    for a per-position child, whose position s is read from its row rows[:, s])."""
    value = ctx.values[(job.tree, child.path)]
    rows = _rows(ctx, job, child)
    if rows is None:
        return value

    def gather(t: Tensor | None) -> Tensor | None:  # a datum map [rows_child] is indexed like any other row table
        if t is None:
            return None
        return t[rows] if t.dim() == 1 else _take(t, rows)  # [rows(, seq), ...]

    return _Value(clean_on=gather(value.clean_on), z=gather(value.z), tensor=gather(value.tensor))


@dataclass(frozen=True)
class _Todo:
    """A node to recompute: its input plans per channel, and for channels with query-key masked claims the
    plan with those claims resampled and the mask (True: the pair reads the main plan)."""

    job: _Job
    plans: list[_Plan]
    alts: dict[Channel, tuple[_Plan, QKMask]]


def _inputs(ctx: _Context, job: _Job) -> tuple[list[_Plan], dict[Channel, tuple[_Plan, QKMask]]]:
    """A node's input plan per channel, and for head inputs with query-key masked claims the plan with those
    claims resampled and the mask (one per input, as validation ensures). Masks that change nothing (equal
    plans, or a mask true at every causal pair) are left out; a mask false at every causal pair makes the
    resampled plan the input, so both trivial masks give exactly the unmasked or unclaimed result."""
    plans, alts = [], {}
    seq = ctx.clean.embed.shape[1]
    causal = torch.ones(seq, seq, dtype=torch.bool).tril()  # [q, k]
    for channel in ctx.structure.channels(job.node.component):
        plan = _plan(ctx, job, _reads(ctx, job, channel))
        masked = tuple(inp for inp in job.node.inputs if inp.channel == channel and inp.qk_mask is not None)
        if masked:
            alt = _plan(ctx, job, _reads(ctx, job, channel, drop=masked))
            mask = masked[0].qk_mask
            assert mask is not None  # selected above
            matrix = mask.matrix(seq) & causal  # [q, k] the pairs attention can use
            if not bool(matrix.any()):
                plan = alt
            elif alt.key != plan.key and not bool(matrix.eq(causal).all()):
                alts[channel] = (alt, mask)
        plans.append(plan)
    return plans, alts


@dataclass(frozen=True)
class _Claimed:
    """A claimed child's output entering a node: ``value`` as the node's rows read it, at the positions of
    ``mask`` [rows, seq, 1] (None: at every position)."""

    inp: TreeInput
    value: _Value
    mask: Tensor | None


@dataclass(frozen=True)
class _Read:
    """One source's part of a node's input: its clean output on datum map ``on`` (the node's unclaimed datum),
    replaced by ``claims`` where they apply."""

    source: Component
    on: Tensor
    claims: tuple[_Claimed, ...]


def _reads(ctx: _Context, job: _Job, channel: Channel, drop: tuple[TreeInput, ...] = ()) -> list[_Read]:
    """Where activations are resampled: each source feeding ``job``'s input on ``channel`` is read clean on the
    node's unclaimed datum (one draw per node, or per input and source with independent draws), and each claim
    of it replaces it with the claimed child's value at the claimed positions. Claims in ``drop`` count as
    unclaimed (the resampled side of a query-key mask); shortformer or rotary positions feed no residual."""
    node, data = job.node, job.data
    claimed: dict[Component, list[_Claimed]] = {}
    for inp in node.inputs:
        if inp.channel == channel and _feeds_residual(ctx, inp.child.component) and not any(inp is d for d in drop):
            mask = (None if inp.positions is None  # the node's own data's tokens [rows, seq] -> [rows, seq, 1]
                    else inp.positions(ctx.clean.tokens[job.a.datum])[..., None])
            claimed.setdefault(inp.child.component, []).append(_Claimed(inp, _child(ctx, job, inp.child), mask))
    return [_Read(source, data.unclaimed(node, channel, str(source)) if data.options.independent else job.a.other,
                  tuple(claimed.get(source, ())))
            for source in ctx.structure.residual_senders(node.component)]


def _feeds_residual(ctx: _Context, comp: Component) -> bool:
    """Whether a component's output is a residual addend (positions are not, in shortformer or rotary models)."""
    return not (isinstance(comp, Pos) and ctx.structure.pos != "standard")


def _plan(ctx: _Context, job: _Job, reads: list[_Read]) -> _Plan:
    """Group a node's reads into batched work: sources read clean on one datum map are summed once; a lone
    unrestricted claim is read clean on its child's map or added as the child's recomputed output; restricted
    (and repeated) claims add their difference to the unclaimed read at the claimed positions."""
    groups: dict[bytes, tuple[Tensor, set[Component]]] = {}
    deltas: list[_Delta] = []

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
    return _Plan(ordered, tuple(deltas), key)


def _delta(ctx: _Context, job: _Job, child: TreeNode, value: _Value) -> _Delta:
    rows = _rows(ctx, job, child)
    key = (job.tree, child.path, None if rows is None else ctx.mkey(rows))
    if value.z is not None:
        assert isinstance(child.component, Head)  # only heads are recomputed as z
        return _Delta(key, z=value.z, head=child.component)
    return _Delta(key, tensor=value.tensor)


def _difference(ctx: _Context, job: _Job, claim: _Claimed, other: Tensor) -> _Delta:
    """The claimed value minus the unclaimed one (source clean on ``other``), at the claim's positions."""
    inp, value, mask = claim.inp, claim.value, claim.mask
    src = inp.child.component
    if value.clean_on is not None:
        diff = _take(ctx.clean.out(src), value.clean_on) - ctx.clean.out(src)[other]  # [rows, seq, d_model]
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
    return _Delta(key, tensor=diff)


def _build(ctx: _Context, comp: Component, plan: _Plan) -> Tensor:
    """The input residual a plan describes: [rows, seq, d_model]. A group of most senders is the clean
    residual on its map minus the senders left out; the heads among those, and the recomputed heads, are
    added d_head-wide in one matmul per layer (z @ W_O)."""
    senders = ctx.structure.residual_senders(comp)
    resid, biases = None, 0  # how many attention-bias sums ``resid`` holds
    heads: dict[int, list[tuple[Tensor, int]]] = {}  # layer -> (z [rows, seq, d_head], head): summed @ W_O
    rest: list[Tensor] = []  # other residual addends [rows, seq, d_model]

    def add(term: Tensor) -> None:
        nonlocal resid
        resid = term if resid is None else resid + term

    for index, sources in plan.groups:
        left_out = [s for s in senders if s not in sources]
        if len(left_out) < len(sources):  # the clean residual on this map, minus what is left out
            add(_take(ctx.clean.resid_before(comp), index))
            biases += 1
            for s in left_out:
                if isinstance(s, Head):
                    heads.setdefault(s.layer, []).append((-_take(ctx.clean.z[s.layer][:, :, s.head], index), s.head))
                else:
                    rest.append(-_take(ctx.clean.out(s), index))
        else:
            for s in sources:
                if isinstance(s, Head):
                    heads.setdefault(s.layer, []).append((_take(ctx.clean.z[s.layer][:, :, s.head], index), s.head))
                else:
                    rest.append(_take(ctx.clean.out(s), index))
    for d in plan.deltas:
        if d.z is not None:
            assert d.head is not None  # a z delta always names its head
            heads.setdefault(d.head.layer, []).append((d.z, d.head.head))
        else:
            assert d.tensor is not None  # a delta is z (with its head) or tensor
            rest.append(d.tensor)
    for layer, terms in heads.items():  # one matmul per layer
        z = torch.cat([t for t, _ in terms], -1)  # [rows, seq, n*d_head]
        w_o = ctx.model.blocks[layer].attn.W_O[[h for _, h in terms]].reshape(z.shape[-1], -1)  # [n*d_head, d_model]
        add(z @ w_o)  # [rows, seq, d_model]
    for term in rest:
        add(term)
    if biases != 1:
        add((1 - biases) * ctx.clean.bias_before(comp))
    assert resid is not None  # every input has at least one sender (the embedding)
    return resid


def _normed(ctx: _Context, job: _Job, plan: _Plan, norm: torch.nn.Module) -> Tensor:
    """``norm`` of the input a plan describes, shared by every node with an equal plan: [rows, seq, d_model]."""
    key = (id(norm), plan.key)
    if key not in ctx.normed:
        ctx.normed[key] = normalise(norm, _build(ctx, job.node.component, plan))
    return ctx.normed[key]


def _stack(parts: list[Tensor]) -> Tensor:
    """One shared [rows, seq, d_model] tensor if every copy reads the same, else [copy, rows, seq, d_model]."""
    return parts[0] if all(p is parts[0] for p in parts) else torch.stack(parts)


def _recompute(ctx: _Context, todo: list[_Todo]) -> None:
    """Compute the nodes in ``todo`` (all of one depth) in stacked chunks; heads with query-key masked
    inputs one by one, each with its main and resampled inputs."""
    if not todo:
        return
    clean = ctx.clean
    _, seq, d_model = clean.embed.shape
    pos = clean.pos[0] if clean.shortformer else None  # [seq, d_model]
    for item in (t for t in todo if t.alts):
        comp = item.job.node.component
        assert isinstance(comp, Head)  # only head inputs take query-key masks
        ln1 = ctx.model.blocks[comp.layer].ln1
        xq, xk, xv = (_normed(ctx, item.job, plan, ln1) for plan in item.plans)  # [rows, seq, d_model] x3
        alt = {c: (_normed(ctx, item.job, plan, ln1), mask.matrix(seq, clean.embed.device)[None, None])
               for c, (plan, mask) in item.alts.items()}  # (input, [1, 1, q, k] mask) per masked channel
        z = heads_z_normed(ctx.model, comp.layer, torch.tensor([comp.head]), xq, xk, xv, pos, alt=alt)
        ctx.values[item.job.key] = _Value(z=z[0])  # [rows, seq, d_head]
    by_rows: dict[int, list[tuple[_Job, list[_Plan]]]] = {}  # nodes computed on equally many rows stack
    for item in (t for t in todo if not t.alts):
        by_rows.setdefault(item.job.a.datum.shape[0], []).append((item.job, item.plans))
    parts = [(rows, same[start : start + max(1, COPY_BUDGET // (rows * seq * max(d_model, seq)))])
             for rows, same in by_rows.items()
             for start in range(0, len(same), max(1, COPY_BUDGET // (rows * seq * max(d_model, seq))))]
    for _, part in parts:
        comp = part[0][0].node.component
        if isinstance(comp, Head):
            ln1 = ctx.model.blocks[comp.layer].ln1
            xq, xk, xv = (_stack([_normed(ctx, j, plans[i], ln1) for j, plans in part]) for i in range(3))
            # one depth holds the heads of one layer only
            heads = torch.tensor([c.head for j, _ in part if isinstance(c := j.node.component, Head)])
            z = heads_z_normed(ctx.model, comp.layer, heads, xq, xk, xv, pos)  # [copy, rows, seq, d_head]
            for (j, _), zj in zip(part, z, strict=True):
                ctx.values[j.key] = _Value(z=zj)
        else:
            assert isinstance(comp, Mlp)  # only heads and MLPs are recomputed
            x = torch.stack([_build(ctx, j.node.component, plans[0]) for j, plans in part])  # [copy, rows, seq, d]
            for (j, _), o in zip(part, mlp_forward(ctx.model, comp.layer, x), strict=True):
                ctx.values[j.key] = _Value(tensor=o)


def _factored_logits(ctx: _Context, job: _Job, factored: FactoredUnembed, positions: Tensor) -> Tensor:
    """The logits ``_build`` + ``unembed`` would give at ``positions``, from the same reads, with each head's
    difference kept d_head-wide (``unembed.FactoredUnembed``); the clean base is unembedded once per call.
    Every source is read on the root's one unclaimed datum (draws are not independent here)."""
    clean, other = ctx.clean, job.a.other
    base = clean.resid_before(job.node.component)[other][:, positions]  # [batch, n_pos, d_model]
    order = {id(inp): i for i, inp in enumerate(job.node.inputs)}  # terms in input order
    claims = sorted((c for r in _reads(ctx, job, Channel.IN) for c in r.claims), key=lambda c: order[id(c.inp)])
    terms = []
    for claim in claims:
        src, value = claim.inp.child.component, claim.value
        mask = None if claim.mask is None else claim.mask[:, positions]  # [batch, n_pos, 1]
        if isinstance(src, Head):
            z_clean = clean.z[src.layer][:, :, src.head]  # [data, seq, d_head]
            z = (value.z[:, positions] if value.z is not None
                 else _take(z_clean, _clean_on(value), positions))  # [batch, n_pos, d_head]
            dz = z - z_clean[other][:, positions]  # [batch, n_pos, d_head]
            terms.append(Term(dz=dz if mask is None else dz * mask.to(dz.dtype), head=src))
        else:
            out = (value.tensor[:, positions] if value.tensor is not None
                   else _take(clean.out(src), _clean_on(value), positions))  # [batch, n_pos, d_model]
            delta = out - clean.out(src)[other][:, positions]  # [batch, n_pos, d_model]
            terms.append(Term(resid=delta if mask is None else delta * mask.to(delta.dtype)))
    return factored.logits(base, (job.node.component.depth, ctx.mkey(other)), terms)

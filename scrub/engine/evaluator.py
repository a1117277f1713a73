"""The batched evaluator: logits of a treeified claim, given the data every node reads.

The step, in three named parts: ``reads.reads`` says, for a node's input on a channel, what each source is
read on (where activations are resampled); ``plan.group_reads`` groups those reads into batched work; this
module runs it: nodes whose every input is the clean input on one datum map are read from the clean run,
``_recompute`` stacks the other nodes of a layer into one batched call, and ``_factored_logits`` unembeds the
root's reads d_head-wide. The query-key split reads the same ``reads`` with the masked claims dropped.
``testing/reference.py`` does the same literally, for the tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from scrub.claims.masks import QKMask
from scrub.claims.sites import Channel, Embed, Head, Mlp, Pos
from scrub.engine.compute import CleanRun, heads_z_normed, mlp_forward, normalise
from scrub.engine.plan import Plan, build_input, group_reads
from scrub.engine.reads import Context, Job, Value, clean_on_of, reads, take
from scrub.engine.treeify import Assignments, TreeNode
from scrub.engine.unembed import FactoredUnembed, Term, unembed

COPY_BUDGET = 120_000_000  # floats per stacked input tensor; bounds memory of one batched call


@dataclass(frozen=True)
class EvalStats:
    copies: int  # nodes below logits
    recomputed: int  # nodes that needed their own computation


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
    ctx = Context(model, clean)
    jobs = [Job(node, data, i) for i, (root, data) in enumerate(zip(roots, datas, strict=True))
            for node in root.walk() if node is not root]
    for job in jobs:
        if isinstance(job.node.component, (Embed, Pos)):
            ctx.values[job.key] = Value(clean_on=job.a.datum)
    recomputed = 0
    for depth in sorted({j.node.component.depth for j in jobs if not isinstance(j.node.component, (Embed, Pos))}):
        todo: list[_Todo] = []
        for job in (j for j in jobs if j.node.component.depth == depth):
            plans, alts = _inputs(ctx, job)
            on = _clean_input(job, plans, alts)
            if on is not None:
                ctx.values[job.key] = Value(clean_on=on)
            else:
                todo.append(_Todo(job, plans, alts))
        recomputed += len(todo)
        _recompute(ctx, todo)
    factored = FactoredUnembed.of(model) if positions is not None else None
    outputs = [_logits(ctx, Job(root, data, i), factored, positions)
               for i, (root, data) in enumerate(zip(roots, datas, strict=True))]
    outputs = outputs if reduce is None else [reduce(logits) for logits in outputs]
    return outputs, EvalStats(copies=len(jobs), recomputed=recomputed)


def _clean_input(job: Job, plans: list[Plan], alts: dict) -> Tensor | None:
    """The datum map a node's output can be read from the clean run on, if its every input is the clean input on
    that map. A per-position map [rows, seq] only qualifies for an MLP (position by position); a head mixes
    positions whose inputs come from different data."""
    ons = [p.clean_on() for p in plans]
    on = ons[0]
    if (on is None or alts or (on.dim() != 1 and not isinstance(job.node.component, Mlp))
            or not all(o is not None and torch.equal(o, on) for o in ons[1:])):
        return None
    return on


def _inputs(ctx: Context, job: Job) -> tuple[list[Plan], dict[Channel, tuple[Plan, QKMask]]]:
    """A node's input plan per channel, and for head inputs with query-key masked claims the plan with those
    claims resampled and the mask (one per input, as validation ensures). Masks that change nothing (equal
    plans, or a mask true at every causal pair) are left out; a mask false at every causal pair makes the
    resampled plan the input, so both trivial masks give exactly the unmasked or unclaimed result."""
    plans, alts = [], {}
    seq = ctx.clean.embed.shape[1]
    causal = torch.ones(seq, seq, dtype=torch.bool, device="cpu").tril()  # [q, k] with mask.matrix(seq): a CPU check
    for channel in ctx.structure.channels(job.node.component):
        plan = group_reads(ctx, job, reads(ctx, job, channel))
        masked = tuple(inp for inp in job.node.inputs if inp.channel == channel and inp.qk_mask is not None)
        if masked:
            alt = group_reads(ctx, job, reads(ctx, job, channel, drop=masked))
            mask = masked[0].qk_mask
            assert mask is not None  # selected above
            matrix = mask.matrix(seq, "cpu") & causal  # [q, k] the pairs attention can use
            if not bool(matrix.any()):
                plan = alt
            elif alt.key != plan.key and not bool(matrix.eq(causal).all()):
                alts[channel] = (alt, mask)
        plans.append(plan)
    return plans, alts


@dataclass(frozen=True)
class _Todo:
    """A node to recompute: its input plans per channel, and for channels with query-key masked claims the
    plan with those claims resampled and the mask (True: the pair reads the main plan)."""

    job: Job
    plans: list[Plan]
    alts: dict[Channel, tuple[Plan, QKMask]]


def _logits(ctx: Context, job: Job, factored: FactoredUnembed | None, positions: Tensor | None) -> Tensor:
    """The root's logits [batch, seq or n_pos, d_vocab]: read from the clean run, unembedded in factored form,
    or unembedded from the built final residual."""
    plan = group_reads(ctx, job, reads(ctx, job, Channel.IN))
    on = plan.clean_on()
    if on is not None:
        return take(ctx.clean.logits, on, positions)  # [batch, seq or n_pos, d_vocab]
    if factored is not None and positions is not None and not job.data.options.independent:
        return _factored_logits(ctx, job, factored, positions)  # [batch, n_pos, d_vocab]
    resid = build_input(ctx, job.node.component, plan)  # [batch, seq, d_model]
    return unembed(ctx.model, resid if positions is None else resid[:, positions])


def _recompute(ctx: Context, todo: list[_Todo]) -> None:
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
        head = torch.tensor([comp.head], device=clean.embed.device)  # [1] indexes the model's weights
        z = heads_z_normed(ctx.model, comp.layer, head, xq, xk, xv, pos, alt=alt)
        ctx.values[item.job.key] = Value(z=z[0])  # [rows, seq, d_head]
    by_rows: dict[int, list[tuple[Job, list[Plan]]]] = {}  # nodes computed on equally many rows stack
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
            heads = torch.tensor([c.head for j, _ in part if isinstance(c := j.node.component, Head)],
                                 device=clean.embed.device)  # [copy] indexes the model's weights
            z = heads_z_normed(ctx.model, comp.layer, heads, xq, xk, xv, pos)  # [copy, rows, seq, d_head]
            for (j, _), zj in zip(part, z, strict=True):
                ctx.values[j.key] = Value(z=zj)
        else:
            assert isinstance(comp, Mlp)  # only heads and MLPs are recomputed
            x = torch.stack([build_input(ctx, j.node.component, plans[0]) for j, plans in part])  # [copy, rows, seq, d]
            for (j, _), o in zip(part, mlp_forward(ctx.model, comp.layer, x), strict=True):
                ctx.values[j.key] = Value(tensor=o)


def _normed(ctx: Context, job: Job, plan: Plan, norm: torch.nn.Module) -> Tensor:
    """``norm`` of the input a plan describes, shared by every node with an equal plan: [rows, seq, d_model]."""
    key = (id(norm), plan.key)
    if key not in ctx.normed:
        ctx.normed[key] = normalise(norm, build_input(ctx, job.node.component, plan))
    return ctx.normed[key]


def _stack(parts: list[Tensor]) -> Tensor:
    """One shared [rows, seq, d_model] tensor if every copy reads the same, else [copy, rows, seq, d_model]."""
    return parts[0] if all(p is parts[0] for p in parts) else torch.stack(parts)


def _factored_logits(ctx: Context, job: Job, factored: FactoredUnembed, positions: Tensor) -> Tensor:
    """The logits ``build_input`` + ``unembed`` would give at ``positions``, from the same reads, with each head's
    difference kept d_head-wide (``unembed.FactoredUnembed``); the clean base is unembedded once per call.
    Every source is read on the root's one unclaimed datum (draws are not independent here)."""
    clean, other = ctx.clean, job.a.other
    base = clean.resid_before(job.node.component)[other][:, positions]  # [batch, n_pos, d_model]
    # terms in the senders' order (depth, name), as ``build_input`` sums: not the claim's edge order, which
    # follows set iteration, so equal claims built differently sum in one order and agree to the last bit
    claims = sorted((c for r in reads(ctx, job, Channel.IN) for c in r.claims),
                    key=lambda c: (c.inp.child.component.depth, str(c.inp.child.component)))
    terms = []
    for claim in claims:
        src, value = claim.inp.child.component, claim.value
        mask = None if claim.mask is None else claim.mask[:, positions]  # [batch, n_pos, 1]
        if isinstance(src, Head):
            z_clean = clean.z[src.layer][:, :, src.head]  # [data, seq, d_head]
            z = (value.z[:, positions] if value.z is not None
                 else take(z_clean, clean_on_of(value), positions))  # [batch, n_pos, d_head]
            dz = z - z_clean[other][:, positions]  # [batch, n_pos, d_head]
            terms.append(Term(dz=dz if mask is None else dz * mask.to(dz.dtype), head=src))
        else:
            out = (value.tensor[:, positions] if value.tensor is not None
                   else take(clean.out(src), clean_on_of(value), positions))  # [batch, n_pos, d_model]
            delta = out - clean.out(src)[other][:, positions]  # [batch, n_pos, d_model]
            terms.append(Term(resid=delta if mask is None else delta * mask.to(delta.dtype)))
    return factored.logits(base, (job.node.component.depth, ctx.mkey(other)), terms)

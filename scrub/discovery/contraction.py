"""EAP/EAP-IG's contraction: Σ (sender output on the receiver's counterfactual − clean) · gradient for every
edge, in float64 (a score is a difference of two large sums). Slots that read the same rows are contracted
together (a layer's q, k and v heads with the MLP before them) in matmuls [senders, rows * seq * d_model] @
[rows * seq * d_model, receivers], each slot's gradient built in float64 just before (``Grads.build``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from scrub.claims.sites import Component, Head
from scrub.claims.structure import Structure
from scrub.discovery.edges import Edge
from scrub.discovery.gradients import Grads, Slot
from scrub.discovery.setup import Draw
from scrub.engine.compute import CleanRun

_JOB_BYTES = 1 << 27  # a job's float64 gradients stay under 128 MiB (or one slot)
_SENDER_BYTES = 1 << 26  # sources' float64 rows are converted 64 MiB at a time (or one source's row)
_USEFUL = 0.9  # a slot joins a job if ≥ 90% of the joined job's (sender, receiver) products are edges


@dataclass(frozen=True)
class _Plan:
    """The rows one slot's contraction runs over. ``diff``: every receiver of the slot reads row ``rows[i]`` on
    example ``ids[i]`` (paired data; a one-receiver slot), so a sender's row is its output on ``rows`` − on
    ``ids`` against the batch's gradient; otherwise its output on ``rows`` (the examples and their
    counterfactuals) against the gradient scattered there: + at each receiver's counterfactual, − at the example."""

    diff: bool
    rows: Tensor  # [k] data row ids

    def same(self, other: _Plan | None) -> bool:
        return other is not None and other.diff == self.diff and torch.equal(other.rows, self.rows)


def _plan(ids: Tensor, others: Tensor) -> _Plan:
    """One slot's plan (``others`` [b, r]: each receiver's counterfactual row)."""
    if bool((others == others[:, :1]).all()):
        return _Plan(True, others[:, 0])
    return _Plan(False, torch.unique(torch.cat([ids, others.flatten()])))  # [k] sorted


def _scatter(plan: _Plan, grad: Tensor, ids: Tensor, others: Tensor, dest: Tensor) -> None:
    """dest [r, k, seq, d_model] := ``grad`` [r, b, seq, d_model] at each receiver's counterfactual row, minus
    at the example's."""
    dest.zero_()
    for j in range(grad.shape[0]):
        dest[j].index_add_(0, torch.searchsorted(plan.rows, others[:, j].contiguous()), grad[j])
    dest.index_add_(1, torch.searchsorted(plan.rows, ids), grad, alpha=-1)


class _SenderRows:
    """Sources' outputs on a plan's rows in float64 against a job's gradients, converted into one reused buffer
    of ``_SENDER_BYTES`` a tile at a time: a block of data rows for as many sources as fit (a matmul over many
    sources runs at about twice the speed of one over a few)."""

    def __init__(self, clean: CleanRun) -> None:
        self.clean = clean
        self.per_row = clean.tokens.shape[1] * clean.embed.shape[-1]  # seq * d_model
        self.buffer = torch.empty(0, dtype=torch.float64, device=clean.embed.device)

    def scores(self, plan: _Plan, ids: Tensor, senders: list[Component], g: Tensor) -> Tensor:
        """[senders, receivers] float64: each sender's rows on the plan · each receiver's gradient ``g``
        [receivers, k * seq * d_model]."""
        k, per = len(plan.rows), self.per_row
        block = max(1, min(k, _SENDER_BYTES // (8 * per * len(senders))))  # data rows per tile
        fit = max(1, _SENDER_BYTES // (8 * per * block))  # senders per tile
        if self.buffer.numel() < min(fit, len(senders)) * block * per:
            self.buffer = torch.empty(min(fit, len(senders)) * block * per, dtype=torch.float64,
                                      device=self.buffer.device)  # [c * block * seq * d_model]
        out = torch.zeros((len(senders), g.shape[0]), dtype=torch.float64, device=g.device)  # [senders, receivers]
        for r0 in range(0, k, block):
            r1 = min(k, r0 + block)
            cols = g[:, r0 * per : r1 * per]  # [receivers, (r1 - r0) * seq * d_model]
            for c0 in range(0, len(senders), fit):
                part = senders[c0 : c0 + fit]
                tile = self.buffer[: len(part) * (r1 - r0) * per].view(len(part), -1)  # [c, (r1 - r0) * seq * d]
                self._fill(plan.rows[r0:r1], ids[r0:r1] if plan.diff else None, part, tile)
                out[c0 : c0 + len(part)].addmm_(tile, cols.T)
        return out

    def _fill(self, rows: Tensor, minus: Tensor | None, comps: list[Component], dest: Tensor) -> None:
        """dest [c, m * seq * d_model] := the outputs of ``comps`` on data ``rows`` [m] (− on ``minus``)."""
        seq, d = self.clean.tokens.shape[1], self.clean.embed.shape[-1]
        at = 0
        for group in _head_groups(comps):
            first = group[0]
            if isinstance(first, Head):  # consecutive heads of one layer: one strided view
                heads = self.clean.heads[first.layer][:, :, first.head : first.head + len(group)]
                src = heads.permute(2, 0, 1, 3)  # [c, n, seq, d_model]
            else:
                src = self.clean.out(first)[None]  # [1, n, seq, d_model]
            out = dest[at : at + len(group)].view(len(group), len(rows), seq, d)  # [c, m, seq, d_model]
            out.copy_(_take(src, rows))
            if minus is not None:
                out.sub_(_take(src, minus))  # in float64: exact differences of float32 outputs
            at += len(group)


def _take(src: Tensor, rows: Tensor) -> Tensor:
    """src [c, m, ...] at ``rows`` on dim 1: a view where the rows are consecutive, else a gathered copy."""
    start = int(rows[0]) if len(rows) else 0
    if torch.equal(rows, torch.arange(start, start + len(rows), device=rows.device)):
        return src[:, start : start + len(rows)]
    return src[:, rows]


def _head_groups(comps: list[Component]) -> list[list[Component]]:
    """``comps`` split into runs of consecutive heads of one layer and single other components."""
    groups: list[list[Component]] = []
    for c in comps:
        last = groups[-1][-1] if groups else None
        if (isinstance(c, Head) and isinstance(last, Head) and last.layer == c.layer
                and last.head + 1 == c.head):
            groups[-1].append(c)
        else:
            groups.append([c])
    return groups


def _jobs(slots: tuple[Slot, ...], plans: list[_Plan], senders: list[frozenset[Component]],
          per_row: int) -> list[list[int]]:
    """Consecutive slots with one plan, grouped while the group's float64 gradients (``per_row`` values per
    data row and receiver) fit ``_JOB_BYTES`` and ≥ ``_USEFUL`` of its products are edges."""
    jobs: list[list[int]] = []
    for i in range(len(slots)):
        if jobs and plans[i].same(plans[jobs[-1][0]]):
            job = jobs[-1] + [i]
            width = sum(len(slots[j].receivers) for j in job)
            union = frozenset().union(*(senders[j] for j in job))
            useful = sum(len(senders[j]) * len(slots[j].receivers) for j in job)
            if width * len(plans[i].rows) * per_row * 8 <= _JOB_BYTES and useful >= _USEFUL * len(union) * width:
                jobs[-1] = job
                continue
        jobs.append([i])
    return jobs


def contract(structure: Structure, clean: CleanRun, slots: tuple[Slot, ...], grads: Grads, ids: Tensor,
             draw: Draw, sums: dict[Edge, float], *, last: bool) -> None:
    """Add Σ (sender output on the receiver's counterfactual − clean) · gradient to every edge's sum: per job,
    its slots' gradients built in float64, then float64 matmuls [senders, rows * seq * d_model] @ [rows * seq *
    d_model, receivers] over blocks of the plan's rows (see ``_Plan``, ``_SenderRows``); ``last``: no other
    draw reads ``grads``, so each slot's parts are freed once built."""
    device = clean.embed.device
    ids_d = ids.to(device)  # [b]
    wanted = [structure.senders(slot.receivers[0], slot.channel) for slot in slots]
    order = tuple(dict.fromkeys(s for senders in wanted for s in senders))
    rank = {s: i for i, s in enumerate(order)}
    rows = _SenderRows(clean)
    others = [torch.stack([draw.other(r)[ids] for r in slot.receivers], 1).to(device) for slot in slots]  # [b, r]
    plans = [_plan(ids_d, o) for o in others]
    sets = [frozenset(s) for s in wanted]
    per_row = rows.per_row
    work = torch.empty(max(len(s.receivers) for s in slots) * len(ids) * per_row, dtype=grads.work,
                       device=device)  # [r * b * seq * d_model] the projections' scratch
    jobs = _jobs(slots, plans, sets, per_row)
    widths = [sum(len(slots[i].receivers) for i in job) for job in jobs]
    space = torch.empty(max(w * len(plans[job[0]].rows) for w, job in zip(widths, jobs, strict=True)) * per_row,
                        dtype=torch.float64, device=device)  # every job's gradients in turn
    for job, width in zip(jobs, widths, strict=True):
        plan = plans[job[0]]
        k = len(plan.rows)
        g = space[: width * k * per_row].view(width, k * per_row)  # [receivers, k * seq * d_model]
        at = 0
        for i in job:
            r = len(slots[i].receivers)
            dest = g[at : at + r].view(r, k, -1, clean.embed.shape[-1])  # [r, k, seq, d_model]
            if plan.diff:
                grads.build(slots[i], dest, work)
            else:
                built = torch.empty((r, len(ids)) + dest.shape[2:], dtype=torch.float64, device=device)
                grads.build(slots[i], built, work)  # [r, b, seq, d_model]
                _scatter(plan, built, ids_d, others[i], dest)
            if last:
                grads.drop(slots[i])
            at += r
        union = sorted(frozenset().union(*(sets[i] for i in job)), key=rank.__getitem__)
        scores = rows.scores(plan, ids_d, union, g).tolist()  # [senders, receivers] float64
        for sender, row in zip(union, scores, strict=True):
            at = 0
            for i in job:
                slot = slots[i]
                if sender in sets[i]:
                    for receiver, value in zip(slot.receivers, row[at : at + len(slot.receivers)], strict=True):
                        edge = Edge(sender, receiver, slot.channel)
                        sums[edge] = sums.get(edge, 0.0) + value
                at += len(slot.receivers)

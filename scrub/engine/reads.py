"""Where activations are resampled, as semantics: for a node's input on a channel, ``reads`` says what each
source feeding it is read on (its clean output on a datum map, or a claimed child's value at the claimed
positions). The values, jobs and shared context of one evaluation live here too; ``plan`` groups the reads
into batched work and ``evaluator`` runs it. ``testing/reference.py`` does the same literally."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from scrub.claims.sites import Channel, Component, Pos
from scrub.claims.structure import Structure
from scrub.engine.compute import CleanRun
from scrub.engine.treeify import Assignment, Assignments, TreeInput, TreeNode

HEAD_SUM_BUDGET = 50_000_000  # floats memoised per evaluation as layers' head sums (200 MB in float32)


def reads(ctx: Context, job: Job, channel: Channel, drop: tuple[TreeInput, ...] = ()) -> list[Read]:
    """Where activations are resampled: each source feeding ``job``'s input on ``channel`` is read clean on the
    node's unclaimed datum (one draw per node, or per input and source with independent draws), and each claim
    of it replaces it with the claimed child's value at the claimed positions. Claims in ``drop`` count as
    unclaimed (the resampled side of a query-key mask); shortformer or rotary positions feed no residual."""
    node, data = job.node, job.data
    fill_rows(ctx, job)
    dropped = {id(d) for d in drop}
    positions_feed = ctx.structure.pos == "standard"  # shortformer or rotary positions are no residual addend
    claimed: dict[Component, list[Claimed]] = {}
    for inp in node.inputs:
        if (inp.channel == channel and (positions_feed or not isinstance(inp.child.component, Pos))
                and id(inp) not in dropped):
            mask = (None if inp.positions is None  # the node's own data's tokens [rows, seq] -> [rows, seq, 1]
                    else inp.positions(ctx.clean.tokens[job.a.datum])[..., None])
            claimed.setdefault(inp.child.component, []).append(Claimed(inp, child_value(ctx, job, inp.child), mask))
    return [Read(source, data.unclaimed(node, channel, str(source)) if data.options.independent else job.a.other,
                  tuple(claimed.get(source, ())))
            for source in ctx.structure.residual_senders(node.component)]


class Claimed(NamedTuple):
    """A claimed child's output entering a node: ``value`` as the node's rows read it, at the positions of
    ``mask`` [rows, seq, 1] (None: at every position). A named tuple (immutable, cheap to make: one per
    claimed input of every evaluated node)."""

    inp: TreeInput
    value: Value
    mask: Tensor | None


class Read(NamedTuple):
    """One source's part of a node's input: its clean output on datum map ``on`` (the node's unclaimed datum),
    replaced by ``claims`` where they apply (a named tuple, like ``Claimed``)."""

    source: Component
    on: Tensor
    claims: tuple[Claimed, ...]


def child_value(ctx: Context, job: Job, child: TreeNode) -> Value:
    """``child``'s value as ``job``'s rows read it (node mode: through the child's ``read`` table; per position
    for a per-position child, whose position s is read from its row rows[:, s])."""
    value = ctx.values[(job.tree, child.path)]
    key = (job.tree, id(job.node), id(child))  # child_rows' memo, looked up here first: one call per claimed input
    rows = ctx.rows[key] if key in ctx.rows else child_rows(ctx, job, child)
    if rows is None:
        return value

    def gather(t: Tensor | None) -> Tensor | None:  # a datum map [rows_child] is indexed like any other row table
        if t is None:
            return None
        return t[rows] if t.dim() == 1 else take(t, rows)  # [rows(, seq), ...]

    return Value(clean_on=gather(value.clean_on), z=gather(value.z), tensor=gather(value.tensor))


def child_rows(ctx: Context, job: Job, child: TreeNode) -> Tensor | None:
    """The child's rows ``job``'s rows read: [rows] or [rows, seq], None for the same rows (copy mode, or a child
    computed on exactly the parent's data), memoised per (parent, child) (nodes are identified by object within
    one evaluation: each tree holds a node once)."""
    key = (job.tree, id(job.node), id(child))
    if key not in ctx.rows:
        read = job.data[child].read
        rows = None if read is None else read[job.a.datum]  # [rows] or [rows, seq]
        same = (rows is not None and rows.dim() == 1 and job.data[child].datum.shape[0] == rows.shape[0]
                and torch.equal(rows, torch.arange(rows.shape[0], device=rows.device)))
        ctx.rows[key] = None if same else rows
    return ctx.rows[key]


def fill_rows(ctx: Context, job: Job) -> None:
    """``child_rows`` of every child of ``job``'s node at once: the children's read tables [m] are stacked and
    indexed by the node's data in one gather, and tested for the same rows in one comparison (the rest, per
    position or without a table, one by one). Once per job."""
    done = (job.tree, id(job.node), "filled")
    if done in ctx.rows:
        return
    ctx.rows[done] = None
    children = {id(inp.child): (inp.child, job.data[inp.child]) for inp in job.node.inputs}
    flat = [(i, a) for i, (_, a) in children.items() if a.read is not None and a.read.dim() == 1]
    if flat:
        datum = job.a.datum  # [rows]
        rows = torch.stack([a.read for _, a in flat if a.read is not None])[:, datum]  # [children, rows]
        n = rows.shape[1]
        lengths = torch.tensor([a.datum.shape[0] for _, a in flat], device=rows.device)  # [children]
        same = ((rows == torch.arange(n, device=rows.device)).all(1) & (lengths == n)).tolist()  # [children]
        for (i, _), r, identical in zip(flat, rows, same, strict=True):
            ctx.rows[(job.tree, id(job.node), i)] = None if identical else r
    for child, a in children.values():
        if a.read is None or a.read.dim() != 1:
            child_rows(ctx, job, child)  # per position, or without a table


def take(t: Tensor, index: Tensor, positions: Tensor | None = None) -> Tensor:
    """Rows of a clean tensor t [data, seq, ...] on a datum map: [rows] (whole sequences) or [rows, seq]
    (a datum per position, from a per-position draw) -> [rows, seq or n_pos, ...]."""
    if index.dim() == 1:
        return t[index] if positions is None else t[index][:, positions]
    at = torch.arange(t.shape[1], device=index.device) if positions is None else positions
    return t[index[:, at], at[None, :]]


def clean_on_of(value: Value) -> Tensor:
    """The datum map of a value that is not recomputed (a value is clean_on, z or tensor)."""
    assert value.clean_on is not None
    return value.clean_on


@dataclass
class Value:
    """A node's output, one row per row of its data: the clean output on datum ``clean_on`` [rows], or
    recomputed: ``z`` [rows, seq, d_head] for a head (its output is z @ W_O), ``tensor`` for an MLP."""

    clean_on: Tensor | None = None
    z: Tensor | None = None
    tensor: Tensor | None = None


@dataclass(frozen=True)
class Job:
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


@dataclass
class Context:
    """What one ``evaluate_many`` call shares: the model, its structure, the clean run and caches of
    normalised inputs and datum-map keys (equal maps are compared by bytes, not elementwise)."""

    model: HookedTransformer
    clean: CleanRun
    values: dict = field(default_factory=dict)
    normed: dict = field(default_factory=dict)
    keys: dict = field(default_factory=dict)
    rows: dict = field(default_factory=dict)  # (parent job key, child path) -> the child rows the parent reads
    head_sums: dict = field(default_factory=dict)  # (layer, term keys) -> Σ z @ W_O [rows, seq, d_model]
    head_sum_budget: int = HEAD_SUM_BUDGET  # floats the memo of head sums may still hold

    def head_sum(self, key: tuple, compute: Callable[[], Tensor]) -> Tensor:
        """A layer's heads summed into the residual, memoised by their terms' keys while the memo stays within its
        budget (past it, computed each time: the same numbers, only slower)."""
        hit = self.head_sums.get(key)
        if hit is None:
            hit = compute()
            if hit.numel() <= self.head_sum_budget:
                self.head_sums[key] = hit
                self.head_sum_budget -= hit.numel()
        return hit

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

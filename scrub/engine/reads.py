"""Where activations are resampled, as semantics: for a node's input on a channel, ``reads`` says what each
source feeding it is read on (its clean output on a datum map, or a claimed child's value at the claimed
positions). The values, jobs and shared context of one evaluation live here too; ``plan`` groups the reads
into batched work and ``evaluator`` runs it. ``testing/reference.py`` does the same literally."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

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
    claimed: dict[Component, list[Claimed]] = {}
    for inp in node.inputs:
        if inp.channel == channel and feeds_residual(ctx, inp.child.component) and not any(inp is d for d in drop):
            mask = (None if inp.positions is None  # the node's own data's tokens [rows, seq] -> [rows, seq, 1]
                    else inp.positions(ctx.clean.tokens[job.a.datum])[..., None])
            claimed.setdefault(inp.child.component, []).append(Claimed(inp, child_value(ctx, job, inp.child), mask))
    return [Read(source, data.unclaimed(node, channel, str(source)) if data.options.independent else job.a.other,
                  tuple(claimed.get(source, ())))
            for source in ctx.structure.residual_senders(node.component)]


@dataclass(frozen=True)
class Claimed:
    """A claimed child's output entering a node: ``value`` as the node's rows read it, at the positions of
    ``mask`` [rows, seq, 1] (None: at every position)."""

    inp: TreeInput
    value: Value
    mask: Tensor | None


@dataclass(frozen=True)
class Read:
    """One source's part of a node's input: its clean output on datum map ``on`` (the node's unclaimed datum),
    replaced by ``claims`` where they apply."""

    source: Component
    on: Tensor
    claims: tuple[Claimed, ...]


def feeds_residual(ctx: Context, comp: Component) -> bool:
    """Whether a component's output is a residual addend (positions are not, in shortformer or rotary models)."""
    return not (isinstance(comp, Pos) and ctx.structure.pos != "standard")


def child_value(ctx: Context, job: Job, child: TreeNode) -> Value:
    """``child``'s value as ``job``'s rows read it (node mode: through the child's ``read`` table; per position
    for a per-position child, whose position s is read from its row rows[:, s])."""
    value = ctx.values[(job.tree, child.path)]
    rows = child_rows(ctx, job, child)
    if rows is None:
        return value

    def gather(t: Tensor | None) -> Tensor | None:  # a datum map [rows_child] is indexed like any other row table
        if t is None:
            return None
        return t[rows] if t.dim() == 1 else take(t, rows)  # [rows(, seq), ...]

    return Value(clean_on=gather(value.clean_on), z=gather(value.z), tensor=gather(value.tensor))


def child_rows(ctx: Context, job: Job, child: TreeNode) -> Tensor | None:
    """The child's rows ``job``'s rows read: [rows] or [rows, seq], None for the same rows (copy mode, or a child
    computed on exactly the parent's data), memoised per (parent, child)."""
    key = (job.key, child.path)
    if key not in ctx.rows:
        read = job.data[child].read
        rows = None if read is None else read[job.a.datum]  # [rows] or [rows, seq]
        same = (rows is not None and rows.dim() == 1 and job.data[child].datum.shape[0] == rows.shape[0]
                and torch.equal(rows, torch.arange(rows.shape[0], device=rows.device)))
        ctx.rows[key] = None if same else rows
    return ctx.rows[key]


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

"""The conditional sampler: which datum of the dataset a draw returns.

Draws are made for dataset indices, not batch rows, from a *pool*: the whole dataset of a run, or a
seeded subset of it of a size the user sets (``SamplingOptions.pool``). The draw of a node for datum ``d``
is a pure function of (seed, the node's identity, the purpose of the draw, ``d``) and the pool, so the
same seed gives the same draws whatever the batch size or the number of processes.

A feature groups *items*: whole sequences (codes ``[N, k]``: two sequences agree when their rows are
equal), or, for a per-position feature (codes ``[N, seq]``), (sequence, position) pairs: item (d, s)
agrees with (d', s) when their codes at s are equal. A draw for an item returns a uniformly random other
pool item of its group (the item itself only when no other agrees, which is reported as a forced self
draw). Everything here is pure given its inputs; ``Sampler`` only caches what it computed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch
from torch import Tensor

from scrub.claims.features import Feature


@dataclass(frozen=True)
class Groups:
    """The items of a dataset grouped by their codes, with the pool's items of each group listed once."""

    gid: Tensor  # [N * width] group of every item (item id = datum * width + position)
    members: Tensor  # [n_pool_items] pool item ids, sorted by group
    start: Tensor  # [n_groups] where each group's pool items begin in ``members``
    count: Tensor  # [n_groups] how many pool items each group has
    rank: Tensor  # [N * width] index of a pool item within its group's block (-1: not in the pool)
    width: int  # 1 for whole-sequence codes, seq for per-position codes


def group_items(codes: Tensor, pool: Tensor, *, per_position: bool) -> Groups:
    """Group every item of the dataset by ``codes`` ([N, k] whole-sequence, or [N, seq] per position) and
    list the items of the ``pool`` (sorted datum ids [P]) in each group."""
    n = codes.shape[0]
    if per_position:
        width = codes.shape[1]
        position = torch.arange(width, device="cpu").expand(n, width)  # [N, seq]
        keys = torch.stack([position.reshape(-1), codes.reshape(-1)], 1)  # [N*seq, 2]
    else:
        width = 1
        keys = codes.reshape(n, -1)  # [N, k]
    # draws are made on the CPU (the sampler's tokens and generators live there), so every device and rank draws
    # the same data; the indices index device tensors as they are
    gid = (torch.unique(keys, dim=0, return_inverse=True)[1] if keys.shape[1]
           else torch.zeros(n, dtype=torch.long, device="cpu"))  # [N*width]
    items = (pool[:, None] * width + torch.arange(width, device="cpu")[None, :]).reshape(-1)  # [P*width]
    order = torch.sort(gid[items], stable=True).indices  # [P*width]
    members = items[order]  # [P*width] pool items sorted by group
    count = torch.bincount(gid[members], minlength=int(gid.max()) + 1 if gid.numel() else 0)  # [n_groups]
    start = torch.cumsum(count, 0) - count  # [n_groups]
    rank = torch.full_like(gid, -1)  # [N*width]
    rank[members] = torch.arange(members.shape[0], device="cpu") - start[gid[members]]
    return Groups(gid, members, start, count, rank, width)


@dataclass(frozen=True)
class Draw:
    """Drawn datum ids, and which draws could only return the item they were drawn for."""

    datum: Tensor  # [m] dataset ids
    forced_self: Tensor  # [m] bool: no other pool item agrees (the draw returned its own datum)
    is_self: Tensor  # [m] bool: the draw returned its own datum (forced, or allowed by allow_self)


def draw(groups: Groups, items: Tensor, uniform: Tensor, *, allow_self: bool) -> Draw:
    """For each item [m] (ids datum * width + position), a pool item of its group chosen by ``uniform`` [m]
    in [0, 1): another item than itself unless ``allow_self`` (then any pool item of the group)."""
    g = groups.gid[items]  # [m]
    rank = groups.rank[items]  # [m]
    in_pool = rank >= 0  # [m]
    avail = groups.count[g] - (0 if allow_self else in_pool.long())  # [m] candidates
    j = (uniform * avail).long().clamp(max=(avail - 1).clamp(min=0))  # [m]
    if not allow_self:
        j = j + (in_pool & (j >= rank)).long()  # skip the item itself
    forced = avail == 0  # [m]
    picked = groups.members[(groups.start[g] + j).clamp(max=max(groups.members.shape[0] - 1, 0))]  # [m]
    chosen = torch.where(forced, items, picked)  # [m]
    datum = chosen // groups.width  # [m]
    return Draw(datum, forced, datum == items // groups.width)


def pool_ids(n: int, size: int | None, seed: int) -> Tensor:
    """The sorted datum ids draws come from: all ``n`` (``size`` None or ≥ n), else ``size`` of them chosen
    by the seed."""
    if size is None or size >= n:
        return torch.arange(n, device="cpu")  # dataset ids, drawn from on the CPU like every draw
    gen = _generator(seed, ("pool",), "pool")
    return torch.sort(torch.randperm(n, generator=gen, device="cpu")[:size]).values  # a CPU generator


def _generator(seed: int, path: tuple[str, ...], purpose: str) -> torch.Generator:
    digest = hashlib.sha256(repr((seed, path, purpose)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


@dataclass
class Sampler:
    """Draws for one run over ``tokens`` [N, seq] (on the CPU): the pool, and caches of feature groups and of
    each draw's uniforms (one table per node and purpose, indexed by datum or by root example)."""

    tokens: Tensor
    seed: int
    pool_size: int | None = None
    allow_self: bool = False
    pool: Tensor = field(init=False)
    _groups: dict = field(default_factory=dict, init=False, repr=False)
    _uniforms: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.tokens = self.tokens.cpu()
        self.pool = pool_ids(self.tokens.shape[0], self.pool_size, self.seed)

    @property
    def n(self) -> int:
        return self.tokens.shape[0]

    def groups(self, feature: Feature | None) -> Groups:
        """The groups of ``feature`` over the dataset (None: one group, for unclaimed draws)."""
        if feature not in self._groups:
            if feature is None:
                codes = torch.zeros(self.n, 0, dtype=torch.long, device="cpu")  # [N, 0] like self.tokens
            else:
                codes = feature.codes(self.tokens)  # [N, k] or [N, seq]
            self._groups[feature] = group_items(codes, self.pool,
                                                per_position=feature is not None and feature.per_position)
        return self._groups[feature]

    def uniform(self, path: tuple[str, ...], purpose: str, width: int) -> Tensor:
        """[N, width] uniforms of one draw, a pure function of (seed, path, purpose)."""
        key = (path, purpose, width)
        if key not in self._uniforms:
            self._uniforms[key] = torch.rand(self.n, width, generator=_generator(self.seed, path, purpose),
                                             device="cpu")  # [N, width] from a CPU generator: the same on any device
        return self._uniforms[key]

    def agreeing(self, feature: Feature | None, data: Tensor, path: tuple[str, ...], purpose: str,
                 by: Tensor | None = None) -> Draw:
        """For each datum [m], a pool datum agreeing with it on ``feature`` ([m], or [m, seq] per position).
        ``by`` [m] picks the uniforms' rows (default: the data themselves)."""
        groups = self.groups(feature)
        w = groups.width
        items = data[:, None] * w + torch.arange(w, device="cpu")[None, :]  # [m, width] CPU dataset ids
        u = self.uniform(path, purpose, w)[data if by is None else by]  # [m, width]
        out = draw(groups, items.reshape(-1), u.reshape(-1), allow_self=self.allow_self)
        shape = (data.shape[0], w) if w > 1 else (data.shape[0],)
        return Draw(out.datum.reshape(shape), out.forced_self.reshape(shape), out.is_self.reshape(shape))

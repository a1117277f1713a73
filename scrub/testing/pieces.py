"""Features, positions functions and query-key masks whose ``repr`` is the code that rebuilds them.

The strategies draw claims from these, so that a failing property prints a claim one can paste: every
function here is a frozen dataclass (equal when built with equal arguments), and ``feature``, ``positions``
and ``qk_mask`` wrap them in the scrub objects a hypothesis graph takes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from scrub.claims.features import Feature
from scrub.claims.masks import QKMask


@dataclass(frozen=True)
class TokenMod:
    """Feature codes: the token at position ``at`` modulo ``mod`` ([batch, 1]); ``at=None``: at every position,
    for a per-position feature ([batch, seq])."""

    mod: int
    at: int | None = 0

    def __call__(self, tokens: Tensor) -> Tensor:
        return tokens % self.mod if self.at is None else tokens[:, self.at : self.at + 1] % self.mod


@dataclass(frozen=True)
class RepeatCount:
    """Feature codes: how many positions hold a token seen earlier in the row, in buckets of ``bucket`` ([batch, 1])."""

    bucket: int = 2

    def __call__(self, tokens: Tensor) -> Tensor:
        earlier = (tokens[:, :, None] == tokens[:, None, :]).tril(-1).any(-1)  # [batch, seq]
        return earlier.sum(1, keepdim=True) // self.bucket


@dataclass(frozen=True)
class TokenBelow:
    """Positions mask: True where the token is below ``threshold`` ([batch, seq], bool)."""

    threshold: int

    def __call__(self, tokens: Tensor) -> Tensor:
        return tokens < self.threshold


@dataclass(frozen=True)
class FromPosition:
    """Positions mask: True from position ``start`` on ([batch, seq], bool): a function of the position only."""

    start: int

    def __call__(self, tokens: Tensor) -> Tensor:
        return (torch.arange(tokens.shape[1], device=tokens.device) >= self.start).expand(tokens.shape).clone()


@dataclass(frozen=True)
class KeyMod:
    """Query-key mask: True where key % ``mod`` == ``rest`` (e.g. even keys)."""

    mod: int
    rest: int = 0

    def __call__(self, query: Tensor, key: Tensor) -> Tensor:
        return (key % self.mod == self.rest) & (query >= 0)


def feature(fn: TokenMod | RepeatCount) -> Feature:
    """A Feature named by its function's code; per position for ``TokenMod(at=None)``."""
    per_position = isinstance(fn, TokenMod) and fn.at is None
    return Feature(repr(fn), fn, per_position=per_position)


def qk_mask(fn: KeyMod) -> QKMask:
    """A QKMask named by its function's code."""
    return QKMask(repr(fn), fn)

"""Contracts of a claim's own functions: a feature or a positions mask is a function of each row's tokens (the
same row gives the same codes in any batch, order or company), a query-key mask a function of the positions.

The sampler groups a whole dataset by a feature's codes and ``run`` evaluates positions masks batch by batch, so
a function that reads the batch (its row index, its size, other rows) gives draws and claims that change with
the batching. Each function raises an ``AssertionError`` naming the function, the rows and the tokens.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from scrub.claims.features import Feature
from scrub.claims.masks import QKMask
from scrub.errors import ScrubError
from scrub.testing.reproducer import feature_code, mask_code, positions_code, tokens_code


def reorderings(n: int, seed: int = 0) -> tuple[tuple[str, Tensor], ...]:
    """Row selections a pure function must commute with: a permutation, the reverse, duplicated rows and
    each of the first two rows alone ([k] row indices each)."""
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen)  # [n]
    dup = torch.cat([torch.arange(n), torch.randint(0, n, (max(n // 2, 1),), generator=gen)])  # [n + n//2]
    singles = tuple((f"row {i} alone", torch.tensor([i])) for i in range(min(n, 2)))
    return (("a permutation", perm), ("the reverse order", torch.arange(n).flip(0)),
            ("rows duplicated", dup), *singles)


def _commutes(fn: Callable[[Tensor], Tensor], tokens: Tensor, seed: int) -> str | None:
    """None when ``fn(tokens[rows]) == fn(tokens)[rows]`` for every reordering (and a second call agrees), else
    what went wrong."""
    whole = fn(tokens)
    again = fn(tokens)
    if not torch.equal(whole, again):
        return "two calls on the same tokens return different values"
    for label, rows in reorderings(tokens.shape[0], seed):
        try:
            got = fn(tokens[rows])
        except ScrubError as err:  # e.g. a feature that fails on a single row
            return f"on {label} (rows {rows.tolist()}) it fails: {err}"
        if got.shape != whole[rows].shape or not torch.equal(got, whole[rows]):
            return f"on {label} (rows {rows.tolist()}) it does not return the same rows' values"
    return None


def feature_is_a_function_of_tokens(feature: Feature, tokens: Tensor, *, seed: int = 0) -> None:
    """``feature``'s codes of a row depend on that row's tokens only: permuted, reversed, duplicated or single
    rows get the same codes (the sampler groups a whole dataset by them, ``run`` checks them on one batch)."""
    problem = _commutes(feature.codes, tokens, seed)
    if problem:
        raise AssertionError(f"feature {feature.name!r} is not a function of each row's tokens: {problem}\n"
                             f"reproducer:\n    feature = {feature_code(feature)}\n    {tokens_code(tokens)}\n"
                             f"    seed = {seed}  # scrub.testing.purity.reorderings(n, seed)")


def positions_are_a_function_of_tokens(fn: Callable[[Tensor], Tensor], tokens: Tensor, *, seed: int = 0) -> None:
    """A positions mask of a row depends on that row's tokens only (``run`` evaluates it batch by batch)."""
    problem = _commutes(fn, tokens, seed)
    if problem:
        name = getattr(fn, "__name__", type(fn).__name__)
        raise AssertionError(f"positions function {name!r} is not a function of each row's tokens: {problem}\n"
                             f"reproducer:\n    positions = {positions_code(fn)}\n    {tokens_code(tokens)}\n"
                             f"    seed = {seed}  # scrub.testing.purity.reorderings(n, seed)")


def qk_mask_is_a_function_of_positions(mask: QKMask, seq: int) -> None:
    """``mask`` gives the same matrix on every call, and the same (query, key) pairs for every sequence length up
    to ``seq``: a mask of positions cannot depend on the data or on how long the batch's sequences are."""
    full = mask.matrix(seq)  # [seq, seq]
    problem = None
    if not torch.equal(mask.matrix(seq), full):
        problem = "two calls return different matrices"
    for length in range(1, seq):
        if problem is None and not torch.equal(mask.matrix(length), full[:length, :length]):
            problem = (f"its matrix for sequences of {length} is not the first {length} rows and columns of its "
                       f"matrix for {seq}")
    if problem:
        raise AssertionError(f"query-key mask {mask.name!r} is not a function of the positions: {problem}\n"
                             f"reproducer:\n    mask = {mask_code(mask)}\n    seq = {seq}")

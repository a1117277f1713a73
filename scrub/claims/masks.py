"""Query–key masks: which (query, key) position pairs of a head read an edge's claimed input.

An edge into a head's q, k or v input may carry ``qk_mask=QKMask(...)``. Through the masked (query, key)
pairs the head reads the claimed input; through the other pairs that input is resampled. This is REMIX's
split of a head's attention, ``attn_probs * mask + attn_probs * (1 - mask)``, with the two halves reading
different data: for the k (or q) input, the score of pair (q, k) is computed from the claimed key (query)
when the mask is True and from the resampled one otherwise; for the v input, the value that key k passes
to query q is the claimed one when the mask is True and the resampled one otherwise.

A mask is a function of positions only (not of the tokens), so it is the same for every example:
``fn(query, key)`` receives integer position tensors that broadcast against each other (query [seq, 1],
key [1, seq]) and returns a bool tensor, e.g. ``lambda q, k: k == q - 1``. Pairs with key > query are
never attended (causal attention), so what a mask says about them does not matter.

The factories return masks that compare equal when built with the same arguments (``within(3) ==
within(3)``), which is what the hypothesis check "one mask per head input" compares.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from scrub.claims.features import one_line
from scrub.errors import ScrubError

MaskFn = Callable[[Tensor, Tensor], Tensor]


class MaskError(ScrubError):
    """A query–key mask whose function fails or returns something other than a bool [query, key] matrix."""


@dataclass(frozen=True)
class QKMask:
    """A named query–key mask: ``fn(query [seq, 1], key [1, seq])`` -> bool, True where the claimed input is
    read. ``name`` appears in errors and reports."""

    name: str
    fn: MaskFn

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise MaskError(f"QKMask(name, fn): name is a non-empty string naming the mask, got {self.name!r}")
        if not callable(self.fn):
            raise MaskError(f"QKMask {self.name!r}: fn must be a function (query, key) -> bool tensor, "
                            f"got {type(self.fn).__name__}")

    def __str__(self) -> str:
        return self.name

    def matrix(self, seq: int, device: torch.device | str | None = None) -> Tensor:
        """The mask as a bool [seq, seq] matrix (query x key) on ``device``. ``fn`` may return any bool tensor
        that broadcasts to [seq, seq] (e.g. [seq, 1] for a mask of queries only); anything else, or an
        exception inside ``fn``, raises ``MaskError`` in one line naming the mask."""
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
            raise MaskError(f"query-key mask {self.name!r}: seq must be a positive int, got {seq!r}")
        query = torch.arange(seq, device=device)[:, None]  # [q, 1]
        key = torch.arange(seq, device=device)[None, :]  # [1, k]
        try:
            out = self.fn(query, key)
        except Exception as err:  # the user's function: report it in one line, naming the mask
            raise MaskError(f"query-key mask {self.name!r} failed on positions of a sequence of {seq} "
                            f"(query [{seq}, 1], key [1, {seq}]): {one_line(err)}") from err
        where = f"query-key mask {self.name!r} returned"
        if not isinstance(out, Tensor):
            raise MaskError(f"{where} a {type(out).__name__}, not a torch bool tensor: return a comparison of the "
                            f"positions, e.g. lambda q, k: k == q - 1")
        if out.dtype != torch.bool:
            dtype = str(out.dtype).replace("torch.", "")
            raise MaskError(f"{where} {'an' if dtype[0] in 'aeiou' else 'a'} {dtype} tensor: masks must be bool "
                            f"(True where the claimed input is read), since 0/1 or fractional values would weight "
                            f"the claim; return a comparison or .bool()")
        if out.dim() > 2 or any(n not in (1, seq) for n in out.shape):
            raise MaskError(f"{where} a tensor of shape {list(out.shape)} for a sequence of {seq}: a mask is "
                            f"[query, key] = [{seq}, {seq}] (or broadcasts to it)")
        if out.device != query.device:
            raise MaskError(f"{where} a tensor on {out.device} for positions on {query.device}: build it from the "
                            f"positions it is given")
        return out.expand(seq, seq).clone()  # [q, k]


# --- factories ---------------------------------------------------------------------------------------------
# Module-level functions and frozen dataclasses, so that masks built with the same arguments are equal.

def _previous(query: Tensor, key: Tensor) -> Tensor:
    return key == query - 1


@dataclass(frozen=True)
class _Within:
    window: int

    def __call__(self, query: Tensor, key: Tensor) -> Tensor:
        back = query - key
        return (back >= 0) & (back <= self.window)


@dataclass(frozen=True)
class _Constant:
    value: bool

    def __call__(self, query: Tensor, key: Tensor) -> Tensor:
        return torch.full(torch.broadcast_shapes(query.shape, key.shape), self.value, dtype=torch.bool,
                          device=query.device)


def previous_position() -> QKMask:
    """Each query reads the claimed input only through the key just before it (key == query - 1); every other
    key, including the query's own position, passes the resampled input. Position 0 has no previous key."""
    return QKMask("previous_position", _previous)


def within(window: int) -> QKMask:
    """Each query reads the claimed input through the keys at most ``window`` positions back
    (0 <= query - key <= window; ``window=0`` is the query's own position only) and the resampled input
    through keys further away: REMIX's "near vs far context" split."""
    if isinstance(window, bool) or not isinstance(window, int) or window < 0:
        raise MaskError(f"within(window): window is the number of positions back, an int >= 0, got {window!r}")
    return QKMask(f"within({window})", _Within(window))


def all_keys() -> QKMask:
    """Every (query, key) pair reads the claimed input: the same claim as the edge without a mask."""
    return QKMask("all_keys", _Constant(True))


def no_keys() -> QKMask:
    """No (query, key) pair reads the claimed input: the same as leaving the edge out (the input is
    resampled everywhere)."""
    return QKMask("no_keys", _Constant(False))

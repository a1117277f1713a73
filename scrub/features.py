"""Features (the equivalence classes of causal scrubbing) and the conditional sampler.

A ``Feature`` maps a batch of token sequences to integer codes, one row per sequence; two sequences agree
on the feature when their rows are equal. A claimed node with a feature reads a datum drawn from the
data that agree with its parent's datum on that feature; a node without one (the identity) reads its
parent's datum itself. Sampling draws from the other sequences of the same batch, so a larger batch
gives finer features more candidates. Everything here is a pure function.

Codes must be an integer or bool tensor with one row per sequence (``[batch]`` or ``[batch, ...]``):
anything else (a Python int, a numpy array, float codes, even whole-valued ones) is a one-line
``FeatureError`` saying so, rather than being truncated by ``.long()`` or failing deep in torch.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from scrub.data import induction_candidates

TokenFn = Callable[[Tensor], Tensor]


class FeatureError(ValueError):
    """A feature that fails on a batch or returns something other than integer codes, one row per sequence."""


def one_line(err: BaseException) -> str:
    """``Type: message`` of an exception, on one line (torch messages can span several)."""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


@dataclass(frozen=True)
class Feature:
    """A named function of the input: ``fn(tokens [batch, seq]) -> codes [batch, ...]`` (integers)."""

    name: str
    fn: TokenFn

    def codes(self, tokens: Tensor) -> Tensor:
        """The codes of every sequence: a LongTensor [batch, k] on the CPU (where the sampler draws)."""
        n = tokens.shape[0]
        try:
            out = self.fn(tokens)
        except Exception as err:  # the user's function: one line, naming the feature
            raise FeatureError(f"feature {self.name!r} failed on tokens of shape {list(tokens.shape)}: "
                               f"{one_line(err)}") from err
        if isinstance(out, Feature):
            raise FeatureError(f"feature {self.name!r} returned a Feature, not codes: {self.name!r} makes features, so "
                               f"call it, e.g. feature={self.name}() rather than feature={self.name}")
        if not isinstance(out, Tensor):
            module = type(out).__module__
            if module == "numpy":
                kind = f"a numpy.{type(out).__name__}"
                fix = "return a torch tensor instead, e.g. torch.as_tensor(codes)"
            else:
                kind = f"a Python {type(out).__name__}" if module == "builtins" else f"a {type(out).__name__}"
                fix = "return a tensor of integer codes with one row per sequence, e.g. tokens[:, -1]"
            raise FeatureError(f"feature {self.name!r} returned {kind}, not a tensor: {fix}")
        if out.dtype.is_floating_point or out.dtype.is_complex:
            raise FeatureError(f"feature {self.name!r} returned {str(out.dtype).replace('torch.', '')} codes: "
                               f"codes are integer class labels (two sequences agree when their codes are equal); "
                               f"convert with .long() if the values are whole, or bucket them first, "
                               f"e.g. (x * 10).floor().long()")
        if out.dim() == 0:
            raise FeatureError(f"feature {self.name!r} returned a single value for {n} sequences: return one row per "
                               f"sequence, [batch] or [batch, k]")
        if out.shape[0] != n:
            raise FeatureError(f"feature {self.name!r} returned {out.shape[0]} rows for {n} sequences: return one row "
                               f"per sequence, [batch] or [batch, k]")
        return out.reshape(n, -1).long().cpu()  # [batch, k]


def _makes_features(value: object) -> bool:
    """Whether ``value`` is a function that returns a Feature (a factory such as ``previous_token``)."""
    try:
        annotation = inspect.signature(value).return_annotation  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return annotation is Feature or annotation == "Feature"


def as_feature(value: Feature | TokenFn | None, *, where: str = "") -> Feature | None:
    """Accept a Feature, a plain callable (named after itself) or None (the identity)."""
    if value is None or isinstance(value, Feature):
        return value
    if value is Feature:
        raise TypeError(f"{where}feature=Feature is the class: make a feature, "
                        f"e.g. Feature('parity', lambda t: t[:, -1] % 2)")
    if callable(value):
        name = getattr(value, "__name__", "feature")
        if _makes_features(value):
            raise TypeError(f"{where}feature={name} is a function that makes a feature, not a feature: call it, "
                            f"feature={name}()")
        return Feature(name, value)
    raise TypeError(f"{where}feature must be a scrub.features.Feature or a callable tokens -> codes, "
                    f"got {type(value).__name__}")


# --- a small library of features ------------------------------------------------------------------

def constant() -> Feature:
    """Every input agrees: the node's value is claimed not to depend on the input at all."""
    return Feature("constant", lambda tokens: torch.zeros(tokens.shape[0], 1, dtype=torch.long))


def current_token(at: int | slice = -1) -> Feature:
    """The token at position(s) ``at`` (default: the last position)."""
    return Feature(f"current_token[{_fmt(at)}]", lambda tokens: tokens[:, at])


def previous_token(at: int | slice = -1) -> Feature:
    """The token just before position(s) ``at``."""
    def fn(tokens: Tensor) -> Tensor:
        prev = torch.roll(tokens, 1, dims=1)  # [batch, seq]
        prev[:, 0] = -1
        return prev[:, at]
    return Feature(f"previous_token[{_fmt(at)}]", fn)


def is_repeat(at: int | slice = slice(None)) -> Feature:
    """Whether the token at each position in ``at`` occurred earlier in the sequence (0/1 codes)."""
    return Feature(f"is_repeat[{_fmt(at)}]", lambda tokens: induction_candidates(tokens)[:, at].long())


def repeat_count(bucket: int = 8) -> Feature:
    """How many positions hold a repeated token, in buckets of ``bucket``: a coarse sequence-level class."""
    return Feature(f"repeat_count/{bucket}", lambda tokens: induction_candidates(tokens).sum(1, keepdim=True) // bucket)


def _fmt(at: int | slice) -> str:
    if isinstance(at, slice):
        return f"{'' if at.start is None else at.start}:{'' if at.stop is None else at.stop}"
    return str(at)


# --- position masks for edges: where along the receiver's sequence a claimed input is claimed -------

def after_earlier_occurrence(tokens: Tensor) -> Tensor:
    """True at position j when tokens[j-1] also occurs elsewhere in the sequence: the key positions an
    induction head attends to (the token right after an earlier copy of some later query token)."""
    same = tokens[:, :, None] == tokens[:, None, :]  # [batch, seq, seq]
    recurs = (same.sum(-1) > 1)  # [batch, seq]  tokens[j] occurs at least twice
    out = torch.zeros_like(recurs)
    out[:, 1:] = recurs[:, :-1]
    return out  # [batch, seq]


# --- the conditional sampler ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Draw:
    """Datum indices (into the batch) for each row, and which rows could only draw their parent."""

    index: Tensor  # [batch] long
    forced_self: Tensor  # [batch] bool


def sample_agreeing(codes: Tensor, parent: Tensor, generator: torch.Generator, *, allow_self: bool) -> Draw:
    """For each row b, a uniformly random batch index j whose codes equal ``codes[parent[b]]``.

    With ``allow_self=False`` j != parent[b] whenever another agreeing datum exists; otherwise j = parent[b]
    and the row is marked ``forced_self``. Pure given the generator's state.
    """
    n = codes.shape[0]
    agree = (codes[parent][:, None, :] == codes[None, :, :]).all(-1)  # [batch(rows), batch(candidates)]
    if not allow_self:
        others = agree.clone()
        others[torch.arange(n), parent] = False
        has_other = others.any(-1)  # [batch]
        agree = torch.where(has_other[:, None], others, agree)
    else:
        has_other = torch.ones(n, dtype=torch.bool)
    weights = agree.float()  # [batch, batch]
    index = torch.multinomial(weights, 1, generator=generator)[:, 0]  # [batch]
    return Draw(index, ~has_other)


def sample_other(parent: Tensor, generator: torch.Generator, *, allow_self: bool) -> Draw:
    """A uniformly random datum per row (the draw for unclaimed inputs), not the parent's unless allowed."""
    n = parent.shape[0]
    if allow_self or n == 1:
        index = torch.randint(0, n, (n,), generator=generator)
        return Draw(index, torch.full((n,), n == 1))
    offset = torch.randint(1, n, (n,), generator=generator)  # [batch] in 1..n-1
    return Draw((parent + offset) % n, torch.zeros(n, dtype=torch.bool))

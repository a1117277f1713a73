"""Features (the equivalence classes of causal scrubbing) and position masks for edges.

A ``Feature`` maps a batch of token sequences to integer codes, one row per sequence; two sequences agree
on the feature when their rows are equal. A claimed node with a feature reads a datum drawn from the
data that agree with its parent's datum on that feature; a node without one (the identity) reads its
parent's datum itself. A *per-position* feature (``per_position=True``) returns one code per position,
``[batch, seq]``: the node is split by position, and each position reads its own datum, one that agrees
at that position (Redwood's ``split_to_concat`` with one sampler per position). The sampler is in
``sampling.py``; everything here is a pure function.

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

from scrub.data.batches import induction_candidates
from scrub.errors import ScrubError

TokenFn = Callable[[Tensor], Tensor]


class FeatureError(ScrubError):
    """A feature that fails on a batch or returns something other than integer codes, one row per sequence."""


class FeatureTypeError(FeatureError, TypeError):
    """A feature argument of the wrong kind (the class, a factory, a non-callable)."""


def one_line(err: BaseException) -> str:
    """``Type: message`` of an exception, on one line (torch messages can span several)."""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


@dataclass(frozen=True)
class Feature:
    """A named function of the input: ``fn(tokens [batch, seq]) -> codes [batch, ...]`` (integers), or, with
    ``per_position``, codes ``[batch, seq]``: one per position, each position sampled on its own."""

    name: str
    fn: TokenFn
    per_position: bool = False

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
        if self.per_position and tuple(out.shape) != tuple(tokens.shape):
            raise FeatureError(f"per-position feature {self.name!r} returned codes of shape {list(out.shape)} for "
                               f"tokens of shape {list(tokens.shape)}: a per-position feature returns one code per "
                               f"position, [batch, seq]")
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
        raise FeatureTypeError(f"{where}feature=Feature is the class: make a feature, "
                        f"e.g. Feature('parity', lambda t: t[:, -1] % 2)")
    if callable(value):
        name = getattr(value, "__name__", "feature")
        if _makes_features(value):
            raise FeatureTypeError(f"{where}feature={name} is a function that makes a feature, not a feature: call it, "
                            f"feature={name}()")
        return Feature(name, value)
    raise FeatureTypeError(f"{where}feature must be a scrub.claims.features.Feature or a callable tokens -> codes, "
                    f"got {type(value).__name__}")


# --- a small library of features ------------------------------------------------------------------

def constant() -> Feature:
    """Every input agrees: the node's value is claimed not to depend on the input at all."""
    return Feature("constant", lambda tokens: torch.zeros(tokens.shape[0], 1, dtype=torch.long))


def current_token(at: int | slice = -1, *, per_position: bool = False) -> Feature:
    """The token at position(s) ``at`` (default: the last position); ``per_position``: the token at every
    position, each position agreeing on its own."""
    if per_position:
        return Feature("current_token[each]", lambda tokens: tokens, per_position=True)
    return Feature(f"current_token[{_fmt(at)}]", lambda tokens: tokens[:, at])


def _previous(tokens: Tensor) -> Tensor:
    prev = torch.roll(tokens, 1, dims=1)  # [batch, seq]
    prev[:, 0] = -1
    return prev


def previous_token(at: int | slice = -1, *, per_position: bool = False) -> Feature:
    """The token just before position(s) ``at`` (-1 at position 0); ``per_position``: at every position."""
    if per_position:
        return Feature("previous_token[each]", _previous, per_position=True)
    return Feature(f"previous_token[{_fmt(at)}]", lambda tokens: _previous(tokens)[:, at])


def is_repeat(at: int | slice = slice(None), *, per_position: bool = False) -> Feature:
    """Whether the token at each position in ``at`` occurred earlier in the sequence (0/1 codes); with
    ``per_position`` each position agrees on its own (a whole-row code rarely has an agreeing datum)."""
    if per_position:
        return Feature("is_repeat[each]", lambda tokens: induction_candidates(tokens).long(), per_position=True)
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

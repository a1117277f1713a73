"""The validated claim: frozen nodes and per-channel edges (``Claim``), built by ``scrub.claims.validation``
from a hypothesis graph, read by the engine; and ``HypothesisError``, the error every claim check raises."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import torch
from torch import Tensor

from scrub.claims.features import Feature, one_line
from scrub.claims.masks import QKMask
from scrub.claims.sites import Channel, Component, Embed, Pos
from scrub.errors import ScrubError

PositionFn = Callable[[Tensor], Tensor]


class HypothesisError(ScrubError):
    """A hypothesis that cannot be run; the message names where and how to fix it."""


@dataclass(frozen=True)
class ClaimNode:
    id: str
    component: Component
    feature: Feature | None = None


@dataclass(frozen=True)
class CheckedPositions:
    """An edge's positions function, checked on every call: it must return a bool mask of the tokens' shape
    [batch, seq] on their device. ``where`` names the file and edge for the error."""

    fn: PositionFn
    where: str

    @property
    def __name__(self) -> str:  # reads like the wrapped function
        return getattr(self.fn, "__name__", "positions")

    def __call__(self, tokens: Tensor) -> Tensor:
        try:
            mask = self.fn(tokens)
        except Exception as err:  # the user's function: report it in one line, with where it is used
            raise HypothesisError(f"{self.where}: positions function {self.__name__!r} failed on tokens of shape "
                                  f"{list(tokens.shape)}: {one_line(err)}") from err
        problem = _mask_problem(mask, tokens)
        if problem:
            raise HypothesisError(f"{self.where}: positions function {self.__name__!r} {problem}")
        return mask


def _mask_problem(mask: object, tokens: Tensor) -> str | None:
    shape = list(tokens.shape)
    if isinstance(mask, Feature):
        return (f"returned a Feature: 'positions' takes a function tokens -> bool mask {shape} "
                f"(e.g. scrub.claims.features.after_earlier_occurrence); features go on nodes as feature=...")
    if not isinstance(mask, Tensor):
        module, name = type(mask).__module__, type(mask).__name__
        kind = f"{module}.{name}" if module == "numpy" else name
        return (f"returned a {kind}, not a torch bool tensor {shape}: "
                f"return e.g. tokens > 0 or torch.as_tensor(mask).bool()")
    if mask.dtype != torch.bool:
        dtype = str(mask.dtype).replace("torch.", "")
        return (f"returned {'an' if dtype[0] in 'aeiou' else 'a'} {dtype} mask: masks must be bool (True where the "
                f"edge is claimed), since 0/1 or fractional values would weight the claim; "
                f"return mask.bool() or a comparison")
    if list(mask.shape) != shape:
        return (f"returned a mask of shape {list(mask.shape)} for tokens of shape {shape}: a mask has one row per "
                f"example and one column per position, [batch, seq]")
    if mask.device != tokens.device:
        return f"returned a mask on {mask.device} for tokens on {tokens.device}: build it on tokens.device"
    return None


@dataclass(frozen=True)
class ClaimEdge:
    """``source``'s output enters ``target`` through ``channel``, claimed at ``positions`` (None: everywhere)
    and, for a head's input, through the (query, key) pairs of ``qk_mask`` (None: every pair)."""

    source: str
    target: str
    channel: Channel
    positions: PositionFn | None = None
    qk_mask: QKMask | None = None


@dataclass(frozen=True)
class Claim:
    """A validated hypothesis: the nodes and per-channel edges of the claimed paths, and the root id."""

    name: str
    nodes: tuple[ClaimNode, ...]
    edges: tuple[ClaimEdge, ...]
    root: str | None  # id of the logits node; None for the empty hypothesis
    description: str = ""
    origin: str = "<graph>"  # the hypothesis file (or "<graph>"), named by errors

    def node(self, node_id: str) -> ClaimNode:
        return self._by_id[node_id]

    def inputs_of(self, node_id: str) -> tuple[ClaimEdge, ...]:
        return self._inputs.get(node_id, ())

    @cached_property
    def _by_id(self) -> dict[str, ClaimNode]:
        return {n.id: n for n in self.nodes}

    @cached_property
    def _inputs(self) -> dict[str, tuple[ClaimEdge, ...]]:
        out: dict[str, list[ClaimEdge]] = {}
        for e in self.edges:
            out.setdefault(e.target, []).append(e)
        return {k: tuple(v) for k, v in out.items()}

    def n_paths(self) -> int:
        """Number of input -> logits paths (counting each channel separately)."""
        if self.root is None:
            return 0
        memo: dict[str, int] = {}

        def count(node_id: str) -> int:
            if node_id not in memo:
                ins = self.inputs_of(node_id)
                comp = self.node(node_id).component
                memo[node_id] = (1 if isinstance(comp, (Embed, Pos)) else 0) + sum(count(e.source) for e in ins)
            return memo[node_id]

        return count(self.root)

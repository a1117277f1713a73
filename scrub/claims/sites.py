"""Typed names for model components and their inputs, and the one place they become TransformerLens hook names.

Components are written the same way everywhere: ``embed``, ``pos``, heads ``"L.H"`` (e.g. ``"1.6"``),
MLPs ``"mlp.L"`` and ``logits``. Strings are parsed once, here, into frozen dataclasses; TransformerLens
hook-name strings are rendered only by ``hook_name``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable, Union

from transformer_lens import HookedTransformerConfig

from scrub.errors import ScrubError


class SiteError(ScrubError):
    """A component name or input channel that the model does not have; the message says the fix."""


class Channel(str, Enum):
    """The input of a component that an edge enters. Heads have q, k, v; MLPs and logits have one input."""

    Q = "q"
    K = "k"
    V = "v"
    IN = "in"


HEAD_CHANNELS = (Channel.Q, Channel.K, Channel.V)
CHANNEL_NAMES = {c.value: c for c in Channel}  # "q" -> Channel.Q: a dict lookup, not Enum's (validation: ~30k calls)


@dataclass(frozen=True, order=True)
class Head:
    layer: int
    head: int

    def __str__(self) -> str:
        return f"{self.layer}.{self.head}"

    @property
    def depth(self) -> float:
        return self.layer


@dataclass(frozen=True, order=True)
class Mlp:
    layer: int

    def __str__(self) -> str:
        return f"mlp.{self.layer}"

    @property
    def depth(self) -> float:
        return self.layer + 0.5  # after the attention of its own layer


@dataclass(frozen=True, order=True)
class Embed:
    def __str__(self) -> str:
        return "embed"

    @property
    def depth(self) -> float:
        return -1.0


@dataclass(frozen=True, order=True)
class Pos:
    def __str__(self) -> str:
        return "pos"

    @property
    def depth(self) -> float:
        return -1.0


@dataclass(frozen=True, order=True)
class Logits:
    def __str__(self) -> str:
        return "logits"

    @property
    def depth(self) -> float:
        return float("inf")


Component = Union[Head, Mlp, Embed, Pos, Logits]
FwdHook = tuple[str | Callable[..., Any], Callable[..., Any]]  # one entry of TransformerLens' fwd_hooks
INPUTS = (Embed(), Pos())

_HEAD = re.compile(r"^(\d+)\.(\d+)$")
_MLP = re.compile(r"^mlp\.(\d+)$")


def parse_component(name: str | Component, cfg: HookedTransformerConfig, *, strict: bool = False) -> Component:
    """Turn ``"1.6"``, ``"mlp.0"``, ``"embed"``, ``"pos"`` or ``"logits"`` into a component of this model.

    Surrounding spaces and leading zeros are forgiven (``" 1.06"`` reads as ``"1.6"``) unless ``strict``:
    hypothesis graphs use names as node ids, so there a component has exactly one spelling, ``str(component)``.
    """
    if isinstance(name, (Head, Mlp, Embed, Pos, Logits)):
        name = str(name)
    if not isinstance(name, str):
        raise SiteError(f"a component name is a string such as '1.6' or 'mlp.0', got {type(name).__name__} {name!r}")
    text = name.strip()
    lower = text.lower()
    if lower in ("embed", "logits", "pos"):
        named: dict[str, Component] = {"embed": Embed(), "logits": Logits(), "pos": Pos()}
        component = named[lower]
    elif m := _HEAD.match(text):
        component = Head(int(m[1]), int(m[2]))
    elif m := _MLP.match(lower):
        component = Mlp(int(m[1]))
    else:
        raise SiteError(
            f"cannot read component name {text!r}: write 'embed', 'pos', a head as 'LAYER.HEAD' (e.g. '1.6'), "
            f"an MLP as 'mlp.LAYER' (e.g. 'mlp.0'), or 'logits'"
        )
    canonical = str(component)
    if name != canonical and (strict or lower != text):
        raise SiteError(f"{name!r} is not how this component is written: write {canonical!r} (one spelling: no "
                        f"spaces, no leading zeros, lower case)")
    if isinstance(component, Pos) and cfg.positional_embedding_type not in ("standard", "shortformer"):
        raise SiteError(f"'pos' names a learned positional embedding; "
                        f"this model uses {cfg.positional_embedding_type!r}")
    if isinstance(component, Head) and (component.layer >= cfg.n_layers or component.head >= cfg.n_heads):
        raise SiteError(
            f"unknown head {canonical!r}: this model has {cfg.n_layers} layers x {cfg.n_heads} heads, "
            f"so heads run from '0.0' to '{cfg.n_layers - 1}.{cfg.n_heads - 1}'"
        )
    if isinstance(component, Mlp):
        if cfg.attn_only:
            raise SiteError(f"unknown component {canonical!r}: this model is attention-only and has no MLPs")
        if component.layer >= cfg.n_layers:
            raise SiteError(f"unknown MLP {canonical!r}: this model has {cfg.n_layers} layers "
                            f"('mlp.0' to 'mlp.{cfg.n_layers - 1}')")
    return component


def parse_channel(value: str | Channel) -> Channel:
    """``"q"``, ``"k"``, ``"v"`` (any case) or ``"in"`` into a ``Channel``."""
    if isinstance(value, Channel):
        return value
    if not isinstance(value, str):
        raise SiteError(f"unknown input channel {value!r} ({type(value).__name__}): heads take 'q', 'k' or 'v', "
                        f"written as a string such as via='k' or via='qk'")
    channel = CHANNEL_NAMES.get(value.strip().lower())
    if channel is None:
        raise SiteError(f"unknown input channel {value!r}: heads take 'q', 'k' or 'v'")
    return channel


def all_heads(cfg: HookedTransformerConfig) -> list[Head]:
    return [Head(layer, head) for layer in range(cfg.n_layers) for head in range(cfg.n_heads)]


def hook_name(component: Component, kind: str = "out") -> str:
    """The TransformerLens hook that carries ``component``'s activation of ``kind``.

    kinds: ``"out"`` (the component's output: hook_embed, hook_pos_embed, blocks.L.attn.hook_z for a head,
    blocks.L.hook_mlp_out), ``"pattern"`` (a head's attention pattern), ``"attn_scores"`` (its scores before
    the softmax), ``"q"``/``"k"``/``"v"`` (a head's
    projected query, key, value), ``"q_input"``/``"k_input"``/``"v_input"`` (the per-head split inputs, only
    with ``use_split_qkv_input``), ``"mlp_in"`` (only with ``use_hook_mlp_in``), ``"resid_pre"`` and
    ``"resid_post"`` of the component's block.
    """
    match component, kind:
        case Embed(), "out":
            return "hook_embed"
        case Pos(), "out":
            return "hook_pos_embed"
        case Head(layer=layer), "out":
            return f"blocks.{layer}.attn.hook_z"
        case Head(layer=layer), ("pattern" | "attn_scores" | "q" | "k" | "v"):
            return f"blocks.{layer}.attn.hook_{kind}"
        case Head(layer=layer), ("q_input" | "k_input" | "v_input"):
            return f"blocks.{layer}.hook_{kind}"
        case (Head(layer=layer) | Mlp(layer=layer)), ("resid_pre" | "resid_post"):
            return f"blocks.{layer}.hook_{kind}"
        case Mlp(layer=layer), "out":
            return f"blocks.{layer}.hook_mlp_out"
        case Mlp(layer=layer), "mlp_in":
            return f"blocks.{layer}.hook_mlp_in"
    raise SiteError(f"no TransformerLens hook for {kind!r} of {component}")

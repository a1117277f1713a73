"""What feeds what in a model: the one place that knows which component's output enters which input.

Every other module (hypothesis validation, ``full_graph``, the engine's clean residuals, the naive
reference, path patching, the hypothesis builders) asks a ``Structure`` instead of reasoning about depth.
It covers sequential and parallel (GPT-J/Pythia) blocks, MLPs or none, and the three ways positions enter:
added to the residual (``standard``), added to the normalised q/k inputs of heads (``shortformer``), or
rotated into q and k inside attention (``rotary``: no ``pos`` component at all).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Literal

from transformer_lens import HookedTransformer, HookedTransformerConfig

from scrub.claims.sites import HEAD_CHANNELS, Channel, Component, Embed, Head, Logits, Mlp, Pos

PosKind = Literal["standard", "shortformer", "rotary"]


@dataclass(frozen=True)
class Structure:
    """The residual-stream structure of one model, computed from its config."""

    n_layers: int
    n_heads: int
    has_mlps: bool
    parallel: bool  # the MLP of a layer reads the same residual as its heads (not their output)
    pos: PosKind

    @classmethod
    def of(cls, model: HookedTransformer | HookedTransformerConfig | "Structure") -> "Structure":
        if isinstance(model, Structure):
            return model
        cfg = model.cfg if isinstance(model, HookedTransformer) else getattr(model, "cfg", model)
        kind = cfg.positional_embedding_type
        pos: PosKind = "shortformer" if kind == "shortformer" else "rotary" if kind == "rotary" else "standard"
        return cls(n_layers=cfg.n_layers, n_heads=cfg.n_heads, has_mlps=not cfg.attn_only,
                   parallel=bool(getattr(cfg, "parallel_attn_mlp", False)), pos=pos)

    # --- components ------------------------------------------------------------------------------------

    def heads(self, layer: int | None = None) -> tuple[Head, ...]:
        layers = range(self.n_layers) if layer is None else (layer,)
        return tuple(Head(lay, h) for lay in layers for h in range(self.n_heads))

    def mlps(self) -> tuple[Mlp, ...]:
        return tuple(Mlp(layer) for layer in range(self.n_layers)) if self.has_mlps else ()

    @cached_property
    def inputs(self) -> tuple[Component, ...]:
        """The input components: the token embedding, and ``pos`` unless positions are rotary."""
        return (Embed(),) if self.pos == "rotary" else (Embed(), Pos())

    @cached_property
    def sources(self) -> tuple[Component, ...]:
        """Every component whose output is summed into the residual stream, in computation order."""
        out: list[Component] = [Embed(), Pos()] if self.pos == "standard" else [Embed()]
        for layer in range(self.n_layers):
            out += self.heads(layer)
            out += [Mlp(layer)] if self.has_mlps else []
        return tuple(out)

    @cached_property
    def receivers(self) -> tuple[Component, ...]:
        """Every component with inputs, in computation order, ending with the logits."""
        out: list[Component] = []
        for layer in range(self.n_layers):
            out += self.heads(layer)
            out += [Mlp(layer)] if self.has_mlps else []
        return tuple(out) + (Logits(),)

    # --- what feeds what -------------------------------------------------------------------------------

    def channels(self, receiver: Component) -> tuple[Channel, ...]:
        """The inputs of a receiver: q, k, v for heads, one input otherwise."""
        return HEAD_CHANNELS if isinstance(receiver, Head) else (Channel.IN,)

    def residual_senders(self, receiver: Component) -> tuple[Component, ...]:
        """The residual-stream sources summed into ``receiver``'s input (before its normalisation)."""
        return self._residual_senders[receiver]

    @cached_property
    def _residual_senders(self) -> dict[Component, tuple[Component, ...]]:
        """Each receiver's senders are the ``sources`` before it, a prefix of them in computation order that
        grows receiver by receiver: one pass finds them all, and receivers of one slot share one tuple."""
        out: dict[Component, tuple[Component, ...]] = {}
        prefixes: dict[int, tuple[Component, ...]] = {}
        n = 0
        for r in self.receivers:
            while n < len(self.sources) and self._before(self.sources[n], r):
                n += 1
            out[r] = prefixes.setdefault(n, self.sources[:n])
        return out

    def senders(self, receiver: Component, channel: Channel | None = None) -> tuple[Component, ...]:
        """Every component whose output can enter ``receiver`` (through ``channel`` if given): the residual
        senders, plus shortformer positions into heads' q and k."""
        out = self.residual_senders(receiver)
        if self.pos == "shortformer" and isinstance(receiver, Head) and channel in (None, Channel.Q, Channel.K):
            out = (Pos(),) + out
        return out

    def feeds(self, sender: Component, receiver: Component, channel: Channel | None = None) -> bool:
        if isinstance(sender, Pos) and self.pos == "shortformer":
            return isinstance(receiver, Head) and channel in (None, Channel.Q, Channel.K)
        return receiver in self._sender_sets and sender in self._sender_sets[receiver]

    @cached_property
    def _sender_sets(self) -> dict[Component, frozenset[Component]]:
        sets: dict[int, frozenset[Component]] = {}  # one set per prefix of the sources, keyed by its length
        for senders in self._residual_senders.values():
            if len(senders) not in sets:
                sets[len(senders)] = frozenset(senders)
        return {r: sets[len(s)] for r, s in self._residual_senders.items()}

    def why_not(self, sender: Component, receiver: Component, channel: Channel | None = None) -> str:
        """Why ``sender`` cannot enter ``receiver`` (through ``channel``), in words, with the fix."""
        if isinstance(sender, Logits):
            return "logits are the end of every path"
        if isinstance(receiver, (Embed, Pos)):
            return f"{receiver} is an input and has no inputs of its own"
        if isinstance(sender, Pos) and self.pos == "rotary":
            return "this model uses rotary positions, which act inside attention: there is no 'pos' component"
        if isinstance(sender, Pos) and self.pos == "shortformer":
            if isinstance(receiver, Head):
                return "in this shortformer model positions enter only the q and k inputs of heads; use via='qk'"
            return f"in this shortformer model positions enter only the q and k inputs of heads, not {receiver}"
        if (self.parallel and isinstance(sender, Head) and isinstance(receiver, Mlp)
                and sender.layer == receiver.layer):
            return (f"in this parallel-block model {receiver} reads the same residual as the heads of layer "
                    f"{receiver.layer}, so {sender} cannot feed it; pick a later receiver")
        relation = "after" if sender.depth > receiver.depth else "alongside"
        return (f"it goes backwards or sideways in depth: {sender} is computed {relation} {receiver}, so it "
                f"cannot feed it; reverse the edge or pick a later receiver")

    def _before(self, source: Component, receiver: Component) -> bool:
        if isinstance(receiver, Logits) or isinstance(source, (Embed, Pos)):
            return True
        if self.parallel and isinstance(source, Head) and isinstance(receiver, Mlp):
            return source.layer < receiver.layer
        return source.depth < receiver.depth

    def bias_layers(self, receiver: Component) -> tuple[int, ...]:
        """Layers whose attention output bias b_O is in ``receiver``'s input."""
        return tuple(layer for layer in range(self.n_layers) if self._before(Head(layer, 0), receiver))

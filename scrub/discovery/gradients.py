"""EAP-IG's receiver-input gradients kept in parts that take little memory, each slot's built when contracted.

With n a norm's normalised input, s its scale, w its weight and C the centring (LayerNorm kinds), the
gradient at the norm's input from y at its output is (1/s) C (w·y − n (n · w·y) / d_model). A head's y is
W (its q/k/v weight) times the gradient g at its hook_q/k/v, so the mean over the interpolation steps k is
C w W Σ_k g_k / (s_k steps) − Σ_k γ_k C n_k, with γ_k = (n_k · w·W g_k) / (d_model s_k steps): per head slot a
[heads, b * seq, d_head] sum and [b * seq, heads, steps] scalars, per layer the steps' n, instead of
[b, seq, heads, d_model] per slot and step. n_k·w W is the hook's own value less the norm's bias through W and
the projection's bias (and shortformer positions), so γ_k takes no projection. An MLP's y enters through
ln2's hook_normalized alone, whose gradient autograd gives (w·y); the logits' gradient is taken as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformer_lens import HookedTransformer
from transformer_lens.components import GatedMLP, LayerNorm, LayerNormPre

from scrub.claims.sites import Channel, Component, Head, Mlp


@dataclass(frozen=True)
class Slot:
    """Receivers that read one hook: the heads of a layer on one channel, an MLP, or the logits."""

    receivers: tuple[Component, ...]
    channel: Channel
    hook: str

    @property
    def layer(self) -> int:
        receiver = self.receivers[0]
        return receiver.layer if isinstance(receiver, (Head, Mlp)) else -1


def _centred(norm: nn.Module) -> bool:
    return isinstance(norm, (LayerNorm, LayerNormPre))


class Grads:
    """Every slot's receiver-input gradient on one batch, averaged over the interpolation steps (``add`` one
    step at a time), in parts; ``build`` writes one slot's in float64, ``drop`` frees its parts."""

    def __init__(self, model: HookedTransformer, slots: tuple[Slot, ...], shape: torch.Size, steps: int,
                 pos: Tensor | None) -> None:
        self.model, self.slots, self.steps = model, slots, steps
        self.b, self.seq = shape
        self.p, self.d = self.b * self.seq, model.cfg.d_model
        self.work = torch.promote_types(model.cfg.dtype, torch.float32)  # the projections' dtype (and n's)
        device = next(model.parameters()).device
        # every part is allocated here, before the first forward, so that none sits among a step's temporaries
        self.proj: dict[str, Tensor] = {}  # head slot -> Σ_k g_k / (s_k steps) [heads, p, d_head]
        self.gamma: dict[str, Tensor] = {}  # head slot -> γ [p, heads, steps] float64
        self.offset: dict[str, Tensor] = {}  # head slot -> hook value − n·w W: [heads, d_head] or [p, heads, d_head]
        self.normed: dict[int, Tensor] = {}  # layer -> ln1's normalised input at every step [steps, p, d_model]
        self.dense: dict[str, Tensor] = {}  # MLP and logits slot -> mean gradient [p, d_model] float64
        self._first: dict[int, str] = {}  # layer -> its first head slot, which records ln1's n
        for slot in slots:
            if not isinstance(slot.receivers[0], Head):
                self.dense[slot.hook] = torch.zeros((self.p, self.d), dtype=torch.float64, device=device)
                continue
            h, e = len(slot.receivers), model.cfg.d_head
            self.proj[slot.hook] = torch.zeros((h, self.p, e), dtype=self.work, device=device)
            if not isinstance(model.blocks[slot.layer].ln1, nn.Identity):
                self.gamma[slot.hook] = torch.zeros((self.p, h, steps), dtype=torch.float64, device=device)
                self.offset[slot.hook] = self._offset(slot, pos)
                if slot.layer not in self.normed:
                    self.normed[slot.layer] = torch.empty((steps, self.p, self.d), dtype=self.work, device=device)
                    self._first[slot.layer] = slot.hook
        self._cache: tuple[int, Tensor] | None = None  # (layer, C n [p, steps, d_model] float64)

    def hooks(self) -> list[str]:
        """The hooks whose gradients ``add`` reads."""
        names = []
        for slot in self.slots:
            block = self.model.blocks[slot.layer]
            if isinstance(slot.receivers[0], Head):
                names.append(f"blocks.{slot.layer}.attn.hook_{slot.channel.value}")
            elif isinstance(slot.receivers[0], Mlp) and not isinstance(block.ln2, nn.Identity):
                names.append(f"blocks.{slot.layer}.ln2.hook_normalized")
            elif isinstance(slot.receivers[0], Mlp):
                gated = isinstance(block.mlp, GatedMLP)
                names += [f"blocks.{slot.layer}.mlp.hook_pre"] + ([f"blocks.{slot.layer}.mlp.hook_pre_linear"]
                                                                  if gated else [])
            else:
                names.append(slot.hook)
        return names

    def add(self, step: int, start: int, count: int, at: dict[str, Tensor], seen: dict[str, Tensor]) -> None:
        """Add one step's gradients ``at`` the ``hooks`` on ``count`` of the batch's examples from ``start`` on
        (``seen``: the forward's hook values)."""
        rows = slice(start * self.seq, (start + count) * self.seq)  # their positions in p
        for slot in self.slots:
            if isinstance(slot.receivers[0], Head):
                self._add_heads(step, rows, slot, at, seen)
                continue
            if isinstance(slot.receivers[0], Mlp):
                g = self._mlp_input_grad(slot.layer, at, seen)  # [p', d_model] float64
            else:
                g = at[slot.hook].reshape(-1, self.d).to(torch.float64, copy=True)  # [p', d_model]
            self.dense[slot.hook][rows].add_(g.div_(self.steps))

    def _stats(self, name: str, seen: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """A norm's normalised input [p, d_model] and scale [p] (split-input models: every copy is equal)."""
        n, s = seen[f"{name}.hook_normalized"], seen[f"{name}.hook_scale"]  # [b, seq, (r,) d_model], [..., 1]
        n, s = (n[:, :, 0], s[:, :, 0]) if n.dim() == 4 else (n, s)
        return n.reshape(-1, self.d), s.reshape(-1)

    def _add_heads(self, step: int, rows: slice, slot: Slot, at: dict[str, Tensor], seen: dict[str, Tensor]) -> None:
        name, norm = f"blocks.{slot.layer}.attn.hook_{slot.channel.value}", self.model.blocks[slot.layer].ln1
        g = at[name].reshape(-1, len(slot.receivers), self.model.cfg.d_head)  # [p', heads, d_head]
        if isinstance(norm, nn.Identity):
            inv = torch.full(g.shape[:1], 1 / self.steps, dtype=torch.float64, device=g.device)  # [p']
        else:
            n, s = self._stats(f"blocks.{slot.layer}.ln1", seen)  # [p', d_model], [p']
            inv = 1 / (s.double() * self.steps)  # [p']
            if slot.hook == self._first[slot.layer]:  # the same for every head slot of the layer
                self.normed[slot.layer][step, rows].copy_(n)
            offset = self.offset[slot.hook]  # [heads, d_head] or [p, heads, d_head]
            m = seen[name].reshape(g.shape).double().sub_(offset if offset.dim() == 2 else offset[rows])  # n·w W
            self.gamma[slot.hook][rows, :, step] = m.mul_(g).sum(-1).mul_((inv / self.d)[:, None])  # [p', heads]
        self.proj[slot.hook][:, rows].add_(g.permute(1, 0, 2) * inv.to(self.work)[None, :, None])  # [heads, p', e]

    def _offset(self, slot: Slot, pos: Tensor | None) -> Tensor:
        """A head slot's hook value − n·w W, float64: its projection's bias, the norm's bias through W and, for
        shortformer q and k, the positions through W ([heads, d_head] or [p, heads, d_head])."""
        attn, norm = self.model.blocks[slot.layer].attn, self.model.blocks[slot.layer].ln1
        letter = slot.channel.value.upper()
        w = getattr(attn, f"W_{letter}").detach().double()  # [heads, d_model, d_head]
        out = getattr(attn, f"b_{letter}").detach().double()  # [heads, d_head]
        bias = getattr(norm, "b", None)
        if bias is not None:
            out = out + torch.einsum("d,hde->he", bias.detach().double(), w)  # [heads, d_head]
        if pos is not None and slot.channel in (Channel.Q, Channel.K):
            flat = pos.expand(self.b, self.seq, self.d).reshape(self.p, self.d).double()  # [p, d_model]
            out = out + torch.einsum("pd,hde->phe", flat, w)  # [p, heads, d_head]
        return out

    def _mlp_input_grad(self, layer: int, at: dict[str, Tensor], seen: dict[str, Tensor]) -> Tensor:
        """An MLP's input gradient [p', d_model] float64: from ln2's hook_normalized gradient (w·y) through
        the norm, or (no norm) hook_pre's (and hook_pre_linear's) through the first projection."""
        block = self.model.blocks[layer]
        if isinstance(block.ln2, nn.Identity):
            mlp = block.mlp
            first = mlp.W_gate if isinstance(mlp, GatedMLP) else mlp.W_in  # [d_model, d_mlp]: what hook_pre projects
            y = at[f"blocks.{layer}.mlp.hook_pre"] @ first.detach().T  # [b, seq, d_model]
            linear = at.get(f"blocks.{layer}.mlp.hook_pre_linear")  # [b, seq, d_mlp] or None
            y = y if linear is None else y + linear @ mlp.W_in.detach().T  # [b, seq, d_model]
            return y.reshape(-1, self.d).to(torch.float64, copy=True)
        name = f"blocks.{layer}.ln2"
        n, s = self._stats(name, seen)  # [p', d_model], [p']
        g = at[f"{name}.hook_normalized"].reshape(-1, self.d).to(torch.float64, copy=True)  # w·y [p', d_model]
        g.sub_(n * (g * n).mean(-1, keepdim=True))
        if _centred(block.ln2):
            g.sub_(g.mean(-1, keepdim=True))
        return g.div_(s.double()[:, None])

    def build(self, slot: Slot, dest: Tensor, work: Tensor | None = None) -> None:
        """dest [r, b, seq, d_model] float64 := ``slot``'s mean receiver-input gradient, receiver-major
        (``work``: [≥ r * p * d_model] scratch in the projection dtype, reused between calls)."""
        if slot.hook in self.dense:
            dest.view(self.p, self.d).copy_(self.dense[slot.hook])
            return
        attn, norm = self.model.blocks[slot.layer].attn, self.model.blocks[slot.layer].ln1
        w = getattr(attn, f"W_{slot.channel.value.upper()}").detach().double()  # [heads, d_model, d_head]
        scale = getattr(norm, "w", None)
        w = w if scale is None else w * scale.detach().double()[None, :, None]
        w = w - w.mean(1, keepdim=True) if _centred(norm) else w  # C w W
        mt = w.transpose(1, 2).to(self.work)  # [heads, d_head, d_model]
        out = dest.view(-1, self.p, self.d)  # [heads, p, d_model]
        if self.work == torch.float64:
            torch.bmm(self.proj[slot.hook], mt, out=out)
        else:
            scratch = (torch.empty(out.numel(), dtype=self.work, device=out.device) if work is None
                       else work[: out.numel()]).view(out.shape)  # [heads, p, d_model]
            torch.bmm(self.proj[slot.hook], mt, out=scratch)
            out.copy_(scratch)
        if slot.hook in self.gamma:
            out.permute(1, 0, 2).baddbmm_(self.gamma[slot.hook], self._normed(slot.layer), alpha=-1)

    def _normed(self, layer: int) -> Tensor:
        """C n of ln1 at every step, [p, steps, d_model] float64, kept for the last layer asked."""
        if self._cache is None or self._cache[0] != layer:
            n = torch.empty((self.p, self.steps, self.d), dtype=torch.float64, device=self.normed[layer].device)
            n.copy_(self.normed[layer].transpose(0, 1))  # [p, steps, d_model]
            self._cache = (layer, n.sub_(n.mean(-1, keepdim=True)) if _centred(self.model.blocks[layer].ln1) else n)
        return self._cache[1]

    def drop(self, slot: Slot) -> None:
        """Free ``slot``'s parts (and its layer's normalised inputs once no head slot of the layer is left)."""
        for parts in (self.proj, self.gamma, self.offset, self.dense):
            parts.pop(slot.hook, None)
        if isinstance(slot.receivers[0], Head) and not any(
                isinstance(s.receivers[0], Head) and s.layer == slot.layer and s.hook in self.proj
                for s in self.slots):
            self.normed.pop(slot.layer, None)
            if self._cache is not None and self._cache[0] == slot.layer:
                self._cache = None

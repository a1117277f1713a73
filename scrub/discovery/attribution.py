"""Edge attribution of every edge in one pass with autograd: EAP (Syed et al.) and EAP-IG (Hanna et al. 2024).

score(u -> v:c) = Σ over examples and positions of (u's output on v's counterfactual datum − u's clean
output) · ∂metric/∂(v's input c), the first-order estimate of metric(edge removed) − metric(clean), the
metric being the mean over the scored tokens. EAP takes the gradient at the clean run; EAP-IG averages it
over ``steps`` points on the straight line from the counterfactual input embedding to the clean one
(α = k / steps, k = 1..steps, as the EAP-IG release does). Gradients come from one plain forward and
backward of the user's model per step (TransformerLens hooks, removed after each call), taken from each
head's q/k/v and each MLP's first projection back to its input through the block's norm by hand, every head
at once: the gradients at the split-q/k/v model's hook_q_input etc., without its heads x 3 normalised
copies of the residual. Sender outputs come from the engine's clean run, converted to float64 once per batch
and contracted with each slot's gradient in one matmul (float64: a score is a difference of two large
sums). With ``metric="kl"`` the gradient at the clean run is zero, so EAP scores are all zero there (EAP-IG
is not affected).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from transformer_lens import HookedTransformer
from transformer_lens.components import MLP, GatedMLP, LayerNorm, LayerNormPre, RMSNorm, RMSNormPre

from scrub.claims.sites import Channel, Component, FwdHook, Head, Logits, Mlp
from scrub.claims.structure import Structure
from scrub.discovery.edges import Edge
from scrub.discovery.setup import Counterfactuals, Draw
from scrub.engine.compute import CleanRun
from scrub.errors import ScrubError
from scrub.metrics import MetricName, token_metric

AttributionMethod = Literal["eap", "eap-ig"]


@dataclass(frozen=True)
class Attribution:
    """Scores of every edge (averaged over draws), and the passes they took over the n examples."""

    scores: dict[Edge, float]
    forward: int
    backward: int


@dataclass(frozen=True)
class _Slot:
    """Receivers that read one hook: the heads of a layer on one channel, an MLP, or the logits."""

    receivers: tuple[Component, ...]
    channel: Channel
    hook: str


def _slots(structure: Structure) -> tuple[_Slot, ...]:
    last = structure.n_layers - 1
    out = []
    for layer in range(structure.n_layers):
        heads = structure.heads(layer)
        out += [_Slot(heads, c, f"blocks.{layer}.hook_{c.value}_input") for c in structure.channels(heads[0])]
        if structure.has_mlps:
            out.append(_Slot((Mlp(layer),), Channel.IN, f"blocks.{layer}.hook_mlp_in"))
    out.append(_Slot((Logits(),), Channel.IN, f"blocks.{last}.hook_resid_post"))
    return tuple(out)


_NORMS = (LayerNorm, LayerNormPre, RMSNorm, RMSNormPre, nn.Identity)  # the norms ``_norm_backward`` knows
_MLPS = (MLP, GatedMLP)  # the MLPs whose first projections ``_input_grads`` knows


def check_attributable(model: HookedTransformer) -> None:
    """Attribution reads per-head q/k/v inputs: grouped-query models have shared k/v inputs, refused here; and
    it takes gradients back through each block's norm and MLP projection by hand, for the kinds it knows."""
    kv = getattr(model.cfg, "n_key_value_heads", None)
    if kv is not None and kv != model.cfg.n_heads:
        raise ScrubError(f"edge attribution needs one k and v input per head, but this model groups "
                         f"{model.cfg.n_heads} query heads over {kv} key/value heads; use method='acdc' (exact, no "
                         f"attribution)")
    for layer, block in enumerate(model.blocks):
        parts = [("ln1", block.ln1, _NORMS)] + ([] if model.cfg.attn_only else
                                                [("ln2", block.ln2, _NORMS), ("mlp", block.mlp, _MLPS)])
        for name, module, known in parts:
            if type(module) not in known:
                raise ScrubError(f"edge attribution knows the gradients of {', '.join(k.__name__ for k in known)} "
                                 f"modules, but blocks.{layer}.{name} is a {type(module).__name__}; use "
                                 f"method='acdc' (exact, no attribution)")


def attribute(model: HookedTransformer, cf: Counterfactuals, clean: CleanRun, mask: Tensor, metric: MetricName,
              method: AttributionMethod, *, steps: int = 5, batch_size: int = 16) -> Attribution:
    """Scores of every edge of ``model`` for counterfactuals ``cf`` (``clean``: the clean run of ``cf.data``;
    ``mask`` [n, seq-1]: the scored positions)."""
    check_attributable(model)
    structure = Structure.of(model)
    slots = _slots(structure)
    total_scored = float(mask.sum())
    sums: dict[Edge, float] = {}
    alphas = [1.0] if method == "eap" else [k / steps for k in range(1, steps + 1)]
    grad_sets = 1 if method == "eap" else len(cf.draws)  # EAP's gradient does not depend on the draw
    for start in range(0, cf.n, batch_size):
        ids = torch.arange(start, min(start + batch_size, cf.n), device="cpu")  # [b] like cf's CPU draws and mask
        for g in range(grad_sets):
            grads = _mean_grads(model, clean, ids, cf.draws[g].partner[ids], alphas, slots, mask[ids], metric,
                                total_scored)
            for draw in (cf.draws if method == "eap" else cf.draws[g : g + 1]):
                _contract(structure, clean, slots, grads, ids, draw, sums)
    scores = {e: v / len(cf.draws) for e, v in sums.items()}
    forward = (2 if cf.kind == "paired" else 1) + grad_sets * len(alphas)
    return Attribution(scores, forward=forward, backward=grad_sets * len(alphas))


def _mean_grads(model: HookedTransformer, clean: CleanRun, ids: Tensor, partner: Tensor, alphas: list[float],
                slots: tuple[_Slot, ...], mask: Tensor, metric: MetricName, total: float) -> dict[str, Tensor]:
    """∂metric/∂(every receiver input) on examples ``ids``, averaged over the interpolation points ``alphas``:
    per slot hook [b, seq, heads or 1, d_model], the gradient at that hook of the split-q/k/v model. One plain
    forward and backward of ``model`` per point (hooks only, removed after the call): autograd gives the
    gradients at the heads' q/k/v (before clip_qkv and rotary) and the MLPs' first projections, and
    ``_input_grads`` takes them back through the projection and the block's norm by hand, every head at once.
    The metric is the sum over scored tokens / ``total`` scored tokens."""
    tokens = clean.tokens[ids]  # [b, seq]
    clean_logits = clean.logits[ids]  # [b, seq, d_vocab]
    e_clean, e_from = clean.embed[ids], clean.embed[partner]  # [b, seq, d_model] x2
    wanted = _grad_hooks(model, slots)
    stats = [f"blocks.{layer}.{ln}.hook_{part}" for layer, block in enumerate(model.blocks)
             for ln in ("ln1", "ln2") if not isinstance(getattr(block, ln, None), (nn.Identity, type(None)))
             for part in ("normalized", "scale")]
    out: dict[str, Tensor] = {}
    for alpha in alphas:
        store: dict[str, Tensor] = {}
        seen: dict[str, Tensor] = {}

        def embed_hook(act: Tensor, hook, alpha: float = alpha) -> Tensor:
            x = (e_from + alpha * (e_clean - e_from)).detach()  # [b, seq, d_model]
            return x.requires_grad_(True)

        def capture(act: Tensor, hook, store: dict[str, Tensor] = store) -> Tensor:
            store[hook.name] = act
            return act

        def keep(act: Tensor, hook, seen: dict[str, Tensor] = seen) -> Tensor:
            seen[hook.name] = act.detach()  # ln1 runs on q, k and v inputs: three equal values
            return act

        hooks: list[FwdHook] = ([("hook_embed", embed_hook)] + [(name, capture) for name in wanted]
                                + [(name, keep) for name in stats])
        with torch.enable_grad():
            logits = model.run_with_hooks(tokens, fwd_hooks=hooks)  # [b, seq, d_vocab]
            values = token_metric(metric, logits, clean_logits, tokens)  # [b, seq-1]
            scalar = (values * mask.to(values.dtype)).sum() / total
            names = [n for n in wanted if n in store]  # a gated MLP with a norm activation has no hook_pre_linear
            grads = torch.autograd.grad(scalar, [store[n] for n in names], allow_unused=True)
        del logits, values, scalar  # the activations go before the gradients are taken back to the inputs
        at = {n: torch.zeros_like(store[n]) if g is None else g for n, g in zip(names, grads, strict=True)}
        del store, grads
        with torch.no_grad():
            for slot in slots:
                step = _input_grads(model, slot, at, seen).div_(len(alphas))  # [b, seq, heads or 1, d_model]
                out[slot.hook] = out[slot.hook].add_(step) if slot.hook in out else step  # the same sums in place
        del at, seen
    return out


def _grad_hooks(model: HookedTransformer, slots: tuple[_Slot, ...]) -> list[str]:
    """The hooks of ``model`` whose gradients ``_input_grads`` reads for ``slots``."""
    names = []
    for slot in slots:
        layer, channel = _slot_site(slot)
        if isinstance(slot.receivers[0], Head):
            names.append(f"blocks.{layer}.attn.hook_{channel.value}")
        elif isinstance(slot.receivers[0], Mlp):
            gated = isinstance(model.blocks[layer].mlp, GatedMLP)
            names += [f"blocks.{layer}.mlp.hook_pre"] + ([f"blocks.{layer}.mlp.hook_pre_linear"] if gated else [])
        else:
            names.append(slot.hook)
    return names


def _slot_site(slot: _Slot) -> tuple[int, Channel]:
    receiver = slot.receivers[0]
    return (receiver.layer if isinstance(receiver, (Head, Mlp)) else -1), slot.channel


def _input_grads(model: HookedTransformer, slot: _Slot, at: dict[str, Tensor], seen: dict[str, Tensor]) -> Tensor:
    """One slot's receiver-input gradient [b, seq, heads or 1, d_model] from the gradients ``at`` the hooks of
    ``_grad_hooks``: heads' q/k/v through W_Q/W_K/W_V (per head), an MLP's hook_pre (and hook_pre_linear)
    through W_in (W_gate), then back through ln1 / ln2 with the forward's normalised input and scale (``seen``)."""
    layer, channel = _slot_site(slot)
    receiver = slot.receivers[0]
    if isinstance(receiver, Head):
        w = getattr(model.blocks[layer].attn, f"W_{channel.value.upper()}").detach()  # [heads, d_model, d_head]
        g = torch.einsum("bshe,hde->bshd", at[f"blocks.{layer}.attn.hook_{channel.value}"], w)  # [b, seq, h, d]
        return _norm_backward(model.blocks[layer].ln1, g, seen, f"blocks.{layer}.ln1")
    if isinstance(receiver, Mlp):
        mlp = model.blocks[layer].mlp
        first = mlp.W_gate if isinstance(mlp, GatedMLP) else mlp.W_in  # [d_model, d_mlp]: what hook_pre projects
        g = at[f"blocks.{layer}.mlp.hook_pre"] @ first.detach().T  # [b, seq, d_model]
        linear = at.get(f"blocks.{layer}.mlp.hook_pre_linear")  # [b, seq, d_mlp] or None
        g = g if linear is None else g.add_(linear @ mlp.W_in.detach().T)  # [b, seq, d_model]
        return _norm_backward(model.blocks[layer].ln2, g[:, :, None], seen, f"blocks.{layer}.ln2")
    return at[slot.hook][:, :, None]  # [b, seq, 1, d_model]


def _norm_backward(norm: nn.Module, g: Tensor, seen: dict[str, Tensor], name: str) -> Tensor:
    """The gradient at a norm's input from ``g`` [b, seq, r, d_model] at its output: with n = the normalised
    input and s its scale (``seen``, from the forward), ∂/∂x = (g·w − n · mean(g·w · n)) / s, centred for
    LayerNorm (w = 1 for the Pre norms; the identity without a norm). In place on ``g``."""
    if isinstance(norm, nn.Identity):
        return g
    n, s = seen[f"{name}.hook_normalized"], seen[f"{name}.hook_scale"]  # [b, seq, (r,) d_model], [b, seq, (r,) 1]
    n, s = (n, s) if n.dim() == 4 else (n[:, :, None], s[:, :, None])  # [b, seq, r or 1, d_model], [..., 1]
    g = g.to(torch.promote_types(g.dtype, n.dtype))  # half models normalise in float32
    w = getattr(norm, "w", None)
    if w is not None:
        g.mul_(w.detach())
    g.sub_(n * (g * n).mean(-1, keepdim=True))
    if isinstance(norm, (LayerNorm, LayerNormPre)):
        g.sub_(g.mean(-1, keepdim=True))
    return g.div_(s)


@dataclass(frozen=True)
class _Plan:
    """The rows one slot's contraction runs over. ``diff``: every receiver of the slot reads row ``rows[i]`` on
    example ``ids[i]`` (paired data; a one-receiver slot), so a sender's row is its output on ``rows`` − on
    ``ids`` against the batch's gradient; otherwise its output on ``rows`` (the examples and their
    counterfactuals) against the gradient scattered there: + at each receiver's counterfactual, − at the example."""

    diff: bool
    rows: Tensor  # [k] data row ids

    def same(self, other: _Plan | None) -> bool:
        return other is not None and other.diff == self.diff and torch.equal(other.rows, self.rows)


def _plan(grad: Tensor, ids: Tensor, others: Tensor) -> tuple[_Plan, Tensor]:
    """One slot's plan and its gradient in float64 as [k * seq * d_model, r], rows in (k, seq, d_model) order
    like ``_SenderRows`` (``grad`` [b, seq, r, d_model]; ``others`` [b, r]: each receiver's counterfactual)."""
    b, seq, r, d = grad.shape
    if bool((others == others[:, :1]).all()):
        g = torch.empty((b, seq, d, r), dtype=torch.float64, device=grad.device)  # [b, seq, d_model, r]
        g.copy_(grad.transpose(2, 3))
        return _Plan(True, others[:, 0]), g.view(b * seq * d, r)
    rows = torch.unique(torch.cat([ids, others.flatten()]))  # [k] sorted
    g = torch.zeros((len(rows), seq, d, r), dtype=torch.float64, device=grad.device)  # [k, seq, d_model, r]
    for j in range(r):
        g[..., j].index_add_(0, torch.searchsorted(rows, others[:, j].contiguous()), grad[:, :, j].double())
    g.index_add_(0, torch.searchsorted(rows, ids), -grad.transpose(2, 3).double())
    return _Plan(False, rows), g.view(-1, r)


class _SenderRows:
    """Sources' outputs on a plan's rows in float64, one row of a [sources, b * seq * d_model] buffer each
    (about 3/4 of the bytes of the gradients it is contracted with). Converted once and kept while slots
    share the plan (paired data: every slot); a plan over more rows than the batch's is done in chunks of
    the sources the buffer holds, converted per slot."""

    def __init__(self, clean: CleanRun, order: tuple[Component, ...], batch: int) -> None:
        self.clean, self.order = clean, order
        self.index = {s: i for i, s in enumerate(order)}
        self.per_row = clean.tokens.shape[1] * clean.embed.shape[-1]  # seq * d_model
        self.buffer = torch.empty(len(order) * batch * self.per_row, dtype=torch.float64,
                                  device=clean.embed.device)  # [sources * b * seq * d_model], filled lazily
        self.plan: _Plan | None = None
        self.filled = [False] * len(order)

    def chunks(self, plan: _Plan, ids: Tensor, senders: tuple[Component, ...]):
        """(senders, their rows [c, k * seq * d_model]) in the order of ``senders``, covering them all."""
        width = len(plan.rows) * self.per_row
        if self.buffer.numel() < width:  # not reached (k <= b * (receivers + 1) <= b * sources), kept safe
            self.buffer = torch.empty(width, dtype=torch.float64, device=self.buffer.device)  # [k * seq * d_model]
        fit = self.buffer.numel() // width  # sources the buffer holds on this plan
        if not plan.same(self.plan) or fit < len(self.order):
            self.plan, self.filled = plan, [False] * len(self.order)
        rows = self.buffer[: fit * width].view(fit, width)  # [fit, k * seq * d_model]
        if fit >= len(self.order):  # every source has its own row
            spots = [self.index[s] for s in senders]
            missing = [p for p in spots if not self.filled[p]]
            for run in _runs(missing):
                self._fill(plan, ids, [self.order[p] for p in run], rows[run[0] : run[-1] + 1])
                for p in run:
                    self.filled[p] = True
            for run in _runs(spots):
                yield [self.order[p] for p in run], rows[run[0] : run[-1] + 1]
            return
        for start in range(0, len(senders), fit):
            part = list(senders[start : start + fit])
            self._fill(plan, ids, part, rows[: len(part)])
            yield part, rows[: len(part)]

    def _fill(self, plan: _Plan, ids: Tensor, comps: list[Component], dest: Tensor) -> None:
        """dest [c, k * seq * d_model] := the outputs of ``comps`` on the plan's rows (− on ``ids`` if diff)."""
        k, seq, d = len(plan.rows), self.clean.tokens.shape[1], self.clean.embed.shape[-1]
        at = 0
        for group in _head_groups(comps):
            first = group[0]
            if isinstance(first, Head):  # consecutive heads of one layer: one strided view
                heads = self.clean.heads[first.layer][:, :, first.head : first.head + len(group)]
                src = heads.permute(2, 0, 1, 3)  # [c, m, seq, d_model]
            else:
                src = self.clean.out(first)[None]  # [1, m, seq, d_model]
            out = dest[at : at + len(group)].view(len(group), k, seq, d)  # [c, k, seq, d_model]
            out.copy_(src[:, plan.rows])
            if plan.diff:
                out.sub_(src[:, ids])  # in float64: exact differences of float32 outputs
            at += len(group)


def _runs(spots: list[int]) -> list[list[int]]:
    """``spots`` split into runs of consecutive integers."""
    runs: list[list[int]] = []
    for p in spots:
        if runs and runs[-1][-1] + 1 == p:
            runs[-1].append(p)
        else:
            runs.append([p])
    return runs


def _head_groups(comps: list[Component]) -> list[list[Component]]:
    """``comps`` split into runs of consecutive heads of one layer and single other components."""
    groups: list[list[Component]] = []
    for c in comps:
        last = groups[-1][-1] if groups else None
        if (isinstance(c, Head) and isinstance(last, Head) and last.layer == c.layer
                and last.head + 1 == c.head):
            groups[-1].append(c)
        else:
            groups.append([c])
    return groups


def _contract(structure: Structure, clean: CleanRun, slots: tuple[_Slot, ...], grads: dict[str, Tensor],
              ids: Tensor, draw: Draw, sums: dict[Edge, float]) -> None:
    """Add Σ (sender output on the receiver's counterfactual − clean) · gradient to every edge's sum: per slot,
    one float64 matmul [senders, k * seq * d_model] @ [k * seq * d_model, receivers] (see ``_Plan``)."""
    device = clean.embed.device
    order = tuple(dict.fromkeys(s for slot in slots for s in structure.senders(slot.receivers[0], slot.channel)))
    rows = _SenderRows(clean, order, len(ids))
    ids_d = ids.to(device)  # [b]
    for slot in slots:
        grad = grads[slot.hook]  # [b, seq, r, d_model]
        others = torch.stack([draw.other(r)[ids] for r in slot.receivers], 1).to(device)  # [b, r] draws: CPU
        plan, g = _plan(grad, ids_d, others)  # g [k * seq * d_model, r] float64
        for senders, block in rows.chunks(plan, ids_d, structure.senders(slot.receivers[0], slot.channel)):
            scores = (block @ g).tolist()  # [c, r] float64
            for sender, row in zip(senders, scores, strict=True):
                for receiver, value in zip(slot.receivers, row, strict=True):
                    edge = Edge(sender, receiver, slot.channel)
                    sums[edge] = sums.get(edge, 0.0) + value

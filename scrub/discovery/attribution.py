"""Edge attribution of every edge in one pass with autograd: EAP (Syed et al.) and EAP-IG (Hanna et al. 2024).

score(u -> v:c) = Σ over examples and positions of (u's output on v's counterfactual datum − u's clean
output) · ∂metric/∂(v's input c), the first-order estimate of metric(edge removed) − metric(clean), the
metric being the mean over the scored tokens. EAP takes the gradient at the clean run; EAP-IG averages it
over ``steps`` points on the straight line from the counterfactual input embedding to the clean one
(α = k / steps, k = 1..steps, as the EAP-IG release does). Gradients come from one TransformerLens forward
and backward per step on a copy of the model with split q/k/v inputs (the user's model is not changed);
sender outputs from the engine's clean run. With ``metric="kl"`` the gradient at the clean run is zero, so
EAP scores are all zero there (EAP-IG is not affected).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from scrub.claims.sites import Channel, Component, FwdHook, Logits, Mlp
from scrub.claims.structure import Structure
from scrub.discovery.edges import Edge
from scrub.discovery.setup import Counterfactuals, Draw
from scrub.engine.compute import CleanRun
from scrub.errors import ScrubError
from scrub.metrics import MetricName, token_metric
from scrub.patching.paths import split_qkv_copy

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


def check_attributable(model: HookedTransformer) -> None:
    """Attribution reads per-head q/k/v inputs: grouped-query models have shared k/v inputs, refused here."""
    kv = getattr(model.cfg, "n_key_value_heads", None)
    if kv is not None and kv != model.cfg.n_heads:
        raise ScrubError(f"edge attribution needs one k and v input per head, but this model groups "
                         f"{model.cfg.n_heads} query heads over {kv} key/value heads; use method='acdc' (exact, no "
                         f"attribution)")


def attribute(model: HookedTransformer, cf: Counterfactuals, clean: CleanRun, mask: Tensor, metric: MetricName,
              method: AttributionMethod, *, steps: int = 5, batch_size: int = 16) -> Attribution:
    """Scores of every edge of ``model`` for counterfactuals ``cf`` (``clean``: the clean run of ``cf.data``;
    ``mask`` [n, seq-1]: the scored positions)."""
    check_attributable(model)
    structure = Structure.of(model)
    slots = _slots(structure)
    hooked = split_qkv_copy(model)
    for p in hooked.parameters():
        p.requires_grad_(False)
    total_scored = float(mask.sum())
    sums: dict[Edge, float] = {}
    alphas = [1.0] if method == "eap" else [k / steps for k in range(1, steps + 1)]
    grad_sets = 1 if method == "eap" else len(cf.draws)  # EAP's gradient does not depend on the draw
    for start in range(0, cf.n, batch_size):
        ids = torch.arange(start, min(start + batch_size, cf.n), device="cpu")  # [b] like cf's CPU draws and mask
        for g in range(grad_sets):
            grads = _mean_grads(hooked, clean, ids, cf.draws[g].partner[ids], alphas, slots, mask[ids], metric,
                                total_scored)
            for draw in (cf.draws if method == "eap" else cf.draws[g : g + 1]):
                _contract(structure, clean, slots, grads, ids, draw, sums)
    scores = {e: v / len(cf.draws) for e, v in sums.items()}
    forward = (2 if cf.kind == "paired" else 1) + grad_sets * len(alphas)
    return Attribution(scores, forward=forward, backward=grad_sets * len(alphas))


def _mean_grads(hooked: HookedTransformer, clean: CleanRun, ids: Tensor, partner: Tensor, alphas: list[float],
                slots: tuple[_Slot, ...], mask: Tensor, metric: MetricName, total: float) -> dict[str, Tensor]:
    """∂metric/∂(every receiver input) on examples ``ids``, averaged over the interpolation points ``alphas``:
    per hook [b, seq, heads or 1, d_model]. The metric is the sum over scored tokens / ``total`` scored tokens."""
    tokens = clean.tokens[ids]  # [b, seq]
    clean_logits = clean.logits[ids]  # [b, seq, d_vocab]
    e_clean, e_from = clean.embed[ids], clean.embed[partner]  # [b, seq, d_model] x2
    out: dict[str, Tensor] = {}
    for alpha in alphas:
        store: dict[str, Tensor] = {}

        def embed_hook(act: Tensor, hook, alpha: float = alpha) -> Tensor:
            x = (e_from + alpha * (e_clean - e_from)).detach()  # [b, seq, d_model]
            return x.requires_grad_(True)

        def capture(act: Tensor, hook, store: dict[str, Tensor] = store) -> Tensor:
            store[hook.name] = act
            return act

        hooks: list[FwdHook] = [("hook_embed", embed_hook)] + [(s.hook, capture) for s in slots]
        with torch.enable_grad():
            logits = hooked.run_with_hooks(tokens, fwd_hooks=hooks)  # [b, seq, d_vocab]
            values = token_metric(metric, logits, clean_logits, tokens)  # [b, seq-1]
            scalar = (values * mask.to(values.dtype)).sum() / total
            names = [s.hook for s in slots]
            grads = torch.autograd.grad(scalar, [store[n] for n in names], allow_unused=True)
        for name, grad in zip(names, grads, strict=True):
            grad = torch.zeros_like(store[name]) if grad is None else grad
            grad = grad if grad.dim() == 4 else grad[:, :, None]  # [b, seq, heads or 1, d_model]
            out[name] = out.get(name, 0) + grad / len(alphas)
    return out


def _contract(structure: Structure, clean: CleanRun, slots: tuple[_Slot, ...], grads: dict[str, Tensor],
              ids: Tensor, draw: Draw, sums: dict[Edge, float]) -> None:
    """Add Σ (sender output on the receiver's counterfactual − clean) · gradient to every edge's sum. The
    counterfactual part is Σ_x output[x] · (gradients of the rows whose counterfactual is x), scattered once."""
    m = clean.tokens.shape[0]
    for slot in slots:
        grad = grads[slot.hook]  # [b, seq, r, d_model]
        others = torch.stack([draw.other(r)[ids] for r in slot.receivers], 1).to(grad.device)  # [b, r] draws: CPU
        scattered = torch.zeros((m, *grad.shape[1:]), dtype=grad.dtype, device=grad.device)  # [m, seq, r, d_model]
        for j in range(len(slot.receivers)):
            scattered[:, :, j].index_add_(0, others[:, j], grad[:, :, j])
        for sender in structure.senders(slot.receivers[0], slot.channel):
            out = clean.out(sender)  # [m, seq, d_model]
            moved = torch.einsum("xsd,xsrd->r", out.double(), scattered.double())  # [r]
            stay = torch.einsum("bsd,bsrd->r", out[ids].double(), grad.double())  # [r]
            for j, receiver in enumerate(slot.receivers):
                edge = Edge(sender, receiver, slot.channel)
                sums[edge] = sums.get(edge, 0.0) + float(moved[j] - stay[j])

"""Edge attribution of every edge in one pass with autograd: EAP (Syed et al.) and EAP-IG (Hanna et al. 2024).

score(u -> v:c) = Σ over examples and positions of (u's output on v's counterfactual datum − u's clean
output) · ∂metric/∂(v's input c), the first-order estimate of metric(edge removed) − metric(clean), the
metric being the mean over the scored tokens. EAP takes the gradient at the clean run; EAP-IG averages it
over ``steps`` points on the straight line from the counterfactual input embedding to the clean one
(α = k / steps, k = 1..steps, as the EAP-IG release does). Gradients come from one plain forward and
backward of the user's model per step (TransformerLens hooks, removed after each call) at each head's
q/k/v, ln2's normalised input and the last residual, and are taken back to the receivers' inputs through
the blocks' norms by hand (``scrub.discovery.gradients``: the gradients at the split-q/k/v model's
hook_q_input etc., kept in parts a fraction of their size). Sender outputs come from the engine's clean
run, converted to float64 once per batch and contracted with the gradients a layer at a time
(``scrub.discovery.contraction``; float64: a score is a difference of two large sums). With
``metric="kl"`` the gradient at the clean run is zero, so EAP scores are all zero there (EAP-IG is not
affected).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from transformer_lens import HookedTransformer
from transformer_lens.components import MLP, GatedMLP, LayerNorm, LayerNormPre, RMSNorm, RMSNormPre

from scrub.claims.sites import Channel, FwdHook, Logits, Mlp
from scrub.claims.structure import Structure
from scrub.discovery.contraction import contract
from scrub.discovery.edges import Edge
from scrub.discovery.gradients import Grads, Slot
from scrub.discovery.setup import Counterfactuals
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


def _slots(structure: Structure) -> tuple[Slot, ...]:
    last = structure.n_layers - 1
    out = []
    for layer in range(structure.n_layers):
        heads = structure.heads(layer)
        out += [Slot(heads, c, f"blocks.{layer}.hook_{c.value}_input") for c in structure.channels(heads[0])]
        if structure.has_mlps:
            out.append(Slot((Mlp(layer),), Channel.IN, f"blocks.{layer}.hook_mlp_in"))
    out.append(Slot((Logits(),), Channel.IN, f"blocks.{last}.hook_resid_post"))
    return tuple(out)


_NORMS = (LayerNorm, LayerNormPre, RMSNorm, RMSNormPre, nn.Identity)  # the norms ``gradients.Grads`` knows
_MLPS = (MLP, GatedMLP)  # the MLPs ``gradients.Grads`` knows


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
            draws = cf.draws if method == "eap" else cf.draws[g : g + 1]
            for j, draw in enumerate(draws):
                contract(structure, clean, slots, grads, ids, draw, sums, last=j == len(draws) - 1)
            del grads
    scores = {e: v / len(cf.draws) for e, v in sums.items()}
    forward = (2 if cf.kind == "paired" else 1) + grad_sets * len(alphas)
    return Attribution(scores, forward=forward, backward=grad_sets * len(alphas))


def _mean_grads(model: HookedTransformer, clean: CleanRun, ids: Tensor, partner: Tensor, alphas: list[float],
                slots: tuple[Slot, ...], mask: Tensor, metric: MetricName, total: float) -> Grads:
    """∂metric/∂(every receiver input) on examples ``ids``, averaged over the interpolation points ``alphas``,
    as ``Grads`` (their parts); the metric is the sum over scored tokens / ``total`` scored tokens. One plain
    forward and backward of ``model`` per point, on half the examples at a time (its saved activations, ~1.4
    run_with_caches of its rows, stay under one of the batch's, for ~2% more time), with the weights' autograd
    flags off (nothing saved for weight gradients; restored after)."""
    shortformer = model.cfg.positional_embedding_type == "shortformer"
    acc = Grads(model, slots, clean.tokens[ids].shape, len(alphas), clean.pos[ids] if shortformer else None)
    half = -(-len(ids) // 2)
    frozen = [p for p in model.parameters() if p.requires_grad]
    try:
        for p in frozen:
            p.requires_grad_(False)
        for step, alpha in enumerate(alphas):
            for start in range(0, len(ids), half):
                part = slice(start, start + half)
                _pass(model, clean, acc, step, alpha, start, ids[part], partner[part], mask[part], metric, total)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return acc


def _pass(model: HookedTransformer, clean: CleanRun, acc: Grads, step: int, alpha: float, start: int, ids: Tensor,
          partner: Tensor, mask: Tensor, metric: MetricName, total: float) -> None:
    """One forward and backward of ``model`` (hooks only, removed after the call) on examples ``ids`` (the
    batch's from ``start`` on) at interpolation point ``alpha``, the gradients added to ``acc``."""
    tokens = clean.tokens[ids]  # [b', seq]
    clean_logits = clean.logits[ids]  # [b', seq, d_vocab]
    e_clean, e_from = clean.embed[ids], clean.embed[partner]  # [b', seq, d_model] x2
    wanted = acc.hooks()
    stats = [f"blocks.{layer}.{ln}.hook_{part}" for layer, block in enumerate(model.blocks)
             for ln in ("ln1", "ln2") if not isinstance(getattr(block, ln, None), (nn.Identity, type(None)))
             for part in ("normalized", "scale")]
    store: dict[str, Tensor] = {}
    seen: dict[str, Tensor] = {}

    def embed_hook(act: Tensor, hook) -> Tensor:
        return (e_from + alpha * (e_clean - e_from)).detach().requires_grad_(True)  # [b', seq, d_model]

    def capture(act: Tensor, hook) -> Tensor:
        store[hook.name] = act
        return act

    def keep(act: Tensor, hook) -> Tensor:
        seen[hook.name] = act.detach()  # ln1 runs on the q, k and v inputs: three equal values
        return act

    hooks: list[FwdHook] = ([("hook_embed", embed_hook)] + [(name, capture) for name in wanted]
                            + [(name, keep) for name in stats if name not in wanted])
    with torch.enable_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=hooks)  # [b', seq, d_vocab]
        values = token_metric(metric, logits, clean_logits, tokens)  # [b', seq-1]
        scalar = (values * mask.to(values.dtype)).sum() / total
        names = [n for n in wanted if n in store]  # a gated MLP with a norm activation has no hook_pre_linear
        grads = torch.autograd.grad(scalar, [store[n] for n in names], allow_unused=True)
    del logits, values, scalar  # the activations go before the gradients are summed
    at = {n: torch.zeros_like(store[n]) if g is None else g for n, g in zip(names, grads, strict=True)}
    del grads
    with torch.no_grad():
        acc.add(step, start, len(ids), at, {n: v.detach() for n, v in store.items()} | seen)

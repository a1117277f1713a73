"""EAP-IG edge attribution (issue #17) against a literal integrated-gradients implementation: TransformerLens
hooks, one ``.backward()`` per interpolation step and draw, one dot product per edge. Several draws and a
batch smaller than the data take every contraction path (shared counterfactual rows, rows scattered per
receiver, sources converted in chunks)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import scrub
from scrub.claims.structure import Structure
from scrub.discovery.attribution import attribute
from scrub.discovery.setup import Counterfactuals, paired, resampled
from scrub.engine.compute import clean_run
from scrub.patching.paths import split_qkv_copy
from tests.helpers import random_tokens, tiny_model
from tests.test_discovery import ARCHITECTURES, assert_scores_equal, literal_senders


def literal_outputs(hooked, data: Tensor) -> dict[str, Tensor]:
    """Every source's output on ``data`` [m, seq, d_model], by its written name, from a plain cache."""
    cfg = hooked.cfg
    _, cache = hooked.run_with_cache(data)
    out = {"embed": cache["hook_embed"]}
    if "hook_pos_embed" in cache:
        out["pos"] = cache["hook_pos_embed"].expand(data.shape[0], -1, -1)
    for lay in range(cfg.n_layers):
        for h in range(cfg.n_heads):
            out[f"{lay}.{h}"] = cache[f"blocks.{lay}.attn.hook_z"][:, :, h] @ hooked.blocks[lay].attn.W_O[h]
        if not cfg.attn_only:
            out[f"mlp.{lay}"] = cache[f"blocks.{lay}.hook_mlp_out"]
    return out


def literal_eap_ig(model, cf: Counterfactuals, mask: Tensor, metric: str, steps: int) -> dict[str, float]:
    """score(s -> r:c) = mean over draws of Σ (s's output on r's counterfactual − clean) · the gradient at
    r's input averaged over embed = from + k/steps (clean − from), k = 1..steps, from = the draw's partner."""
    cfg = model.cfg
    hooked = split_qkv_copy(model)
    n = cf.n
    tokens = cf.data[:n]
    outputs = literal_outputs(hooked, cf.data)
    clean_logits = hooked(tokens).detach()  # [n, seq, d_vocab]
    names = [f"blocks.{lay}.hook_{c}_input" for lay in range(cfg.n_layers) for c in "qkv"]
    names += [] if cfg.attn_only else [f"blocks.{lay}.hook_mlp_in" for lay in range(cfg.n_layers)]
    names.append(f"blocks.{cfg.n_layers - 1}.hook_resid_post")
    receivers = [(f"{lay}.{h}", c) for lay in range(cfg.n_layers) for h in range(cfg.n_heads) for c in "qkv"]
    receivers += [] if cfg.attn_only else [(f"mlp.{lay}", "in") for lay in range(cfg.n_layers)]
    receivers.append(("logits", "in"))
    scores: dict[str, float] = {}
    for draw in cf.draws:
        e_clean, e_from = outputs["embed"][:n], outputs["embed"][draw.partner]  # [n, seq, d_model] x2
        mean: dict[str, Tensor] = {}
        for k in range(1, steps + 1):
            acts: dict[str, Tensor] = {}

            def keep(act, hook, acts=acts):
                act.retain_grad()
                acts[hook.name] = act
                return act

            def embed(act, hook, alpha=k / steps, e_from=e_from, e_clean=e_clean):
                return (e_from + alpha * (e_clean - e_from)).detach().requires_grad_(True)  # a leaf of the graph

            logits = hooked.run_with_hooks(tokens, fwd_hooks=[("hook_embed", embed)] + [(n_, keep) for n_ in names])
            per_token = (scrub.metrics.token_losses(logits, tokens) if metric == "loss"
                         else scrub.metrics.token_kl(clean_logits, logits))
            ((per_token * mask).sum() / mask.sum()).backward()
            for name in names:
                mean[name] = mean.get(name, 0) + acts[name].grad / steps
        by_receiver = {str(r): o for r, o in draw.others.items()}
        for r, c in receivers:
            if c == "in":
                hook = f"blocks.{cfg.n_layers - 1}.hook_resid_post" if r == "logits" else f"blocks.{r[4:]}.hook_mlp_in"
                grad = mean[hook]  # [n, seq, d_model]
            else:
                lay, h = (int(x) for x in r.split("."))
                grad = mean[f"blocks.{lay}.hook_{c}_input"][:, :, h]  # [n, seq, d_model]
            for s in literal_senders(cfg, r, c):
                diff = outputs[s][by_receiver[r]] - outputs[s][:n]  # [n, seq, d_model]
                name = f"{s} -> {r}:{c}" if c != "in" else f"{s} -> {r}"
                value = float((diff.double() * grad.double()).sum().detach()) / len(cf.draws)
                scores[name] = scores.get(name, 0.0) + value
    return scores


def ours(model, cf: Counterfactuals, mask: Tensor, metric, steps: int, batch_size: int) -> dict[str, float]:
    clean = clean_run(model, cf.data)
    a = attribute(model, cf, clean, mask, metric, "eap-ig", steps=steps, batch_size=batch_size)
    return {str(e): v for e, v in a.scores.items()}


@pytest.mark.parametrize("batch_size", [16, 3])
@pytest.mark.parametrize("arch", ARCHITECTURES, ids=lambda a: "-".join(str(v) for v in a.values()))
def test_paired_eap_ig_equals_literal_integrated_gradients(arch, batch_size):
    model = tiny_model(dtype=torch.float64, scale=0.3, **arch)
    tokens, corrupted = random_tokens(7, 10, seed=1), random_tokens(7, 10, seed=2)
    mask = torch.rand(7, 9, generator=torch.Generator().manual_seed(0)) < 0.7  # [7, 9]
    cf = paired(tokens, corrupted, Structure.of(model))
    literal = literal_eap_ig(model, cf, mask, "kl", steps=3)
    assert_scores_equal(ours(model, cf, mask, "kl", 3, batch_size), literal, 1e-9)


@pytest.mark.parametrize("batch_size", [16, 3])
@pytest.mark.parametrize("arch", ARCHITECTURES[:2], ids=lambda a: "-".join(str(v) for v in a.values()))
def test_resample_eap_ig_with_two_draws_equals_literal_integrated_gradients(arch, batch_size):
    """Heads of one layer read different rows here, and a batch of 3 of 8 examples reads rows outside itself."""
    model = tiny_model(dtype=torch.float64, scale=0.3, **arch)
    tokens = random_tokens(8, 10, seed=3)
    mask = torch.ones(8, 9, dtype=torch.bool)
    cf = resampled(tokens, Structure.of(model), seed=5, n_draws=2)
    heads = Structure.of(model).heads(0)
    assert not all(torch.equal(cf.draws[0].other(heads[0]), cf.draws[0].other(h)) for h in heads)
    literal = literal_eap_ig(model, cf, mask, "loss", steps=2)
    assert_scores_equal(ours(model, cf, mask, "loss", 2, batch_size), literal, 1e-9)


NORMS_AND_MLPS = [
    dict(pos="rotary", attn_only=False, norm="RMS", gated=True, act_fn="silu"),
    dict(pos="standard", attn_only=False, norm="LNPre"),
    dict(pos="standard", attn_only=False, norm="RMSPre", gated=True),
    dict(pos="standard", attn_only=False, norm=None, scale=0.2),
    dict(pos="standard", attn_only=False, act_fn="solu_ln"),
]


@pytest.mark.parametrize("arch", NORMS_AND_MLPS, ids=lambda a: "-".join(str(v) for v in a.values()))
def test_eap_ig_through_every_norm_and_mlp_kind_equals_literal_integrated_gradients(arch):
    """The gradients are taken back through each block's norm and first MLP projection by hand: every kind of
    norm (with and without weights, centred or not, none) and MLP (gated, a norm inside the activation)."""
    arch = dict(arch)
    model = tiny_model(dtype=torch.float64, scale=arch.pop("scale", 0.3), **arch)
    tokens, corrupted = random_tokens(5, 10, seed=1), random_tokens(5, 10, seed=2)
    mask = torch.rand(5, 9, generator=torch.Generator().manual_seed(0)) < 0.7  # [5, 9]
    cf = paired(tokens, corrupted, Structure.of(model))
    literal = literal_eap_ig(model, cf, mask, "loss", steps=2)
    assert_scores_equal(ours(model, cf, mask, "loss", 2, 3), literal, 1e-9)

"""The study's context-sensitivity measure, now a query-key-masked hypothesis run by the engine, equals the
hook-based computation it replaced (same draws): far keys read another example's K and V."""

from __future__ import annotations

import copy

import torch
from transformer_lens import HookedTransformer

from experiments._context import context_sensitivity, far_context_claim
from scrub.claims.hypothesis import validate
from scrub.claims.sites import Head, hook_name
from scrub.data.batches import natural_batch
from scrub.engine.treeify import assign_data, treeify
from scrub.metrics import token_losses
from scrub.model.loading import load_model


def far_mixed_z(q, k, v, k_far, v_far, window: int, scale: float):
    """A head's output when keys more than ``window`` before the query use ``k_far``/``v_far`` (the hook
    version's maths). q, k, v, k_far, v_far: [batch, seq, d_head] -> z [batch, seq, d_head]."""
    seq = q.shape[1]
    t = torch.arange(seq)[:, None]  # [q, 1]
    j = torch.arange(seq)[None, :]  # [1, k]
    far = (t - j) > window  # [q, k]
    near_scores = torch.einsum("bqd,bkd->bqk", q, k) / scale  # [batch, q, k]
    far_scores = torch.einsum("bqd,bkd->bqk", q, k_far) / scale  # [batch, q, k]
    scores = torch.where(far, far_scores, near_scores).masked_fill(j > t, float("-inf"))  # [batch, q, k]
    pattern = scores.softmax(-1)  # [batch, q, k]
    return (pattern * (~far)) @ v + (pattern * far) @ v_far  # [batch, q, d_head]


def hooked_increase(model: HookedTransformer, tokens, site: Head, other, window: int, late_start: int) -> float:
    """The replaced implementation: TransformerLens hooks swap far keys' K and V for example ``other``'s."""
    _, cache_other = model.run_with_cache(tokens[other])
    keep = {}

    def save(x):
        def hook(act, hook):
            keep[x] = act[:, :, site.head]
        return hook

    def replace(z, hook):
        z = z.clone()
        z[:, :, site.head] = far_mixed_z(keep["q"], keep["k"], keep["v"],
                                         cache_other[hook_name(site, "k")][:, :, site.head],
                                         cache_other[hook_name(site, "v")][:, :, site.head], window,
                                         float(model.blocks[site.layer].attn.attn_scale))
        return z

    hooks = [(hook_name(site, x), save(x)) for x in "qkv"] + [(hook_name(site), replace)]
    logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
    diff = token_losses(logits, tokens)[:, late_start:] - token_losses(model(tokens), tokens)[:, late_start:]
    return float(diff.mean(1).mean())


def test_engine_context_sensitivity_equals_the_hook_version():
    model = copy.deepcopy(load_model()).to(torch.float64)
    tokens = natural_batch(6, 24, seed=5)
    window, seed = 3, 11
    result = context_sensitivity(model, tokens, window=window, seed=seed)
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            site = Head(layer, head)
            tree = treeify(validate(far_context_claim(model, site, window), model))
            other = assign_data(tree, tokens, seed=seed).by_path[("node", str(site))].other  # [n] the engine's draw
            expected = hooked_increase(model, tokens, site, other, window, result.late_start)
            assert abs(float(result.increase[layer, head]) - expected) < 1e-9, (site, expected)
    assert float(result.increase.abs().max()) > 1e-3  # far context matters to some head

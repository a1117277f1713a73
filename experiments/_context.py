"""Context sensitivity of every head (after Redwood's REMIX exercise): resample the part of a head's
input that comes from far-away positions and measure how much the late-position loss goes up.

The engine's edge ``positions`` mask is over the receiver's key positions and cannot depend on the query,
so "keys more than W tokens before *this* query" is not expressible as a hypothesis. This module does it
exactly with TransformerLens hooks instead: for head h and query t, keys j with t - j > W use the K and V
of another example (same positions), keys within W keep the clean K and V; the head's output replaces its
clean output and flows on through the rest of the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from scrub.metrics import token_losses
from scrub.sites import Head, hook_name


def far_mixed_z(q: Tensor, k: Tensor, v: Tensor, k_far: Tensor, v_far: Tensor, window: int, scale: float) -> Tensor:
    """A head's output when keys more than ``window`` before the query use ``k_far``/``v_far``.

    q, k, v, k_far, v_far: [batch, seq, d_head]. Returns z [batch, seq, d_head]. Pure.
    """
    seq = q.shape[1]
    t = torch.arange(seq)[:, None]  # [q, 1]
    j = torch.arange(seq)[None, :]  # [1, k]
    far = (t - j) > window  # [q, k]
    near_scores = torch.einsum("bqd,bkd->bqk", q, k) / scale  # [batch, q, k]
    far_scores = torch.einsum("bqd,bkd->bqk", q, k_far) / scale  # [batch, q, k]
    scores = torch.where(far, far_scores, near_scores).masked_fill(j > t, float("-inf"))  # [batch, q, k]
    pattern = scores.softmax(-1)  # [batch, q, k]
    near_p = pattern * (~far).to(pattern.dtype)  # [batch, q, k]
    far_p = pattern * far.to(pattern.dtype)  # [batch, q, k]
    return near_p @ v + far_p @ v_far  # [batch, q, d_head]


@dataclass(frozen=True)
class Sensitivity:
    """Per head: the increase of the mean loss at late positions when its far-away input is resampled."""

    window: int
    late_start: int
    increase: Tensor  # [n_layers, n_heads] nats
    stderr: Tensor  # [n_layers, n_heads] standard error over examples
    loss_clean: float


@torch.no_grad()
def context_sensitivity(model: HookedTransformer, tokens: Tensor, *, window: int, seed: int = 0,
                        late_start: int | None = None, step=None) -> Sensitivity:
    """Resample far-away K/V input of each head in turn; scored at prediction positions >= ``late_start``
    (default: half the sequence, and always > ``window`` so every scored query has far keys)."""
    n, seq = tokens.shape
    late_start = max(window + 1, seq // 2) if late_start is None else late_start
    gen = torch.Generator().manual_seed(seed)
    other = (torch.arange(n) + torch.randint(1, n, (n,), generator=gen)) % n  # [n] another example each
    names = [hook_name(Head(lay, 0), x) for lay in range(model.cfg.n_layers) for x in "kv"]
    _, cache_other = model.run_with_cache(tokens[other], names_filter=lambda name: name in names)
    # each head's run starts at its own layer from the clean residual (the layers below it are unchanged)
    starts = [f"blocks.{lay}.hook_resid_pre" for lay in range(model.cfg.n_layers)] + ["hook_pos_embed"]
    logits, cache = model.run_with_cache(tokens, names_filter=lambda name: name in starts)
    clean_loss = token_losses(logits, tokens)[:, late_start:]  # [n, late]
    shortformer = model.cfg.positional_embedding_type == "shortformer"
    inc = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)  # [layer, head]
    err = torch.zeros_like(inc)
    for layer in range(model.cfg.n_layers):
        scale = float(model.blocks[layer].attn.attn_scale)
        for head in range(model.cfg.n_heads):
            keep: dict[str, Tensor] = {}
            site = Head(layer, head)

            def saver(x: str, keep=keep, head=head):
                def save(act, hook):
                    keep[x] = act[:, :, head]  # [batch, seq, d_head]
                return save

            def replace(z, hook, keep=keep, site=site, scale=scale):
                z = z.clone()
                z[:, :, site.head] = far_mixed_z(keep["q"], keep["k"], keep["v"],
                                                 cache_other[hook_name(site, "k")][:, :, site.head],
                                                 cache_other[hook_name(site, "v")][:, :, site.head], window, scale)
                return z

            hooks = [(hook_name(site, x), saver(x)) for x in "qkv"] + [(hook_name(site), replace)]
            logits = model.run_with_hooks(cache[starts[layer]], start_at_layer=layer, tokens=tokens, fwd_hooks=hooks,
                                          shortformer_pos_embed=cache["hook_pos_embed"] if shortformer else None)  # [n, seq, vocab]
            diff = (token_losses(logits, tokens)[:, late_start:] - clean_loss).mean(1)  # [n]
            inc[layer, head] = diff.mean()
            err[layer, head] = diff.std() / n ** 0.5
            if step:
                step()
    return Sensitivity(window, late_start, inc, err, float(clean_loss.mean()))

"""Attention patterns for the views: a head's pattern from its normalised q/k inputs (the maths of
``scrub.engine.compute.heads_z_normed`` up to the softmax), and a recorder of the q/k inputs the engine gives
the heads it recomputes, so the scrubbed run's patterns can be shown next to the clean ones."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator
from unittest import mock

import torch
from torch import Tensor
from transformer_lens import HookedTransformer
from transformer_lens.components import GroupedQueryAttention

from scrub.engine import evaluator


@dataclass(frozen=True)
class HeadCall:
    """The normalised inputs of one copy of a head that the engine recomputed: [rows, seq, d_model] each."""

    layer: int
    head: int
    xq: Tensor
    xk: Tensor
    pos: Tensor | None  # [seq, d_model] shortformer positions, else None
    masked: bool  # query-key masks split the inputs: the plain pattern is not what the head computed


@torch.no_grad()
def pattern_normed(model: HookedTransformer, layer: int, head: int, xq: Tensor, xk: Tensor,
                   pos: Tensor | None) -> Tensor:
    """The head's attention pattern [rows, q, k] for inputs already through ``ln1`` (xq, xk [rows, seq, d_model])."""
    attn, cfg = model.blocks[layer].attn, model.cfg
    if pos is not None:
        xq, xk = xq + pos, xk + pos
    if isinstance(attn, GroupedQueryAttention):
        kv = head // attn.repeat_kv_heads
        w_k, b_k = attn._W_K[kv], attn._b_K[kv]
    else:
        w_k, b_k = attn.W_K[head], attn.b_K[head]
    q = xq @ attn.W_Q[head] + attn.b_Q[head]  # [rows, seq, d_head]
    k = xk @ w_k + b_k  # [rows, seq, d_head]
    clip = getattr(cfg, "clip_qkv", None)
    if clip is not None:
        q, k = q.clamp(min=-clip, max=clip), k.clamp(min=-clip, max=clip)
    if cfg.positional_embedding_type == "rotary":
        q, k = (attn.apply_rotary(x[:, :, None, :])[:, :, 0] for x in (q, k))  # [rows, seq, d_head] x2
    scores = q @ k.transpose(1, 2) / attn.attn_scale  # [rows, q, k]
    cap = getattr(cfg, "attn_scores_soft_cap", None)
    if cap is not None and cap > 0:
        scores = cap * torch.tanh(scores / cap)
    seq = scores.shape[-1]
    causal = torch.ones(seq, seq, dtype=torch.bool, device=scores.device).tril()  # [q, k]
    return scores.masked_fill(~causal, float("-inf")).softmax(-1)  # [rows, q, k]


@torch.no_grad()
def clean_patterns(model: HookedTransformer, tokens: Tensor,
                   heads: list[tuple[int, int]]) -> dict[tuple[int, int], Tensor]:
    """Each head's pattern [q, k] on one sequence ``tokens`` [seq], from TransformerLens' own forward pass."""
    names = {f"blocks.{layer}.attn.hook_pattern" for layer, _ in heads}
    _, cache = model.run_with_cache(tokens[None], names_filter=lambda name: name in names)
    return {(layer, head): cache[f"blocks.{layer}.attn.hook_pattern"][0, head].cpu() for layer, head in heads}


@contextmanager
def recording(calls: list[HeadCall]) -> Iterator[None]:
    """Within the block, every head copy the engine recomputes is appended to ``calls`` (the engine's values
    are unchanged: the call goes on to the engine's own function)."""
    original = evaluator.heads_z_normed

    def record(model, layer, head_index, xq, xk, xv, pos, *, alt=None):
        for c, head in enumerate(head_index.tolist()):
            calls.append(HeadCall(layer, head, xq if xq.dim() == 3 else xq[c], xk if xk.dim() == 3 else xk[c],
                                  pos, masked=bool(alt)))
        return original(model, layer, head_index, xq, xk, xv, pos, alt=alt)

    with mock.patch.object(evaluator, "heads_z_normed", record):
        yield

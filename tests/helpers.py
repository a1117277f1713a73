"""Test-suite helpers outside the kit: a model factory that takes any TransformerLens config field (also
unsupported ones, for the error tests), a CLI checkpoint, seeded tokens and a small claim. Random models,
claims and sub-graphs for property tests are in scrub.testing."""

from __future__ import annotations

import networkx as nx
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from scrub.claims.hypothesis import add_path
from scrub.model.loading import save_checkpoint


def tiny_model(*, n_layers: int = 2, n_heads: int = 3, attn_only: bool = True, pos: str = "shortformer",
               norm: str | None = "LN", d_vocab: int = 20, n_ctx: int = 12, seed: int = 0, scale: float = 0.5,
               dtype: torch.dtype = torch.float32, n_kv_heads: int | None = None, parallel: bool = False,
               gated: bool = False, act_fn: str = "gelu", d_head: int = 4, rotary_dim: int | None = None,
               **config) -> HookedTransformer:
    """A random-init model with large weights, so that resampling visibly changes the logits. Comparisons
    of two evaluators use float64: without LayerNorm the logits reach ~300, where float32 summation order
    alone moves them by ~1e-3. ``pos`` is "standard", "shortformer" or "rotary" (``rotary_dim`` defaults to
    d_head); ``n_kv_heads`` gives grouped-query attention; other HookedTransformerConfig fields go in ``config``."""
    cfg = HookedTransformerConfig(
        n_layers=n_layers, n_heads=n_heads, d_model=16, d_head=d_head, n_ctx=n_ctx, d_vocab=d_vocab, act_fn=act_fn,
        attn_only=attn_only, d_mlp=None if attn_only else 24, positional_embedding_type=pos,
        normalization_type=norm, seed=seed, default_prepend_bos=False, dtype=dtype,
        n_key_value_heads=n_kv_heads, parallel_attn_mlp=parallel, gated_mlp=gated, rotary_dim=rotary_dim, **config,
    )
    model = HookedTransformer(cfg).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype) * scale)
    return model


def save_tiny_checkpoint(directory):
    """A random-init checkpoint with the shipped vocabulary and 64 positions, small enough for CLI tests."""
    cfg = HookedTransformerConfig(n_layers=2, n_heads=4, d_model=32, d_head=8, n_ctx=64, d_vocab=2048,
                                  attn_only=True, act_fn="gelu", seed=0, normalization_type="LN",
                                  positional_embedding_type="shortformer")
    save_checkpoint(HookedTransformer(cfg), directory)
    return directory


def random_tokens(n: int = 8, seq: int = 12, seed: int = 0) -> torch.Tensor:
    """Seeded token ids below 20 (``tiny_model``'s vocabulary): [n, seq]."""
    return torch.randint(0, 20, (n, seq), generator=torch.Generator().manual_seed(seed))


def partial_graph() -> nx.DiGraph:
    """A small claim on a 2-layer ``tiny_model``: 1.2's V reads 0.1, its Q the embedding."""
    g = nx.DiGraph()
    add_path(g, "embed", ("0.1", "v"), ("1.2", "k"), "logits")
    add_path(g, "embed", ("1.2", "q"), "logits")
    return g

"""``Structure``'s residual senders against the rules written out by hand, for every position kind, with and
without MLPs, sequential and parallel blocks (issue #20 computes them in one pass over the sources)."""

from __future__ import annotations

import itertools

import pytest
from transformer_lens import HookedTransformerConfig

from scrub.claims.sites import Channel, Embed, Head, Logits, Mlp, Pos
from scrub.claims.structure import Structure

N_LAYERS, N_HEADS = 3, 2


def _config(pos: str, attn_only: bool, parallel: bool) -> HookedTransformerConfig:
    return HookedTransformerConfig(n_layers=N_LAYERS, n_heads=N_HEADS, d_model=8, d_head=4, d_vocab=5, n_ctx=6,
                                   d_mlp=None if attn_only else 16, attn_only=attn_only, act_fn="gelu",
                                   positional_embedding_type=pos, parallel_attn_mlp=parallel,
                                   rotary_dim=4 if pos == "rotary" else None)


def _expected(receiver, pos: str, attn_only: bool, parallel: bool) -> list:
    """The rule in words: the embedding (and positions, when they are a residual addend), every head of an
    earlier layer, every earlier MLP; an MLP also reads its own layer's heads unless blocks are parallel."""
    out = [Embed()] + ([Pos()] if pos == "standard" else [])
    layers = N_LAYERS if isinstance(receiver, Logits) else receiver.layer
    for layer in range(N_LAYERS):
        own = layer == layers and isinstance(receiver, Mlp) and not parallel
        if layer < layers or own:
            out += [Head(layer, h) for h in range(N_HEADS)]
        if layer < layers and not attn_only:
            out.append(Mlp(layer))
    return out


@pytest.mark.parametrize(("pos", "attn_only", "parallel"),
                         list(itertools.product(("standard", "shortformer", "rotary"), (False, True), (False, True))))
def test_residual_senders_follow_the_rules(pos, attn_only, parallel):
    structure = Structure.of(_config(pos, attn_only, parallel))
    receivers = [Head(layer, h) for layer in range(N_LAYERS) for h in range(N_HEADS)]
    receivers += [] if attn_only else [Mlp(layer) for layer in range(N_LAYERS)]
    assert sorted(structure.receivers, key=str) == sorted(receivers + [Logits()], key=str)
    for r in structure.receivers:
        expected = _expected(r, pos, attn_only, parallel)
        assert list(structure.residual_senders(r)) == expected, r
        for s in structure.sources:
            for channel in (None, *structure.channels(r)):
                assert structure.feeds(s, r, channel) == (s in expected), (s, r, channel)
    if pos == "shortformer":  # positions enter heads' q and k only, never the residual
        assert structure.feeds(Pos(), Head(1, 0), Channel.K) and not structure.feeds(Pos(), Head(1, 0), Channel.V)
        assert not structure.feeds(Pos(), Logits())

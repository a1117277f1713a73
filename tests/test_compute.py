"""Component maths: the fused LayerNorm equals TransformerLens' own module."""

from __future__ import annotations

import torch
from transformer_lens.components import RMSNorm

from scrub.compute import normalise
from tests.helpers import tiny_model


def test_normalise_equals_the_module_forward():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 5, 16, generator=gen, dtype=torch.float64) * 4 + 1  # [copy, batch, seq, d_model]
    for norm in ("LN", "LNPre"):
        module = tiny_model(norm=norm, dtype=torch.float64).blocks[1].ln1
        assert torch.allclose(normalise(module, x), module(x), atol=1e-12, rtol=1e-12), norm


def test_normalise_falls_back_to_other_modules():
    model = tiny_model(norm="RMS", dtype=torch.float64)
    module = model.blocks[0].ln1
    assert isinstance(module, RMSNorm)
    x = torch.randn(2, 5, 16, dtype=torch.float64)  # [batch, seq, d_model]
    assert torch.equal(normalise(module, x), module(x))

"""The naive reference evaluator on every supported architecture: the empty claim is the model run on the
resampled data, and the full claim (every path, no features) is the model's own logits."""

from __future__ import annotations

import pytest
import torch

from scrub.claims.hypothesis import empty_graph, full_graph, validate
from scrub.engine.treeify import assign_data, treeify
from scrub.testing.reference import naive_logits
from tests.helpers import tiny_model

# Small enough that the full claim stays cheap when unrolled into one copy per path.
ARCHS = {
    "standard-LN": dict(pos="standard"),
    "shortformer-LN": dict(),
    "rotary-partial-RMS-GQA-gated": dict(pos="rotary", rotary_dim=2, norm="RMS", n_kv_heads=1, gated=True,
                                         act_fn="silu"),
    "rotary-LNPre-parallel": dict(pos="rotary", norm="LNPre", parallel=True),
    "standard-no-norm-GQA-parallel-gated": dict(pos="standard", norm=None, n_kv_heads=1, parallel=True, gated=True,
                                                act_fn="silu"),
    "shortformer-RMSPre-parallel": dict(norm="RMSPre", parallel=True),
}


@pytest.mark.parametrize("arch", ARCHS.values(), ids=ARCHS.keys())
def test_empty_and_full_claims_reproduce_the_model(arch):
    model = tiny_model(attn_only=False, n_heads=2, n_ctx=8, dtype=torch.float64, **arch)
    tokens = torch.randint(0, 20, (4, 8), generator=torch.Generator().manual_seed(1))  # [batch, seq]
    clean = model(tokens)  # [batch, seq, d_vocab]

    tree = treeify(validate(empty_graph(), model))
    data = assign_data(tree, tokens, seed=0)
    assert torch.allclose(naive_logits(model, tree, data, tokens), model(tokens[data[tree].other]), atol=1e-10, rtol=0)

    tree = treeify(validate(full_graph(model), model))
    data = assign_data(tree, tokens, seed=0)
    assert torch.allclose(naive_logits(model, tree, data, tokens), clean, atol=1e-10, rtol=0)


def test_reference_leaves_the_model_unchanged():
    model = tiny_model(attn_only=False, n_heads=2, n_ctx=8, pos="rotary", n_kv_heads=1, dtype=torch.float64)
    tokens = torch.randint(0, 20, (2, 8), generator=torch.Generator().manual_seed(1))  # [batch, seq]
    tree = treeify(validate(empty_graph(), model))
    naive_logits(model, tree, assign_data(tree, tokens, seed=0), tokens)
    assert not model.cfg.ungroup_grouped_query_attention and not model.cfg.use_split_qkv_input

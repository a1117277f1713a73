"""The factored unembedding: equal to LayerNorm + W_U on the summed residual, alone and inside the engine."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scrub.claims.hypothesis import validate
from scrub.claims.sites import Head
from scrub.engine.compute import clean_run
from scrub.engine.evaluator import evaluate_many
from scrub.engine.treeify import SamplingOptions, assign_data, treeify
from scrub.engine.unembed import FactoredUnembed, Term, unembed
from scrub.testing.graphs import n_channel_edges, subgraph
from tests.helpers import tiny_model


def test_factored_equals_plain_unembed_of_the_sum():
    for norm in ("LN", "LNPre"):
        model = tiny_model(norm=norm, dtype=torch.float64)
        factored = FactoredUnembed.of(model)
        gen = torch.Generator().manual_seed(0)
        base = torch.randn(3, 5, 16, generator=gen, dtype=torch.float64)  # [batch, n_pos, d_model]
        dz = torch.randn(3, 5, 4, generator=gen, dtype=torch.float64)  # [batch, n_pos, d_head]
        other = torch.randn(3, 5, 16, generator=gen, dtype=torch.float64)  # [batch, n_pos, d_model]
        head = Head(1, 2)
        w_o = model.blocks[1].attn.W_O[2]  # [d_head, d_model]
        # terms 4 + 16 wide, at least d_model = 16: the built residual times Ã
        got = factored.logits(base, "k", [Term(dz=dz, head=head), Term(resid=other)])
        want = unembed(model, base + dz @ w_o + other)
        assert torch.allclose(got, want, atol=1e-10, rtol=1e-10), norm
        assert "k" not in factored.bases
        # terms 4 + 4 wide: the cached base plus each term's product through W_O[h] Ã
        got = factored.logits(base, "k", [Term(dz=dz, head=head), Term(dz=2 * dz, head=Head(0, 1))])
        want = unembed(model, base + dz @ w_o + 2 * dz @ model.blocks[0].attn.W_O[1])
        assert torch.allclose(got, want, atol=1e-10, rtol=1e-10), norm
        assert "k" in factored.bases
        # the base is cached under its key: a different base under a new key gives its own logits
        assert torch.allclose(factored.logits(other, "k2", []), unembed(model, other), atol=1e-10, rtol=1e-10)


def test_factored_form_needs_a_final_layernorm():
    assert FactoredUnembed.of(tiny_model(norm=None)) is None
    assert FactoredUnembed.of(tiny_model(norm="LN")) is not None


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n_layers=st.integers(1, 3), attn_only=st.booleans(), norm=st.sampled_from(["LN", "LNPre"]),
       pos=st.sampled_from(["standard", "shortformer"]), seed=st.integers(0, 1000),
       keep_seed=st.integers(0, 1000), masked=st.booleans())
def test_engine_scored_positions_equal_full_logits_sliced(n_layers, attn_only, norm, pos, seed, keep_seed, masked):
    """With ``positions`` the engine unembeds in factored form; it must equal the full logits at those positions,
    including claims restricted to some receiver positions."""
    model = tiny_model(n_layers=n_layers, attn_only=attn_only, norm=norm, pos=pos, seed=seed, dtype=torch.float64)
    keep = (torch.rand(n_channel_edges(model), generator=torch.Generator().manual_seed(keep_seed)) < 0.5).tolist()
    graph = subgraph(model, keep)
    if masked and "logits" in graph:
        for src in list(graph.predecessors("logits")):
            graph.edges[src, "logits"]["positions"] = lambda t: t % 2 == 0  # [batch, seq] bool
    tokens = torch.randint(0, 20, (4, 9), generator=torch.Generator().manual_seed(seed))  # [batch, seq]
    tree = treeify(validate(graph, model))
    data = assign_data(tree, tokens, seed=seed, options=SamplingOptions())
    clean = clean_run(model, tokens)
    positions = torch.tensor([1, 4, 7])
    (full,), _ = evaluate_many(model, [tree], [data], clean)
    (scored,), _ = evaluate_many(model, [tree], [data], clean, positions=positions)
    assert torch.allclose(scored, full[:, positions], atol=1e-10, rtol=1e-10)

"""The batched engine: exact answers on a hand-computable micro model, and agreement with the naive
literal reference on small random models of several shapes."""

from __future__ import annotations

import math

import networkx as nx
import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from scrub.claims.features import after_earlier_occurrence, current_token, repeat_count
from scrub.claims.hypothesis import add_path, empty_graph, full_graph, validate
from scrub.claims.structure import Structure
from scrub.engine.compute import UnsupportedModelError, check_supported, clean_run
from scrub.engine.evaluator import evaluate
from scrub.engine.treeify import SamplingOptions, Unit, assign_data, treeify
from scrub.metrics import token_losses
from scrub.testing.reference import naive_logits
from tests.helpers import tiny_model


def micro_model() -> HookedTransformer:
    """One head, one-hot embeddings, uniform attention, identity OV and unembedding, no LayerNorm:
    logits[t] = onehot(tok[t]) + mean_{s<=t} onehot(tok[s])."""
    cfg = HookedTransformerConfig(n_layers=1, n_heads=1, d_model=4, d_head=4, n_ctx=3, d_vocab=4, act_fn="gelu",
                                  attn_only=True, normalization_type=None, positional_embedding_type="standard")
    model = HookedTransformer(cfg).eval()
    eye = torch.eye(4)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.embed.W_E.copy_(eye)
        model.blocks[0].attn.W_V[0].copy_(eye)
        model.blocks[0].attn.W_O[0].copy_(eye)
        model.unembed.W_U.copy_(eye)
    return model


def scrub_logits(model, graph, tokens, **options):
    claim = validate(graph, model)
    opts = SamplingOptions(**options)
    tree = treeify(claim, opts.unit)
    data = assign_data(tree, tokens, seed=0, options=opts, structure=Structure.of(model))
    logits, _ = evaluate(model, tree, data, clean_run(model, tokens))
    return logits, data, tree, claim


def test_micro_model_clean_logits_are_the_formula():
    model = micro_model()
    tokens = torch.tensor([[0, 1, 2], [3, 3, 3]])
    onehot = torch.nn.functional.one_hot(tokens, 4).float()  # [batch, seq, vocab]
    expected = onehot + onehot.cumsum(1) / torch.arange(1, 4)[None, :, None]
    assert torch.allclose(model(tokens), expected, atol=1e-6)


def test_micro_model_empty_hypothesis_loss_by_hand():
    """With two examples every draw must be the other one, so example A is scored with B's logits 2*e3."""
    model = micro_model()
    tokens = torch.tensor([[0, 1, 2], [3, 3, 3]])
    logits, *_ = scrub_logits(model, empty_graph(), tokens)
    losses = token_losses(logits, tokens)  # [batch, 2]
    assert losses[0].tolist() == pytest.approx([math.log(3 + math.e**2)] * 2, abs=1e-6)
    # B's labels are 3 and A's logits at t=0,1 are 2*e0 and [0.5, 1.5, 0, 0]
    assert losses[1].tolist() == pytest.approx([math.log(math.e**2 + 3), math.log(math.e**0.5 + math.e**1.5 + 2) - 0.0],
                                               abs=1e-6)


def test_micro_model_head_claimed_inputs_unclaimed():
    """0.0 -> logits claimed, nothing else: the embedding path reads the root's draw, the head reads its own."""
    model = micro_model()
    tokens = torch.tensor([[0, 1, 2], [3, 3, 3], [1, 0, 1], [2, 2, 0]])
    g = nx.DiGraph()
    g.add_edge("0.0", "logits")
    logits, data, tree, _ = scrub_logits(model, g, tokens)
    onehot = torch.nn.functional.one_hot(tokens, 4).float()
    root_other = data[tree].other
    head_other = data[tree.inputs[0].child].other
    expected = onehot[root_other] + onehot[head_other].cumsum(1) / torch.arange(1, 4)[None, :, None]
    assert torch.allclose(logits, expected, atol=1e-6)
    assert not torch.equal(root_other, torch.arange(4)) and not torch.equal(head_other, torch.arange(4))


def test_micro_model_value_path_claimed():
    """embed -> 0.0 (v) -> logits: the head averages the reference tokens; q and k do not matter here."""
    model = micro_model()
    tokens = torch.tensor([[0, 1, 2], [3, 3, 3], [1, 0, 1]])
    g = nx.DiGraph()
    add_path(g, "embed", ("0.0", "v"), "logits")
    logits, data, tree, _ = scrub_logits(model, g, tokens)
    onehot = torch.nn.functional.one_hot(tokens, 4).float()
    expected = onehot[data[tree].other] + onehot.cumsum(1) / torch.arange(1, 4)[None, :, None]
    assert torch.allclose(logits, expected, atol=1e-6)


SHAPES = [
    dict(n_layers=2, attn_only=True, pos="shortformer", norm="LN"),
    dict(n_layers=2, attn_only=False, pos="standard", norm="LN"),
    dict(n_layers=3, attn_only=True, pos="standard", norm=None),
    dict(n_layers=2, attn_only=False, pos="shortformer", norm="LNPre"),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "-".join(str(v) for v in s.values()))
@pytest.mark.parametrize("independent", [False, True])
@pytest.mark.parametrize("unit", list(Unit))
def test_engine_matches_naive_reference(shape, independent, unit):
    model = tiny_model(**shape, seed=3, dtype=torch.float64)
    tokens = torch.randint(0, 20, (5, 12), generator=torch.Generator().manual_seed(1))
    g = nx.DiGraph()
    add_path(g, "embed", ("0.1", "v"), ("1.2", "k"), "logits")
    add_path(g, "embed", ("1.2", "q"), "logits")
    add_path(g, "0.0", ("1.2", "v"))
    add_path(g, "embed", ("0.0", "qk"), "logits")
    if not shape["attn_only"]:
        add_path(g, "1.0", "mlp.1", "logits")
        add_path(g, "embed", "mlp.0", ("1.0", "qk"))
    g.nodes["0.1"]["feature"] = current_token(3)
    g.nodes["1.2"]["feature"] = repeat_count(2)
    g.edges["0.1", "1.2"]["positions"] = after_earlier_occurrence
    logits, data, tree, claim = scrub_logits(model, g, tokens, independent=independent, unit=unit)
    reference = naive_logits(model, tree, data, tokens)
    assert torch.allclose(logits, reference, atol=1e-9, rtol=1e-9)
    assert not torch.allclose(logits, model(tokens), atol=1e-2)  # the claim really resampled something


def test_full_graph_is_clean_exactly_and_empty_is_resampled_logits():
    model = tiny_model(attn_only=False, pos="standard")
    tokens = torch.randint(0, 20, (6, 12), generator=torch.Generator().manual_seed(2))
    full, *_ = scrub_logits(model, full_graph(model), tokens)
    assert torch.equal(full, model(tokens).detach())
    empty, data, tree, _ = scrub_logits(model, empty_graph(), tokens)
    assert torch.equal(empty, model(tokens[data[tree].other]).detach())


def test_unsupported_architecture_is_named():
    model = tiny_model()
    model.cfg.positional_embedding_type = "alibi"
    with pytest.raises(UnsupportedModelError, match="alibi"):
        check_supported(model)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "-".join(str(v) for v in s.values()))
def test_units_coincide_on_two_examples(shape):
    """With two examples every draw is forced (the other example, or itself when the feature disagrees), so
    one draw per node and one draw per copy give the same logits: the old numbers, where they are defined."""
    model = tiny_model(**shape, seed=4, dtype=torch.float64)
    tokens = torch.randint(0, 20, (2, 12), generator=torch.Generator().manual_seed(5))
    g = nx.DiGraph()
    add_path(g, "embed", ("0.1", "v"), ("1.2", "k"), "logits")
    add_path(g, "embed", ("0.0", "v"), ("1.2", "k"))
    add_path(g, "embed", ("0.0", "q"), ("1.2", "q"), "logits")
    g.nodes["0.0"]["feature"] = current_token(3)
    node, *_ = scrub_logits(model, g, tokens, unit=Unit.NODE)
    copy, *_ = scrub_logits(model, g, tokens, unit=Unit.COPY)
    assert torch.allclose(node, copy, atol=1e-12, rtol=0)
    assert not torch.allclose(node, model(tokens), atol=1e-3)

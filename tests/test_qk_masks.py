"""Query-key masks in the engine: an exact micro-model case, the two trivial masks, agreement with the naive
reference (property test), and the study's context-sensitivity measure against its hook-based original."""

from __future__ import annotations

import networkx as nx
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scrub.claims.hypothesis import add_path, validate
from scrub.claims.masks import QKMask, all_keys, no_keys, previous_position, within
from scrub.claims.structure import Structure
from scrub.engine.compute import clean_run
from scrub.engine.evaluator import evaluate
from scrub.engine.treeify import SamplingOptions, assign_data, treeify
from scrub.testing.graphs import n_channel_edges, subgraph
from scrub.testing.reference import naive_logits
from tests.helpers import tiny_model
from tests.test_engine import micro_model


def scrub_logits(model, graph, tokens, options=SamplingOptions(), seed=0):
    tree = treeify(validate(graph, model), options.unit)
    data = assign_data(tree, tokens, seed=seed, options=options, structure=Structure.of(model))
    logits, _ = evaluate(model, tree, data, clean_run(model, tokens))
    return logits, data, tree


def test_micro_model_previous_position_value_by_hand():
    """embed -> 0.0 (v) only at key t-1 -> logits: the head averages uniformly over keys 0..t; key t-1 passes
    the reference token, every other key the token of the head's unclaimed draw."""
    model = micro_model()
    tokens = torch.tensor([[0, 1, 2], [3, 3, 3], [1, 0, 1]])
    g = nx.DiGraph()
    g.add_edge("embed", "0.0", via="v", qk_mask=previous_position())
    g.add_edge("0.0", "logits")
    logits, data, tree = scrub_logits(model, g, tokens)
    onehot = torch.nn.functional.one_hot(tokens, 4).float()  # [batch, seq, vocab]
    head_other = data[tree.inputs[0].child].other  # [batch]
    expected = onehot[data[tree].other].clone()  # the embedding path into the logits is unclaimed
    for t in range(3):
        values = [onehot[:, s] if s == t - 1 else onehot[head_other, s] for s in range(t + 1)]  # [batch, vocab] each
        expected[:, t] += torch.stack(values).mean(0)
    assert torch.allclose(logits, expected, atol=1e-6)


def _claim(mask: QKMask | None, dropped: bool = False) -> nx.DiGraph:
    """0.1 -> 1.0 (k) and embed -> 1.0 (q); 0.1 reads embed through q, k and v (with ``mask``), or nothing."""
    g = nx.DiGraph()
    add_path(g, "0.1", ("1.0", "k"), "logits")
    add_path(g, "embed", ("1.0", "q"), "logits")
    if not dropped:
        g.add_edge("embed", "0.1", via="qkv", **({} if mask is None else {"qk_mask": mask}))
    return g


def test_all_true_mask_is_the_unmasked_claim_and_all_false_resamples_the_input():
    model = tiny_model(n_layers=2, n_heads=2, dtype=torch.float64, seed=4)
    tokens = torch.randint(0, 20, (6, 9), generator=torch.Generator().manual_seed(3))
    unmasked, *_ = scrub_logits(model, _claim(None), tokens)
    dropped, *_ = scrub_logits(model, _claim(None, dropped=True), tokens)
    assert torch.equal(scrub_logits(model, _claim(all_keys()), tokens)[0], unmasked)
    assert torch.allclose(scrub_logits(model, _claim(no_keys()), tokens)[0], dropped, atol=1e-12, rtol=0)
    partial, *_ = scrub_logits(model, _claim(within(2)), tokens)
    assert not torch.allclose(partial, unmasked, atol=1e-3) and not torch.allclose(partial, dropped, atol=1e-3)


MASKS = [previous_position(), within(0), within(2), QKMask("even keys", lambda q, k: k % 2 == 0)]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), pos=st.sampled_from(["standard", "shortformer", "rotary"]),
       density=st.floats(0.2, 0.8), mask_pick=st.integers(0, 100), per_position=st.booleans())
def test_engine_equals_naive_reference_with_query_key_masks(seed, pos, density, mask_pick, per_position):
    """Random claims on random 2-layer models with a query-key mask on about half of the head edges (one mask
    per head input), some nodes with a per-position feature: the engine equals the literal evaluation."""
    from scrub.claims.features import is_repeat

    model = tiny_model(n_layers=2, n_heads=2, pos=pos, seed=seed, dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    graph = subgraph(model, (torch.rand(n_channel_edges(model), generator=gen) < density).tolist())
    mask = MASKS[mask_pick % len(MASKS)]
    for _, _dst, attrs in graph.edges(data=True):
        if attrs.get("via") and bool(torch.rand(1, generator=gen) < 0.5):
            attrs["qk_mask"] = mask
    if per_position:
        for node in graph.nodes:
            if node not in ("logits", "pos", "embed") and bool(torch.rand(1, generator=gen) < 0.4):
                graph.nodes[node]["feature"] = is_repeat(per_position=True)
    tokens = torch.randint(0, 6, (5, 6), generator=gen)
    logits, data, tree = scrub_logits(model, graph, tokens, seed=seed)
    assert torch.allclose(logits, naive_logits(model, tree, data, tokens), atol=1e-9, rtol=1e-9)

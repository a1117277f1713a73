"""The engine at depth and on every supported architecture: full = clean and empty = baseline on a 12-layer
model, and scrubbing every path through one component is TransformerLens activation patching of it."""

from __future__ import annotations

import networkx as nx
import pytest
import torch

from scrub.claims.hypothesis import empty_graph, full_graph, validate
from scrub.claims.sites import Head, Mlp, hook_name
from scrub.engine.compute import clean_run
from scrub.engine.evaluator import evaluate
from scrub.engine.treeify import assign_data, treeify
from scrub.experiment.runner import run
from tests.helpers import tiny_model

ARCHS = {
    "standard-LN": dict(pos="standard"),
    "shortformer-LNPre": dict(norm="LNPre"),
    "rotary-RMS-GQA-gated": dict(pos="rotary", norm="RMS", n_kv_heads=1, gated=True, act_fn="silu"),
    "rotary-partial-parallel": dict(pos="rotary", rotary_dim=2, parallel=True),
    "standard-none-parallel": dict(pos="standard", norm=None, parallel=True),
}


def scrub_logits(model, graph, tokens):
    tree = treeify(validate(graph, model))
    data = assign_data(tree, tokens, seed=0)
    logits, stats = evaluate(model, tree, data, clean_run(model, tokens))
    return logits, tree, data, stats


def test_full_is_clean_and_empty_is_baseline_at_12_layers():
    model = tiny_model(n_layers=12, n_heads=2, attn_only=False, pos="standard", n_ctx=10)
    tokens = torch.randint(0, 20, (6, 10), generator=torch.Generator().manual_seed(0))  # [batch, seq]
    full = run(model, full_graph(model), tokens, progress=False, n_bootstrap=50)
    assert full.loss_scrubbed == full.loss_clean and full.loss_recovered == 1.0
    logits, _, _, stats = scrub_logits(model, full_graph(model), tokens)
    assert torch.equal(logits, model(tokens)) and stats.recomputed == 0
    empty, tree, data, _ = scrub_logits(model, empty_graph(), tokens)
    assert torch.equal(empty, model(tokens[data[tree].other]))


def without_inputs(model, component: str) -> nx.DiGraph:
    """Every path, but ``component`` reads none of its inputs: it is computed on another datum."""
    g = full_graph(model)
    g.remove_edges_from([(s, t) for s, t in list(g.edges) if t == component])
    return g


@pytest.mark.parametrize("arch", ARCHS.values(), ids=ARCHS.keys())
@pytest.mark.parametrize("which", ["head", "mlp"])
def test_scrubbing_a_component_is_activation_patching(arch, which):
    model = tiny_model(n_layers=4, n_heads=2, attn_only=False, n_ctx=8, dtype=torch.float64, **arch)
    tokens = torch.randint(0, 20, (5, 8), generator=torch.Generator().manual_seed(3))  # [batch, seq]
    component = Head(2, 1) if which == "head" else Mlp(1)
    logits, tree, data, _ = scrub_logits(model, without_inputs(model, str(component)), tokens)
    node = next(n for n in tree.walk() if n.component == component)
    other = data[node].other  # [batch] the datum the component is computed on, row by row
    _, cache = model.run_with_cache(tokens)
    name = hook_name(component)

    def patch(act, hook):
        if isinstance(component, Head):
            act[:, :, component.head] = cache[name][other][:, :, component.head]
            return act
        return cache[name][other]

    patched = model.run_with_hooks(tokens, fwd_hooks=[(name, patch)])
    assert torch.allclose(logits, patched, atol=1e-9, rtol=1e-9)
    assert not torch.allclose(logits, model(tokens), atol=1e-3)  # the patch changed something

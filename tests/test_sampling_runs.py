"""Dataset-wide sampling through ``scrub.run``: draws do not depend on the batching, per-position features
resample where whole-sequence ones cannot, and the degenerate per-position features reduce to known claims."""

from __future__ import annotations

import networkx as nx
import pytest
import torch

from scrub.claims.features import Feature, constant, is_repeat
from scrub.claims.hypothesis import add_path, validate
from scrub.engine.compute import clean_run
from scrub.engine.evaluator import evaluate
from scrub.engine.treeify import SamplingOptions, assign_data, treeify
from scrub.experiment.inputs import RunInputError
from scrub.experiment.runner import run
from tests.helpers import tiny_model


def _claim(feature: Feature | None) -> nx.DiGraph:
    g = nx.DiGraph()
    add_path(g, "embed", ("0.1", "v"), ("1.0", "k"), "logits")
    add_path(g, "embed", ("1.0", "qv"), "logits")
    if feature is not None:
        g.nodes["1.0"]["feature"] = feature
        g.nodes["0.1"]["feature"] = feature
    return g


def _tokens(n: int, seq: int = 10, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 8, (n, seq), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("feature", [None, is_repeat(per_position=True), Feature("first", lambda t: t[:, :1] % 3)],
                         ids=["identity", "per-position", "whole-sequence"])
@pytest.mark.parametrize("pool", [None, 5])
def test_draws_do_not_depend_on_the_batch_size(feature, pool):
    model = tiny_model(dtype=torch.float64, seed=2)
    tokens = _tokens(12)
    options = SamplingOptions(pool=pool)
    results = [run(model, _claim(feature), tokens, batch_size=b, progress=False, n_bootstrap=20, options=options)
               for b in (3, 5, 12)]
    for other in results[1:]:
        assert torch.allclose(torch.tensor(other.per_example_scrubbed), torch.tensor(results[0].per_example_scrubbed),
                              atol=1e-10, rtol=0)
        assert torch.allclose(torch.tensor(other.per_example_baseline), torch.tensor(results[0].per_example_baseline),
                              atol=1e-10, rtol=0)
    assert results[0].loss_scrubbed != results[0].loss_clean  # the claim resamples something


def test_the_whole_dataset_clean_run_and_per_batch_runs_agree(monkeypatch):
    """A run keeps the whole dataset's clean run when it fits; without it every batch runs its own examples and
    the data it draws: the same numbers either way."""
    import scrub.experiment.runner

    model = tiny_model(dtype=torch.float64, seed=3)
    tokens = _tokens(10, seed=4)
    kept = run(model, _claim(is_repeat(per_position=True)), tokens, batch_size=4, progress=False, n_bootstrap=20)
    monkeypatch.setattr(scrub.experiment.runner, "WHOLE_RUN_SHARE", 0.0)
    batched = run(model, _claim(is_repeat(per_position=True)), tokens, batch_size=4, progress=False, n_bootstrap=20)
    for a, b in ((kept.per_example_scrubbed, batched.per_example_scrubbed),
                 (kept.per_example_baseline, batched.per_example_baseline)):
        assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-10, rtol=0)


def test_a_per_position_feature_unique_to_each_datum_is_no_feature():
    """Codes that only the datum itself has (a hash of its whole sequence, at every position): every draw is
    forced back to the datum, so the claim is the identity-feature claim exactly."""
    model = tiny_model(dtype=torch.float64, seed=5)
    tokens = _tokens(6, seed=1)

    def own(t):  # [batch, seq]: one code per sequence, repeated at every position
        weights = torch.arange(1, t.shape[1] + 1) * 1_000_003
        return (t * weights).sum(1, keepdim=True).expand(-1, t.shape[1])

    logits = {}
    for name, feature in (("none", None), ("own", Feature("own", own, per_position=True))):
        tree = treeify(validate(_claim(feature), model))
        data = assign_data(tree, tokens, seed=3)
        logits[name], _ = evaluate(model, tree, data, clean_run(model, tokens))
        if feature is not None:
            assert data.self_draws()["1.0"] == 1.0
    assert torch.equal(logits["own"], logits["none"])


def test_a_per_position_feature_every_datum_shares_is_the_constant_feature_on_two_examples():
    """With two examples every draw of a feature that all data share must return the other one, at every
    position: the per-position split then equals the whole-sequence constant feature."""
    model = tiny_model(dtype=torch.float64, seed=6)
    tokens = _tokens(2, seed=2)
    shared = Feature("shared", lambda t: torch.zeros_like(t), per_position=True)
    out = []
    for feature in (shared, constant()):
        tree = treeify(validate(_claim(feature), model))
        out.append(evaluate(model, tree, assign_data(tree, tokens, seed=0), clean_run(model, tokens))[0])
    assert torch.allclose(out[0], out[1], atol=1e-12, rtol=0)


def test_per_position_is_repeat_resamples_where_the_whole_sequence_code_cannot():
    """On natural text, no two sequences share the whole is_repeat row, so that feature never resamples and the
    run warns; the per-position version finds an agreeing datum at almost every position."""
    from scrub.data.batches import natural_batch
    from scrub.model.loading import load_model

    shipped_model, tokens = load_model(), natural_batch(24, 48, seed=3)
    results = {}
    for name, feature in (("per-position", is_repeat(per_position=True)), ("whole", is_repeat())):
        g = nx.DiGraph()
        add_path(g, "embed", ("1.0", "qkv"), "logits")
        g.nodes["1.0"]["feature"] = feature
        results[name] = run(shipped_model, g, tokens, batch_size=8, progress=False, n_bootstrap=20)
    assert results["whole"].self_draws["1.0"] == 1.0
    assert any("1.0" in w and "returned the datum itself" in w for w in results["whole"].warnings)
    assert results["per-position"].self_draws["1.0"] < 0.05
    assert not any("returned the datum itself" in w for w in results["per-position"].warnings)


def test_bad_pool_is_refused():
    model = tiny_model()
    with pytest.raises(RunInputError, match="pool"):
        run(model, _claim(None), _tokens(4), options=SamplingOptions(pool=1), progress=False)


@pytest.mark.parametrize("pos", ["shortformer", "rotary", "standard"])
def test_a_head_reading_a_per_position_embedding_is_recomputed(pos):
    """A head whose every input is the clean residual on a per-position datum map is not the clean head on any
    datum (its attention mixes positions read from different data): the engine must recompute it. Found by the
    property test on shortformer and rotary models, where the embedding is the head's only residual source."""
    from scrub.testing.reference import naive_logits

    model = tiny_model(n_layers=2, n_heads=1, pos=pos, dtype=torch.float64)
    g = nx.DiGraph()
    add_path(g, "embed", ("0.0", "qkv"), ("1.0", "qv"), "logits")
    g.add_edge("0.0", "logits")
    g.nodes["embed"]["feature"] = Feature("token-mod-2", lambda t: t % 2, per_position=True)
    tokens = _tokens(9, seq=5)
    tree = treeify(validate(g, model))
    data = assign_data(tree, tokens, seed=0)
    logits, _ = evaluate(model, tree, data, clean_run(model, tokens))
    assert torch.allclose(logits, naive_logits(model, tree, data, tokens), atol=1e-9, rtol=0)

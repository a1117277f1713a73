"""Each invariant of ``scrub.testing`` holds on the real engine and fails, with a reproducer, on an engine broken
on purpose (fixtures that monkeypatch one piece): a check that could not fail would pass both."""

from __future__ import annotations

from dataclasses import replace

import networkx as nx
import pytest
import torch

from scrub.claims.features import Feature
from scrub.claims.hypothesis import add_path, full_graph
from scrub.claims.masks import QKMask, within
from scrub.claims.sites import Head, Mlp
from scrub.engine import evaluator, sampling
from scrub.engine.treeify import Assignments, SamplingOptions, TreeNode
from scrub.testing import invariants as inv
from scrub.testing import purity
from scrub.testing.models import MlpKind, ModelSpec, random_tokens, tiny_model
from scrub.testing.pieces import KeyMod, TokenMod, feature, qk_mask

SPEC = ModelSpec(n_heads=2, mlp=MlpKind.PLAIN, float64=True, seed=3)


@pytest.fixture(scope="module")
def model():
    return SPEC.build()


@pytest.fixture(scope="module")
def tokens():
    return random_tokens(8, 8, seed=1)  # [8, 8]


def claim() -> nx.DiGraph:
    """1.0's K reads 0.1 (whose V reads the embedding through keys at most one back, on token-0 parity), its Q
    the embedding."""
    g = nx.DiGraph()
    add_path(g, "embed", ("0.1", "v"), ("1.0", "k"), "logits")
    add_path(g, "embed", ("1.0", "q"), "logits")
    g.nodes["0.1"]["feature"] = feature(TokenMod(2, 0))
    g.edges["embed", "0.1"]["qk_mask"] = within(1)
    return g


# --- the broken engines ----------------------------------------------------------------------------------

@pytest.fixture
def sampler_ignores_features(monkeypatch):
    groups = sampling.Sampler.groups
    monkeypatch.setattr(sampling.Sampler, "groups", lambda self, feature: groups(self, None))


def _map_tree(root: TreeNode, change) -> TreeNode:
    """The tree with every input replaced by ``change(input)`` (children mapped first, sharing kept)."""
    done: dict[int, TreeNode] = {}

    def visit(node: TreeNode) -> TreeNode:
        if id(node) not in done:
            inputs = tuple(change(replace(i, child=visit(i.child))) for i in node.inputs)
            done[id(node)] = replace(node, inputs=inputs, pieces=tuple(visit(p) for p in node.pieces))
        return done[id(node)]

    return visit(root)


def _broken_evaluator(monkeypatch, trees=lambda root: root, data=lambda a: a):
    """``evaluate_many`` on changed trees and assignments: the engine's own code, fed what a bug would feed it."""
    evaluate_many = evaluator.evaluate_many

    def broken(model, roots, datas, clean, *args, **kwargs):
        datas = [Assignments({p: data(a) for p, a in d.by_path.items()}, d.options) for d in datas]
        return evaluate_many(model, [trees(r) for r in roots], datas, clean, *args, **kwargs)

    monkeypatch.setattr(evaluator, "evaluate_many", broken)


@pytest.fixture
def reads_clean_for_resampled(monkeypatch):
    """The evaluator reads every unclaimed input on the node's own datum (the clean run) instead of its draw."""
    def own(a):
        return replace(a, other=a.datum, unclaimed=None if a.unclaimed is None else dict.fromkeys(a.unclaimed, a.datum))

    _broken_evaluator(monkeypatch, data=own)


@pytest.fixture
def ignores_claims(monkeypatch):
    """The evaluator treats every claimed input of the logits as unclaimed."""
    _broken_evaluator(monkeypatch, trees=lambda root: replace(root, inputs=()))


@pytest.fixture
def qk_sides_swapped(monkeypatch):
    """The main and resampled sides of every query-key split are exchanged."""
    def swap(inp):
        m = inp.qk_mask
        return inp if m is None else replace(inp, qk_mask=QKMask(f"not {m.name}", lambda q, k, m=m: ~m.fn(q, k)))

    _broken_evaluator(monkeypatch, trees=lambda root: _map_tree(root, swap))


@pytest.fixture
def qk_masks_ignored(monkeypatch):
    _broken_evaluator(monkeypatch, trees=lambda root: _map_tree(root, lambda inp: replace(inp, qk_mask=None)))


@pytest.fixture
def uniforms_by_batch_row(monkeypatch):
    """Draws use the uniforms of the batch row instead of the datum."""
    agreeing = sampling.Sampler.agreeing

    def broken(self, feature, data, path, purpose, by=None):
        return agreeing(self, feature, data, path, purpose, torch.arange(data.shape[0]) if by is None else by)

    monkeypatch.setattr(sampling.Sampler, "agreeing", broken)


@pytest.fixture
def uniforms_by_call_order(monkeypatch):
    """Each node's uniforms are seeded by how many tables were drawn before it, not by its identity."""
    def uniform(self, path, purpose, width):
        key = (path, purpose, width)
        if key not in self._uniforms:
            gen = torch.Generator().manual_seed(self.seed + len(self._uniforms))
            self._uniforms[key] = torch.rand(self.n, width, generator=gen)
        return self._uniforms[key]

    monkeypatch.setattr(sampling.Sampler, "uniform", uniform)



@pytest.fixture
def pool_ignored(monkeypatch):
    """The sampler draws from the whole dataset whatever pool size it is given."""
    init = sampling.Sampler.__init__

    def broken(self, tokens, *args, pool_size=None, **kwargs):
        init(self, tokens, *args, pool_size=None, **kwargs)

    monkeypatch.setattr(sampling.Sampler, "__init__", broken)

# --- each contract: holds, and fails on its broken engine ---------------------------------------------------

def fails(fn, *needles: str) -> str:
    with pytest.raises(AssertionError) as err:
        fn()
    text = str(err.value)
    assert "reproducer:" in text and all(n in text for n in needles), text
    return text


def test_full_claim_is_clean(model, tokens, request):
    inv.full_claim_is_clean(model, tokens)
    request.getfixturevalue("ignores_claims")
    fails(lambda: inv.full_claim_is_clean(model, tokens), "full claim", "model = ModelSpec(")


@pytest.mark.parametrize("independent", [False, True])
def test_empty_claim_is_baseline(model, tokens, request, independent):
    options = SamplingOptions(independent=independent)
    inv.empty_claim_is_baseline(model, tokens, options=options)
    request.getfixturevalue("reads_clean_for_resampled")
    fails(lambda: inv.empty_claim_is_baseline(model, tokens, options=options), "tokens = torch.tensor(")


def test_engine_equals_reference(model, tokens, request):
    inv.engine_equals_reference(model, claim(), tokens)
    request.getfixturevalue("qk_sides_swapped")
    text = fails(lambda: inv.engine_equals_reference(model, claim(), tokens), "naive reference")
    assert "add_path(g, 'embed', ('1.0', 'q'))" in text and "qk_mask=within(1)" in text
    assert "feature=feature(TokenMod(mod=2, at=0))" in text


def test_draws_agree_with_parents(model, tokens, request):
    inv.draws_agree_with_parents(model, claim(), tokens)
    request.getfixturevalue("sampler_ignores_features")
    fails(lambda: inv.draws_agree_with_parents(model, claim(), tokens), "disagree with their parent")



def test_draws_outside_the_pool_are_caught(model, tokens, request):
    """Each draw is checked on its own (in the pool, or the parent's datum): a check of the whole table passed
    vacuously where the parent is read on every datum (the mutation run found it)."""
    options = SamplingOptions(pool=3)
    inv.draws_agree_with_parents(model, claim(), tokens, options=options)
    request.getfixturevalue("pool_ignored")
    fails(lambda: inv.draws_agree_with_parents(model, claim(), tokens, options=options), "outside the pool")

def test_draws_independent_of_batching(model, tokens, request):
    inv.draws_independent_of_batching(model, claim(), tokens, batch_size=3)
    request.getfixturevalue("uniforms_by_batch_row")
    fails(lambda: inv.draws_independent_of_batching(model, claim(), tokens, batch_size=3), "batches of 3")


def test_adding_paths_keeps_other_draws(model, tokens, request):
    small = claim()
    big = claim()
    add_path(big, "embed", ("0.0", "q"), ("1.0", "k"))
    add_path(big, "embed", "mlp.0", ("1.1", "v"), "logits")
    inv.adding_paths_keeps_other_draws(model, small, big, tokens)
    request.getfixturevalue("uniforms_by_call_order")
    fails(lambda: inv.adding_paths_keeps_other_draws(model, small, big, tokens), "adding paths changed")


@pytest.mark.parametrize("component", [Head(1, 1), Head(0, 0), Mlp(0)], ids=str)
def test_scrubbing_a_component_is_activation_patching(model, tokens, request, component):
    inv.scrubbing_a_component_is_activation_patching(model, component, tokens)
    request.getfixturevalue("reads_clean_for_resampled")
    fails(lambda: inv.scrubbing_a_component_is_activation_patching(model, component, tokens), "activation patching")


def test_trivial_masks_are_exact(model, tokens, request):
    inv.trivial_masks_are_exact(model, claim(), tokens)
    request.getfixturevalue("qk_masks_ignored")
    fails(lambda: inv.trivial_masks_are_exact(model, claim(), tokens), "all-false query-key mask")


def test_every_feature_resamples(model, tokens):
    rates = inv.every_feature_resamples(model, claim(), tokens)
    assert set(rates) == {"0.1"} and rates["0.1"] < 1
    g = claim()
    g.nodes["0.1"]["feature"] = Feature("whole row", lambda t: t)  # no two random rows are equal
    fails(lambda: inv.every_feature_resamples(model, g, tokens), "'0.1' (feature 'whole row')", "never tested")


def test_functions_of_the_tokens(tokens):
    purity.feature_is_a_function_of_tokens(feature(TokenMod(3, 1)), tokens)
    purity.positions_are_a_function_of_tokens(lambda t: t < 5, tokens)
    purity.qk_mask_is_a_function_of_positions(qk_mask(KeyMod(2)), 8)
    row = Feature("row index", lambda t: torch.arange(t.shape[0])[:, None])
    text = fails(lambda: purity.feature_is_a_function_of_tokens(row, tokens), "'row index'", "permutation")
    assert "Feature('row index', <test_functions_of_the_tokens.<locals>.<lambda> from" in text
    fails(lambda: purity.positions_are_a_function_of_tokens(lambda t: t == t[:1], tokens), "positions function")
    last = QKMask("last key", lambda q, k: k == q.max())
    fails(lambda: purity.qk_mask_is_a_function_of_positions(last, 8), "'last key'", "sequences of 1")


def test_the_full_graph_copy_checks_pass_on_a_float32_model(tokens):
    """A float32 model is compared through its float64 copy, at the same tolerance."""
    model = tiny_model(n_heads=2, positions="rotary", norm="RMS", mlp="gated", n_kv_heads=1)
    g = full_graph(model)
    inv.engine_equals_reference(model, g, tokens[:3, :6])
    inv.scrubbing_a_component_is_activation_patching(model, Head(1, 0), tokens)

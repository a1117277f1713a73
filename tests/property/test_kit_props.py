"""Property tests of the engine's contracts through the public kit: random models of every architecture, random
claims (features, positions masks, query-key masks, component copies), random draw settings, and the
``scrub.testing.invariants`` that each raise a reproducer when broken."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scrub.claims.sites import Head, Mlp
from scrub.engine.treeify import Unit
from scrub.testing import invariants as inv
from scrub.testing import strategies as kit

SETTINGS = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def case(data, *, max_layers: int = 2, max_edges: int = 8):
    """A model, sampling options, a claim the options can evaluate, and a token batch."""
    model = data.draw(kit.models(max_layers=max_layers), label="model")
    options = data.draw(kit.sampling_options(pools=(None, 3)), label="options")
    claim = data.draw(kit.claims(model, per_position=options.unit == Unit.NODE, max_edges=max_edges), label="claim")
    tokens = data.draw(kit.token_batches(model, min_rows=3), label="tokens")
    return model, options, claim, tokens, data.draw(st.integers(0, 2**32), label="seed")


@SETTINGS
@given(st.data())
def test_full_and_empty_claims(data):
    model, options, _, tokens, seed = case(data, max_layers=3)
    inv.full_claim_is_clean(model, tokens, seed=seed, options=options)
    inv.empty_claim_is_baseline(model, tokens, seed=seed, options=options)


@SETTINGS
@given(st.data())
def test_engine_equals_the_naive_reference(data):
    model, options, claim, tokens, seed = case(data)
    inv.engine_equals_reference(model, claim, tokens, seed=seed, options=options)


@SETTINGS
@given(st.data())
def test_draws_agree_and_do_not_depend_on_batching(data):
    model, options, claim, tokens, seed = case(data, max_layers=3, max_edges=16)
    inv.draws_agree_with_parents(model, claim, tokens, seed=seed, options=options)
    inv.draws_independent_of_batching(model, claim, tokens, seed=seed, options=options,
                                      batch_size=data.draw(st.integers(2, 3)))


@SETTINGS
@given(st.data())
def test_adding_paths_keeps_other_draws(data):
    model, options, claim, tokens, seed = case(data, max_layers=3, max_edges=12)
    bigger = data.draw(kit.extensions(model, claim), label="bigger")
    inv.adding_paths_keeps_other_draws(model, claim, bigger, tokens, seed=seed, options=options)


@SETTINGS
@given(st.data())
def test_resampling_a_component_is_activation_patching(data):
    model = data.draw(kit.models(max_layers=2))
    parts = [Head(layer, h) for layer in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    parts += [] if model.cfg.attn_only else [Mlp(layer) for layer in range(model.cfg.n_layers)]
    component = data.draw(st.sampled_from(parts), label="component")
    tokens = data.draw(kit.token_batches(model))
    inv.scrubbing_a_component_is_activation_patching(model, component, tokens)


@SETTINGS
@given(st.data())
def test_trivial_query_key_masks(data):
    model, options, claim, tokens, seed = case(data)
    inv.trivial_masks_are_exact(model, claim, tokens, seed=seed, options=options, limit=2)

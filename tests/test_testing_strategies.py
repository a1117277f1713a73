"""The kit's strategies: every claim they draw is one ``validate`` accepts, on models of every supported
architecture (counted), and they shrink to small readable examples."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st

from scrub.claims.hypothesis import check_paths, validate
from scrub.engine.compute import check_supported
from scrub.engine.treeify import Unit, treeify
from scrub.testing import strategies as kit
from scrub.testing.models import MlpKind, ModelSpec, Norm, Positions, architectures, spec_of

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(st.data())
def test_claims_validate_on_every_kind_of_model(data):
    model = data.draw(kit.models(max_layers=2))
    unit = data.draw(st.sampled_from(list(Unit)))
    graph = data.draw(kit.claims(model, per_position=unit == Unit.NODE, max_copies=2))
    claim = validate(graph, model)
    treeify(claim, unit)
    tokens = data.draw(kit.token_batches(model))
    assert tokens.dtype.is_floating_point is False and int(tokens.max()) < model.cfg.d_vocab
    for node in claim.nodes:
        if node.feature is not None:
            node.feature.codes(tokens)
    for edge in claim.edges:
        if edge.positions is not None:
            edge.positions(tokens)


def test_model_specs_cover_every_architecture():
    """200 drawn specs hit every value of every architecture axis; each spec builds a model scrub supports."""
    seen: dict[str, set] = {"positions": set(), "norm": set(), "mlp": set(), "parallel": set(), "gqa": set(),
                            "partial rotary": set(), "layers": set()}

    @settings(max_examples=200, deadline=None, derandomize=True, database=None)
    @given(kit.model_specs())
    def collect(spec: ModelSpec):
        for axis, value in (("positions", spec.positions), ("norm", spec.norm), ("mlp", spec.mlp),
                            ("parallel", spec.parallel), ("gqa", spec.n_kv_heads is not None),
                            ("partial rotary", spec.rotary_dim is not None), ("layers", spec.n_layers)):
            seen[axis].add(value)

    collect()
    assert seen["positions"] == set(Positions) and seen["norm"] == set(Norm) and seen["mlp"] == set(MlpKind)
    assert seen["parallel"] == seen["gqa"] == seen["partial rotary"] == {False, True}
    assert seen["layers"] == {1, 2, 3}


@pytest.mark.parametrize("spec", architectures(), ids=repr)
def test_fixed_architectures_build_and_are_supported(spec):
    model = spec.build()
    check_supported(model)
    assert spec_of(model) == spec


FIND = settings(database=None, derandomize=True)  # no replayed examples: shrinking starts from the same place


def test_strategies_shrink_to_small_readable_examples():
    model = ModelSpec(n_layers=2, n_heads=2).build()
    spec = find(kit.model_specs(), lambda s: s.n_layers >= 2 and s.mlp != MlpKind.NONE, settings=FIND)
    # the first value of every other axis: one head, standard positions, LN, no GQA, seed 0
    assert repr(spec) == "ModelSpec(n_heads=1, positions='standard', mlp='plain')"
    one = find(kit.claims(model), lambda g: g.number_of_edges() >= 1, settings=FIND)
    (edge,) = one.edges(data=True)  # the full graph's first edge, without attributes
    assert edge[1] == "logits" and edge[2] == {} and not any(one.nodes[n] for n in one.nodes)
    masked = find(kit.claims(model), lambda g: any("qk_mask" in a for _, _, a in g.edges(data=True)), settings=FIND)
    assert masked.number_of_edges() <= 3  # e.g. pos -> 0.1 (q, masked) -> logits
    check_paths(validate(masked, model))
    tokens = find(kit.token_batches(model), lambda t: t.shape[0] >= 3, settings=FIND)
    assert tokens.tolist() == [[0, 0], [0, 0], [0, 0]]

"""Features and the conditional sampler (``scrub.engine.sampling``): exact small cases."""

from __future__ import annotations

import torch

from scrub.claims.features import (
    Feature,
    after_earlier_occurrence,
    as_feature,
    constant,
    current_token,
    is_repeat,
    previous_token,
    repeat_count,
)
from scrub.engine.sampling import Sampler, draw, group_items


def test_library_features_on_a_known_sequence():
    tokens = torch.tensor([[5, 6, 5, 7, 6]])
    assert current_token(2).codes(tokens).tolist() == [[5]]
    assert previous_token(slice(1, 3)).codes(tokens).tolist() == [[5, 6]]
    assert is_repeat().codes(tokens).tolist() == [[0, 0, 1, 0, 1]]
    assert repeat_count(2).codes(tokens).tolist() == [[1]]
    assert constant().codes(tokens).tolist() == [[0]]
    # key positions right after a token that recurs: 5 recurs (pos 0, 2), 6 recurs (pos 1, 4)
    assert after_earlier_occurrence(tokens).tolist() == [[False, True, True, True, False]]


def test_as_feature_accepts_callables_and_rejects_other_things():
    def parity(tokens):
        return tokens[:, :1] % 2

    assert as_feature(parity).name == "parity"
    assert as_feature(None) is None
    try:
        as_feature(3)
    except TypeError as err:
        assert "must be a scrub.claims.features.Feature" in str(err)
    else:
        raise AssertionError("as_feature(3) should fail")


def _draw(codes, items, uniform, *, allow_self=False, pool=None, per_position=False):
    pool = torch.arange(codes.shape[0]) if pool is None else pool
    return draw(group_items(codes, pool, per_position=per_position), items, uniform, allow_self=allow_self)


def test_sampler_never_returns_the_parent_when_another_agrees():
    codes = torch.tensor([[0], [0], [1], [2]])
    out = _draw(codes, torch.arange(4), torch.full((4,), 0.5))
    assert out.datum[:2].tolist() == [1, 0]  # the only other member of class 0
    assert out.datum[2:].tolist() == [2, 3]  # singletons can only draw themselves...
    assert out.forced_self.tolist() == [False, False, True, True]  # ...and are reported


def test_sampler_is_uniform_over_agreeing_data():
    codes = torch.tensor([[0]] * 4 + [[1]])  # rows 0-3 agree, row 4 does not
    uniform = (torch.arange(4000) + 0.5) / 4000  # evenly spread uniforms
    out = _draw(codes, torch.zeros(4000, dtype=torch.long), uniform, allow_self=True)
    freq = torch.bincount(out.datum, minlength=5).float() / 4000
    assert freq.tolist() == [0.25, 0.25, 0.25, 0.25, 0.0]
    others = _draw(codes, torch.zeros(3000, dtype=torch.long), (torch.arange(3000) + 0.5) / 3000)
    assert torch.bincount(others.datum, minlength=5).tolist() == [0, 1000, 1000, 1000, 0]


def test_draws_come_from_the_pool_only():
    codes = torch.zeros(10, 1, dtype=torch.long)  # everything agrees
    pool = torch.tensor([2, 7])
    uniform = torch.rand(10, generator=torch.Generator().manual_seed(0))
    out = _draw(codes, torch.arange(10), uniform, pool=pool)
    assert set(out.datum.tolist()) <= {2, 7}
    assert out.datum[2] == 7 and out.datum[7] == 2  # a pool member draws the other one


def test_per_position_draws_agree_at_their_position():
    tokens = torch.tensor([[1, 2, 3], [1, 5, 3], [4, 2, 6]])
    sampler = Sampler(tokens, seed=0)
    d = sampler.agreeing(current_token(per_position=True), torch.arange(3), ("node", "x"), "feature")
    assert d.datum.shape == (3, 3)
    assert d.datum[:, 0].tolist() == [1, 0, 2]  # position 0: examples 0 and 1 share token 1; 2 is alone
    assert d.datum[:, 1].tolist() == [2, 1, 0]  # position 1: 0 and 2 share token 2
    assert d.datum[:, 2].tolist() == [1, 0, 2]  # position 2: 0 and 1 share token 3
    assert d.forced_self.tolist() == [[False, False, False], [False, True, False], [True, False, True]]


def test_feature_row_count_is_checked():
    bad = Feature("bad", lambda tokens: tokens[:1])
    try:
        bad.codes(torch.zeros(3, 4, dtype=torch.long))
    except ValueError as err:
        assert "returned 1 rows for 3 sequences" in str(err)
    else:
        raise AssertionError


def test_feature_factories_must_be_called_and_codes_must_be_integers():
    import pytest

    from scrub.claims.features import FeatureError

    with pytest.raises(TypeError, match=r"feature=current_token is a function that makes a feature.*current_token\(\)"):
        as_feature(current_token)
    tokens = torch.tensor([[1, 2], [3, 4]])
    with pytest.raises(FeatureError, match="returned float32 codes"):
        Feature("mean", lambda t: t.float().mean(1)).codes(tokens)
    with pytest.raises(FeatureError, match="returned a Python int"):
        Feature("three", lambda t: 3).codes(tokens)
    with pytest.raises(FeatureError, match="failed on tokens of shape \\[2, 2\\]: IndexError"):
        Feature("far", lambda t: t[:, 9]).codes(tokens)
    assert Feature("odd", lambda t: t[:, 0] % 2 == 1).codes(tokens).tolist() == [[1], [1]]  # bool codes are classes

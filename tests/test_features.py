"""Features and the conditional sampler: exact small cases."""

from __future__ import annotations

import torch

from scrub.features import (
    Feature, after_earlier_occurrence, as_feature, constant, current_token, is_repeat, previous_token,
    repeat_count, sample_agreeing, sample_other,
)


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
        assert "must be a scrub.features.Feature" in str(err)
    else:
        raise AssertionError("as_feature(3) should fail")


def test_sampler_never_returns_the_parent_when_another_agrees():
    codes = torch.tensor([[0], [0], [1], [2]])
    parent = torch.arange(4)
    draw = sample_agreeing(codes, parent, torch.Generator().manual_seed(0), allow_self=False)
    assert draw.index[:2].tolist() == [1, 0]  # the only other member of class 0
    assert draw.index[2:].tolist() == [2, 3]  # singletons can only draw themselves...
    assert draw.forced_self.tolist() == [False, False, True, True]  # ...and are reported


def test_sampler_is_uniform_over_agreeing_data():
    codes = torch.tensor([[0]] * 4 + [[1]])  # rows 0-3 agree, row 4 does not
    gen = torch.Generator().manual_seed(1)
    parent = torch.zeros(5, dtype=torch.long)
    draws = torch.cat([sample_agreeing(codes, parent, gen, allow_self=True).index for _ in range(2000)])
    freq = torch.bincount(draws, minlength=5).float() / draws.numel()
    assert freq[4] == 0
    assert torch.allclose(freq[:4], torch.full((4,), 0.25), atol=0.02)


def test_sample_other_excludes_self_unless_allowed():
    parent = torch.arange(6)
    for seed in range(20):
        draw = sample_other(parent, torch.Generator().manual_seed(seed), allow_self=False)
        assert bool((draw.index != parent).all())
    single = sample_other(torch.zeros(1, dtype=torch.long), torch.Generator(), allow_self=False)
    assert single.forced_self.tolist() == [True]


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

    from scrub.features import FeatureError

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

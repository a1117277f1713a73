"""Losses, KL divergence, loss recovered, bootstrap intervals and the token-level view on hand-computable numbers."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from scrub.metrics import (
    ExampleLosses,
    bootstrap_mean,
    bootstrap_recovered,
    example_losses,
    gap,
    recovered,
    recovery_warnings,
    score_batch,
    token_kl,
    token_losses,
    token_view,
)


def test_token_losses_use_the_next_token():
    logits = torch.zeros(1, 3, 4)
    logits[0, 0, 2] = math.log(3.0)  # p(2) = 3/6 at position 0
    tokens = torch.tensor([[0, 2, 1]])
    losses = token_losses(logits, tokens)
    assert losses.shape == (1, 2)
    assert losses[0].tolist() == pytest.approx([math.log(2.0), math.log(4.0)])


def test_example_losses_are_token_weighted():
    losses = torch.tensor([[1.0, 3.0], [2.0, 4.0]])
    mask = torch.tensor([[True, True], [False, True]])
    ex = example_losses(losses, mask)
    assert ex.total.tolist() == [4.0, 4.0] and ex.count.tolist() == [2.0, 1.0]
    assert ex.mean() == pytest.approx(8.0 / 3.0)
    assert ex.per_example().tolist() == [2.0, 4.0]


def test_recovered_endpoints():
    assert recovered(1.0, 3.0, 1.0) == 1.0
    assert recovered(1.0, 3.0, 3.0) == 0.0
    assert recovered(1.0, 3.0, 2.5) == 0.25


def test_bootstrap_interval_brackets_the_estimate_and_shrinks_with_more_data():
    gen = torch.Generator().manual_seed(0)

    def losses(n, mean):
        return ExampleLosses(mean + 0.3 * torch.randn(n, generator=gen), torch.ones(n))

    small = bootstrap_recovered(losses(20, 1.0), losses(20, 3.0), losses(20, 2.0), seed=1)
    large = bootstrap_recovered(losses(2000, 1.0), losses(2000, 3.0), losses(2000, 2.0), seed=1)
    assert small.low < 0.5 < small.high
    assert large.low < 0.5 < large.high
    assert (large.high - large.low) < (small.high - small.low) / 4


def test_bootstrap_of_constant_is_degenerate():
    interval = bootstrap_mean(torch.full((10,), 2.0))
    assert interval.low == interval.high == 2.0


def test_recovered_on_floats_never_divides_by_zero():
    assert math.isnan(recovered(2.0, 2.0, 2.0))  # 0/0
    assert recovered(2.0, 2.0, 3.0) == -math.inf and recovered(2.0, 2.0, 1.0) == math.inf
    per = recovered(torch.tensor([2.0, 1.0]), torch.tensor([2.0, 3.0]), torch.tensor([2.0, 2.0]))
    assert per.isnan()[0] and per[1] == 0.5  # tensors divide the same way


def losses(values, counts=None):
    values = torch.tensor(values, dtype=torch.float64)
    counts = torch.ones_like(values) if counts is None else torch.tensor(counts, dtype=torch.float64)
    return ExampleLosses(values * counts, counts)


def test_gap_and_its_standard_error():
    clean, base = losses([1.0, 1.0, 1.0, 1.0]), losses([1.5, 2.5, 2.0, 2.0])
    diff, se = gap(clean, base)
    d = torch.tensor([0.5, 1.5, 1.0, 1.0], dtype=torch.float64)
    assert diff == pytest.approx(1.0)
    assert se == pytest.approx(float(d.std() / math.sqrt(4)))  # equal counts: the standard error of the mean
    assert gap(losses([1.0]), losses([2.0])) == (1.0, math.inf)
    weighted, _ = gap(losses([1.0, 1.0], [1, 3]), losses([2.0, 1.0], [1, 3]))
    assert weighted == pytest.approx(0.25)  # token-weighted, like ExampleLosses.mean


def test_recovery_warnings():
    clean = losses([1.0, 1.1, 0.9, 1.0])
    assert recovery_warnings(clean, losses([3.0, 3.1, 2.9, 3.0])) == []  # clearly worse: no warning
    below = recovery_warnings(clean, losses([0.9, 1.0, 0.8, 0.9]))
    assert len(below) == 1 and below[0].startswith("the baseline loss is not above the clean loss")
    same = recovery_warnings(clean, clean)
    assert len(same) == 1 and "baseline - clean = 0" in same[0]
    noisy = recovery_warnings(clean, losses([1.0, 2.1, 0.0, 1.3]))
    assert len(noisy) == 1 and "within 2 standard errors" in noisy[0]


def test_bootstrap_in_chunks_and_bad_arguments(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    clean = ExampleLosses(1.0 + 0.3 * torch.randn(50, generator=gen), torch.ones(50))
    base = ExampleLosses(3.0 + 0.3 * torch.randn(50, generator=gen), torch.ones(50))
    scrub = ExampleLosses(2.0 + 0.3 * torch.randn(50, generator=gen), torch.ones(50))
    whole = bootstrap_recovered(clean, base, scrub, n_resamples=400, seed=1)
    monkeypatch.setattr("scrub.metrics.BOOTSTRAP_CHUNK", 50 * 7)  # 7 resamples per chunk
    chunked = bootstrap_recovered(clean, base, scrub, n_resamples=400, seed=1)
    assert chunked.low < 0.5 < chunked.high
    assert abs(chunked.low - whole.low) < 0.05 and abs(chunked.high - whole.high) < 0.05
    assert bootstrap_mean(torch.full((10,), 2.0), n_resamples=3).low == 2.0
    with pytest.raises(ValueError, match="at least one example"):
        bootstrap_recovered(ExampleLosses(torch.zeros(0), torch.zeros(0)), base, scrub)
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_mean(torch.ones(4), n_resamples=0)


# --- KL divergence and the token-level view (issue #11) -----------------------------------------------------

def test_token_kl_is_zero_for_equal_logits():
    logits = torch.randn(3, 7, 11, generator=torch.Generator().manual_seed(0)) * 5
    kl = token_kl(logits, logits.clone())
    assert kl.shape == (3, 6)
    assert bool((kl == 0).all())


def test_token_kl_on_a_two_token_vocabulary():
    clean = torch.zeros(1, 2, 2)  # p = (1/2, 1/2) at position 0
    other = torch.zeros(1, 2, 2)
    other[0, 0, 0] = math.log(3.0)  # q = (3/4, 1/4)
    other[0, 1, 0] = 100.0  # the last position predicts nothing: dropped
    kl = token_kl(clean, other)
    assert kl.shape == (1, 1)
    expected = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)  # = ln(4/3) / 2
    assert float(kl[0, 0]) == pytest.approx(expected, rel=1e-6)
    assert float(token_kl(other, clean)[0, 0]) == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5), rel=1e-6)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(0.1, 30.0))
def test_token_kl_is_never_negative(seed, scale):
    gen = torch.Generator().manual_seed(seed)
    clean, other = (torch.randn(2, 5, 9, generator=gen) * scale for _ in range(2))
    other[0, 2] = clean[0, 2]  # one position with the same logits
    kl = token_kl(clean, other)
    assert bool((kl >= 0).all()) and bool(torch.isfinite(kl).all()) and float(kl[0, 2]) == 0.0


def test_score_batch_kl_has_zero_clean_and_masked_token_deltas():
    gen = torch.Generator().manual_seed(1)
    clean, base, scrubbed = (torch.randn(2, 4, 6, generator=gen) for _ in range(3))
    tokens = torch.randint(0, 6, (2, 4), generator=gen)
    mask = torch.tensor([[True, False, True], [False, False, True]])
    scores = score_batch("kl", tokens, mask, clean, base, scrubbed)
    assert scores.clean.total.tolist() == [0.0, 0.0] and scores.clean.count.tolist() == [2.0, 1.0]
    assert torch.equal(scores.token_delta, token_kl(clean, scrubbed)[mask])
    loss = score_batch("loss", tokens, mask, clean, base, scrubbed)
    assert torch.allclose(loss.token_delta, (token_losses(scrubbed, tokens) - token_losses(clean, tokens))[mask])
    with pytest.raises(ValueError, match="metric must be one of 'loss', 'kl', got 'nll'"):
        score_batch("nll", tokens, mask, clean, base, scrubbed)  # type: ignore[arg-type]


def test_token_view_on_hand_numbers():
    view = token_view(torch.tensor([-2.0, 1.0, 1.0, 0.0, 5.0]))
    assert view.mean_delta == pytest.approx(1.0) and view.mean_abs_delta == pytest.approx(1.8)
    assert (view.p25, view.p50, view.p75) == (0.0, 1.0, 1.0)
    assert view.p10 == pytest.approx(-1.2) and view.p90 == pytest.approx(3.4)
    assert view.share_positive == pytest.approx(0.6) and view.n_tokens == 5
    assert math.isnan(token_view(torch.zeros(0)).mean_delta) and token_view(torch.zeros(0)).n_tokens == 0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=200))
def test_token_view_mean_abs_bounds_the_mean(values):
    delta = torch.tensor(values, dtype=torch.float64)
    view = token_view(delta)
    assert view.mean_abs_delta >= abs(view.mean_delta) - 1e-9 * (1 + view.mean_abs_delta)
    assert view.p10 <= view.p25 <= view.p50 <= view.p75 <= view.p90
    assert min(values) <= view.p10 and view.p90 <= max(values)
    expected = torch.quantile(delta, torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9], dtype=torch.float64)).tolist()
    assert [view.p10, view.p25, view.p50, view.p75, view.p90] == pytest.approx(expected, rel=1e-9, abs=1e-6)
    assert 0 <= view.share_positive <= 1 and view.n_tokens == len(values)

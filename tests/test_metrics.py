"""Losses, loss recovered and bootstrap intervals on hand-computable numbers."""

from __future__ import annotations

import math

import pytest
import torch

from scrub.metrics import ExampleLosses, bootstrap_mean, bootstrap_recovered, example_losses, recovered, token_losses


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

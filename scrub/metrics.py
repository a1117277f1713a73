"""Losses, loss recovered and bootstrap confidence intervals: pure functions on tensors.

Convention: position t of a sequence predicts token t+1, so per-token losses have seq-1 columns and a
position mask selects prediction positions. Aggregate losses are token-weighted means over the scored
positions; the bootstrap resamples whole examples.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def token_losses(logits: Tensor, tokens: Tensor) -> Tensor:
    """Next-token cross-entropy against ``tokens`` (the reference labels): [batch, seq-1]."""
    logprobs = logits[:, :-1].log_softmax(-1)  # [batch, seq-1, d_vocab]
    return -logprobs.gather(-1, tokens[:, 1:, None])[..., 0]  # [batch, seq-1]


@dataclass(frozen=True)
class ExampleLosses:
    """Per-example sums of scored token losses and their counts."""

    total: Tensor  # [n_examples]
    count: Tensor  # [n_examples]

    def mean(self) -> float:
        return float(self.total.sum() / self.count.sum().clamp(min=1))

    def per_example(self) -> Tensor:
        return self.total / self.count.clamp(min=1)  # [n_examples]


def example_losses(losses: Tensor, mask: Tensor) -> ExampleLosses:
    """Sum scored losses per example. losses, mask: [batch, seq-1]."""
    m = mask.to(losses.dtype)
    return ExampleLosses((losses * m).sum(1), m.sum(1))


def recovered(clean: float | Tensor, baseline: float | Tensor, scrubbed: float | Tensor):
    """Loss recovered = (L_baseline - L_scrubbed) / (L_baseline - L_clean): 1 = as good as clean, 0 = baseline."""
    return (baseline - scrubbed) / (baseline - clean)


@dataclass(frozen=True)
class Interval:
    low: float
    high: float


def bootstrap_recovered(clean: ExampleLosses, baseline: ExampleLosses, scrubbed: ExampleLosses, *,
                        n_resamples: int = 1000, level: float = 0.95, seed: int = 0) -> Interval:
    """Percentile bootstrap interval of loss recovered, resampling examples with replacement."""
    n = clean.total.shape[0]
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n, (n_resamples, n), generator=gen)  # [resample, n]
    count = clean.count[idx].sum(1)  # [resample]
    lc, lb, ls = (x.total[idx].sum(1) / count for x in (clean, baseline, scrubbed))  # [resample] x3
    ratios = recovered(lc, lb, ls)
    ratios = ratios[torch.isfinite(ratios)]
    if ratios.numel() == 0:
        return Interval(float("nan"), float("nan"))
    alpha = (1 - level) / 2
    q = torch.quantile(ratios.double(), torch.tensor([alpha, 1 - alpha], dtype=torch.float64))
    return Interval(float(q[0]), float(q[1]))


def bootstrap_mean(values: Tensor, *, n_resamples: int = 1000, level: float = 0.95, seed: int = 0) -> Interval:
    """Percentile bootstrap interval of a mean over examples."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, values.shape[0], (n_resamples, values.shape[0]), generator=gen)
    means = values[idx].double().mean(1)
    alpha = (1 - level) / 2
    q = torch.quantile(means, torch.tensor([alpha, 1 - alpha], dtype=torch.float64))
    return Interval(float(q[0]), float(q[1]))

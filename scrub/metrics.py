"""Losses, loss recovered and bootstrap confidence intervals: pure functions on tensors.

Convention: position t of a sequence predicts token t+1, so per-token losses have seq-1 columns and a
position mask selects prediction positions. Aggregate losses are token-weighted means over the scored
positions; the bootstrap resamples whole examples.

Loss recovered is only meaningful when the baseline is clearly worse than the clean run: ``gap`` gives the
baseline − clean loss with its standard error, and ``recovery_warnings`` says in words when it is not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

GAP_STANDARD_ERRORS = 2.0  # warn when baseline − clean is within this many standard errors of zero


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
    """Loss recovered = (L_baseline - L_scrubbed) / (L_baseline - L_clean): 1 = as good as clean, 0 = baseline.

    Where the baseline equals the clean loss the ratio is undefined: NaN for 0/0 and ±inf otherwise, for
    plain floats as for tensors (IEEE division, never ``ZeroDivisionError``)."""
    if any(isinstance(x, Tensor) for x in (clean, baseline, scrubbed)):
        return (baseline - scrubbed) / (baseline - clean)
    num, den = float(baseline) - float(scrubbed), float(baseline) - float(clean)
    if den == 0:
        return math.nan if num == 0 or math.isnan(num) else math.copysign(math.inf, num)
    return num / den


def gap(clean: ExampleLosses, baseline: ExampleLosses) -> tuple[float, float]:
    """Baseline − clean loss (token-weighted, as ``ExampleLosses.mean``) and its standard error over examples
    (ratio estimator, delta method; inf for fewer than two examples)."""
    n = clean.total.shape[0]
    tokens = clean.count.double().sum()
    diff = baseline.total.double() - clean.total.double()  # [n_examples] summed per-token differences
    if n == 0 or float(tokens) == 0:
        return math.nan, math.inf
    mean = diff.sum() / tokens
    if n < 2:
        return float(mean), math.inf
    resid = diff - mean * clean.count.double()  # [n_examples]
    return float(mean), float((resid.square().sum() * n / (n - 1)).sqrt() / tokens)


def recovery_warnings(clean: ExampleLosses, baseline: ExampleLosses, *,
                      standard_errors: float = GAP_STANDARD_ERRORS) -> list[str]:
    """Why loss recovered may not mean what it says, in words: the baseline is not worse than the clean run,
    or only by less than ``standard_errors`` standard errors (then loss recovered is mostly noise)."""
    diff, se = gap(clean, baseline)
    if not math.isfinite(diff):
        return []
    if diff <= 0:
        return [(f"the baseline loss is not above the clean loss (baseline - clean = {diff:.4g}): the baseline does "
                 f"not hurt the model on these data, so loss recovered does not measure how much of its behaviour the "
                 f"claim explains; use a baseline that resamples more (the default empty hypothesis resamples "
                 f"everything) or other data")]
    if diff < standard_errors * se:
        return [(f"baseline - clean loss = {diff:.4g} is within {standard_errors:g} standard errors ({se:.2g}) of "
                 f"zero: loss recovered divides by a difference that is mostly noise; use more examples or a baseline "
                 f"that resamples more")]
    return []


@dataclass(frozen=True)
class Interval:
    low: float
    high: float


def bootstrap_recovered(clean: ExampleLosses, baseline: ExampleLosses, scrubbed: ExampleLosses, *,
                        n_resamples: int = 1000, level: float = 0.95, seed: int = 0) -> Interval:
    """Percentile bootstrap interval of loss recovered, resampling examples with replacement (in chunks of
    about ``BOOTSTRAP_CHUNK`` indices, so memory stays bounded for many examples)."""
    n = _check_resampling(clean.total.shape[0], n_resamples, level)
    gen = torch.Generator().manual_seed(seed)
    parts = []
    for rows in _chunks(n_resamples, n):
        idx = torch.randint(0, n, (rows, n), generator=gen)  # [chunk, n]
        count = clean.count[idx].sum(1)  # [chunk]
        lc, lb, ls = (x.total[idx].sum(1) / count for x in (clean, baseline, scrubbed))  # [chunk] x3
        parts.append(recovered(lc, lb, ls))
    ratios = torch.cat(parts)  # [resample]
    ratios = ratios[torch.isfinite(ratios)]
    if ratios.numel() == 0:
        return Interval(float("nan"), float("nan"))
    alpha = (1 - level) / 2
    q = torch.quantile(ratios.double(), torch.tensor([alpha, 1 - alpha], dtype=torch.float64))
    return Interval(float(q[0]), float(q[1]))


def bootstrap_mean(values: Tensor, *, n_resamples: int = 1000, level: float = 0.95, seed: int = 0) -> Interval:
    """Percentile bootstrap interval of a mean over examples."""
    n = _check_resampling(values.shape[0], n_resamples, level)
    gen = torch.Generator().manual_seed(seed)
    means = torch.cat([values[torch.randint(0, n, (rows, n), generator=gen)].double().mean(1)
                       for rows in _chunks(n_resamples, n)])  # [resample]
    alpha = (1 - level) / 2
    q = torch.quantile(means, torch.tensor([alpha, 1 - alpha], dtype=torch.float64))
    return Interval(float(q[0]), float(q[1]))


BOOTSTRAP_CHUNK = 1 << 24  # resampled indices per chunk (128 MB of int64)


def _check_resampling(n: int, n_resamples: int, level: float) -> int:
    if n < 1:
        raise ValueError("the bootstrap needs at least one example (no example has a scored position)")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 1:
        raise ValueError(f"n_resamples (n_bootstrap) must be a whole number ≥ 1 (got {n_resamples!r})")
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1 (got {level!r})")
    return n


def _chunks(n_resamples: int, n: int) -> list[int]:
    """Resample counts per chunk: the same random stream as one [n_resamples, n] draw when it fits one chunk."""
    per = max(1, BOOTSTRAP_CHUNK // max(n, 1))
    return [min(per, n_resamples - start) for start in range(0, n_resamples, per)]

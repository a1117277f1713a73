"""Losses, loss recovered and bootstrap confidence intervals: pure functions on tensors.

Convention: position t of a sequence predicts token t+1, so per-token losses have seq-1 columns and a
position mask selects prediction positions. Aggregate losses are token-weighted means over the scored
positions; the bootstrap resamples whole examples.

Loss recovered is only meaningful when the baseline is clearly worse than the clean run: ``gap`` gives the
baseline − clean loss with its standard error, and ``recovery_warnings`` says in words when it is not.

Two per-token metrics (``MetricName``): "loss", the next-token cross-entropy against the reference labels,
and "kl", KL(clean model's next-token distribution ‖ the evaluated model's) at each prediction position.
The clean run's KL is 0 by definition, so with "kl" the clean "losses" are zeros and the recovered
fraction is (KL_baseline − KL_scrubbed) / KL_baseline; every other function here is the same for both.
``position_metric`` computes either from logits at chosen prediction positions only (their next tokens as
labels); ``token_metric``, ``token_losses`` and ``token_kl`` are it at every position t < seq-1.
``score_batch`` computes either for one batch, and ``token_view`` summarises the per-token differences
scrubbed − clean, where cancellation inside sequences shows (mean |Δ| ≫ |mean Δ|).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

from scrub.errors import ScrubError

GAP_STANDARD_ERRORS = 2.0  # warn when baseline − clean is within this many standard errors of zero

MetricName = Literal["loss", "kl"]  # next-token cross-entropy, or KL divergence from the clean run's predictions
MetricKind = Literal["loss", "logit_diff"]  # what a path-patching ``Metric`` measures (see ``Metric``)
METRIC_KINDS: tuple[MetricKind, ...] = get_args(MetricKind)
METRIC_LABELS: dict[str, str] = {"loss": "loss", "kl": "KL"}  # how each metric is named in summaries and warnings
TOKEN_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)  # the quantiles of the per-token differences in ``TokenView``


def position_losses(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of ``logits`` [batch, n_pos, d_vocab] against ``labels`` [batch, n_pos]: [batch, n_pos]."""
    logprobs = logits.log_softmax(-1)  # [batch, n_pos, d_vocab]
    return -logprobs.gather(-1, labels[..., None])[..., 0]  # [batch, n_pos]


def position_kl(clean_logits: Tensor, logits: Tensor) -> Tensor:
    """KL(clean ‖ other) of the distributions ``clean_logits``, ``logits`` [batch, n_pos, d_vocab], in nats:
    [batch, n_pos]. Computed from log-softmaxes in at least float32: exactly 0 where the two logits are equal,
    never negative (rounding below 0 is clipped), and terms where the clean probability is 0 count 0."""
    dtype = torch.promote_types(logits.dtype, torch.float32)
    p_log = clean_logits.to(dtype).log_softmax(-1)  # [batch, n_pos, d_vocab]
    q_log = logits.to(dtype).log_softmax(-1)  # [batch, n_pos, d_vocab]
    p = p_log.exp()  # [batch, n_pos, d_vocab]
    zero = torch.zeros((), dtype=dtype, device=p.device)  # []
    terms = torch.where(p > 0, p * (p_log - q_log), zero)  # [batch, n_pos, d_vocab]
    return terms.sum(-1).clamp(min=0)  # [batch, n_pos]


def position_metric(metric: MetricName, logits: Tensor, clean_logits: Tensor, labels: Tensor) -> Tensor:
    """The ``metric`` [batch, n_pos] at chosen prediction positions: ``logits`` and ``clean_logits``
    [batch, n_pos, d_vocab] there, ``labels`` [batch, n_pos] the next tokens (used by "loss" only)."""
    if check_metric(metric) == "loss":
        return position_losses(logits, labels)  # [batch, n_pos]
    return position_kl(clean_logits, logits)  # [batch, n_pos]


def token_losses(logits: Tensor, tokens: Tensor) -> Tensor:
    """Next-token cross-entropy against ``tokens`` (the reference labels): [batch, seq-1]."""
    return position_losses(logits[:, :-1], tokens[:, 1:])  # [batch, seq-1]


def token_kl(clean_logits: Tensor, logits: Tensor) -> Tensor:
    """KL(clean ‖ other) of the next-token distributions at each prediction position, in nats: [batch, seq-1].

    Position t predicts token t+1, so the last position is dropped (as in ``token_losses``); see
    ``position_kl``."""
    return position_kl(clean_logits[:, :-1], logits[:, :-1])  # [batch, seq-1]


def token_metric(metric: MetricName, logits: Tensor, clean_logits: Tensor, tokens: Tensor) -> Tensor:
    """The per-token ``metric`` [batch, seq-1] of ``logits`` [batch, seq, d_vocab]: next-token loss against
    ``tokens`` [batch, seq], or KL(clean ‖ logits), 0 for the clean run itself. Differentiable."""
    if check_metric(metric) == "loss":
        return token_losses(logits, tokens)  # [batch, seq-1]
    return token_kl(clean_logits, logits)  # [batch, seq-1]


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


@dataclass(frozen=True)
class BatchScores:
    """One batch's per-example metric sums (clean, baseline, scrubbed) and the per-token differences
    scrubbed − clean at the scored positions, flattened in row-major order."""

    clean: ExampleLosses
    baseline: ExampleLosses
    scrubbed: ExampleLosses
    token_delta: Tensor  # [n_scored]


def check_metric(metric: object) -> MetricName:
    """``metric`` if it is a ``MetricName``, else ``ValueError`` naming the choices."""
    if not isinstance(metric, str) or metric not in METRIC_LABELS:
        raise ScrubError(f"metric must be one of {', '.join(repr(m) for m in METRIC_LABELS)}, got {metric!r}")
    return metric  # type: ignore[return-value]


def score_batch(metric: MetricName, tokens: Tensor, mask: Tensor, clean_logits: Tensor, baseline_logits: Tensor,
                scrubbed_logits: Tensor) -> BatchScores:
    """The per-token ``metric`` of the clean, baseline and scrubbed logits ([batch, seq, d_vocab] each) of
    ``tokens`` [batch, seq], summed per example over ``mask`` [batch, seq-1] (on the CPU).

    "loss": cross-entropy against ``tokens``; "kl": KL from the clean logits (the clean values are zeros)."""
    if check_metric(metric) == "loss":
        clean = token_losses(clean_logits, tokens).cpu()  # [batch, seq-1]
        base, scrub = (token_losses(x, tokens).cpu() for x in (baseline_logits, scrubbed_logits))  # [batch, seq-1] x2
    else:
        base, scrub = (token_kl(clean_logits, x).cpu() for x in (baseline_logits, scrubbed_logits))  # [batch, seq-1] x2
        clean = torch.zeros_like(scrub)  # [batch, seq-1]
    mask = mask.cpu()
    return BatchScores(example_losses(clean, mask), example_losses(base, mask), example_losses(scrub, mask),
                       (scrub - clean)[mask])  # [n_scored]


@dataclass(frozen=True)
class TokenView:
    """Per-token differences Δ = metric_scrubbed − metric_clean at the scored positions, without averaging
    per example first: ``mean_delta`` is the token-weighted scrubbed − clean difference of the aggregate
    numbers; ``mean_abs_delta`` ≥ |``mean_delta``|, and much larger means tokens the scrubbed model does worse
    on cancel tokens it does better on (the aggregate hides how much it changes). ``p10``..``p90`` are
    quantiles of Δ (linear interpolation), ``share_positive`` the share of tokens with Δ > 0 (worse than
    clean), ``n_tokens`` how many tokens. With "kl" every Δ is ≥ 0, so no cancellation can happen."""

    mean_delta: float
    mean_abs_delta: float
    p10: float
    p25: float
    p50: float
    p75: float
    p90: float
    share_positive: float
    n_tokens: int


def token_view(delta: Tensor) -> TokenView:
    """The ``TokenView`` of per-token differences ``delta`` [n_tokens] (NaN statistics for none)."""
    values = delta.detach().reshape(-1).double().cpu()  # [n_tokens]
    n = values.numel()
    if n == 0:
        nan = math.nan
        return TokenView(nan, nan, nan, nan, nan, nan, nan, share_positive=nan, n_tokens=0)
    ordered = values.sort().values  # [n_tokens]
    quantiles = []
    for level in TOKEN_QUANTILES:  # linear interpolation between order statistics, as torch.quantile's default
        where = level * (n - 1)
        low = math.floor(where)
        high = min(low + 1, n - 1)
        quantiles.append(float(ordered[low] + (where - low) * (ordered[high] - ordered[low])))
    p10, p25, p50, p75, p90 = quantiles
    return TokenView(float(values.mean()), float(values.abs().mean()), p10, p25, p50, p75, p90,
                     share_positive=float((values > 0).double().mean()), n_tokens=n)


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
                      standard_errors: float = GAP_STANDARD_ERRORS, metric: MetricName = "loss") -> list[str]:
    """Why loss recovered may not mean what it says, in words: the baseline is not worse than the clean run,
    or only by less than ``standard_errors`` standard errors (then loss recovered is mostly noise). With
    ``metric="kl"`` the same checks, worded for the baseline's KL divergence from the clean run."""
    diff, se = gap(clean, baseline)
    if not math.isfinite(diff):
        return []
    if metric == "kl":
        if diff <= 0:
            return [(f"the baseline's KL divergence from the clean run is {diff:.4g}: the baseline does not change "
                     f"the model's predictions on these data, so KL recovered does not measure how much of its "
                     f"behaviour the claim explains; use a baseline that resamples more or other data")]
        if diff < standard_errors * se:
            return [(f"the baseline's KL divergence from the clean run, {diff:.4g}, is within {standard_errors:g} "
                     f"standard errors ({se:.2g}) of zero: KL recovered divides by a number that is mostly noise; "
                     f"use more examples or a baseline that resamples more")]
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
    gen = torch.Generator().manual_seed(seed)  # a CPU generator: the statistics are on the CPU (score_batch)
    parts = []
    for rows in _chunks(n_resamples, n):
        idx = torch.randint(0, n, (rows, n), generator=gen, device="cpu")  # [chunk, n]
        count = clean.count[idx].sum(1)  # [chunk]
        lc, lb, ls = (x.total[idx].sum(1) / count for x in (clean, baseline, scrubbed))  # [chunk] x3
        parts.append(recovered(lc, lb, ls))
    ratios = torch.cat(parts)  # [resample]
    ratios = ratios[torch.isfinite(ratios)]
    if ratios.numel() == 0:
        return Interval(float("nan"), float("nan"))
    alpha = (1 - level) / 2
    q = torch.quantile(ratios.double(), torch.tensor([alpha, 1 - alpha], dtype=torch.float64, device=ratios.device))
    return Interval(float(q[0]), float(q[1]))


def bootstrap_mean(values: Tensor, *, n_resamples: int = 1000, level: float = 0.95, seed: int = 0) -> Interval:
    """Percentile bootstrap interval of a mean over examples."""
    n = _check_resampling(values.shape[0], n_resamples, level)
    gen = torch.Generator().manual_seed(seed)
    means = torch.cat([values[torch.randint(0, n, (rows, n), generator=gen, device="cpu")].double().mean(1)
                       for rows in _chunks(n_resamples, n)])  # [resample]
    alpha = (1 - level) / 2
    q = torch.quantile(means, torch.tensor([alpha, 1 - alpha], dtype=torch.float64, device=means.device))
    return Interval(float(q[0]), float(q[1]))


BOOTSTRAP_CHUNK = 1 << 24  # resampled indices per chunk (128 MB of int64)


def _check_resampling(n: int, n_resamples: int, level: float) -> int:
    if n < 1:
        raise ScrubError("the bootstrap needs at least one example (no example has a scored position)")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 1:
        raise ScrubError(f"n_resamples (n_bootstrap) must be a whole number ≥ 1 (got {n_resamples!r})")
    if not 0 < level < 1:
        raise ScrubError(f"level must be between 0 and 1 (got {level!r})")
    return n


def _chunks(n_resamples: int, n: int) -> list[int]:
    """Resample counts per chunk: the same random stream as one [n_resamples, n] draw when it fits one chunk."""
    per = max(1, BOOTSTRAP_CHUNK // max(n, 1))
    return [min(per, n_resamples - start) for start in range(0, n_resamples, per)]


# --- the path-patching metric: a scalar of the logits at a few positions --------------------------------

@dataclass(frozen=True)
class Metric:
    """A scalar of logits at prediction positions ``positions`` [n_pos] (scored on tokens[t + 1]): the mean
    next-token ``loss`` against ``labels``, or the mean ``logit_diff`` = logit(label) - logit(foil), over every
    (row, position) pair, or over those ``weights`` [batch, n_pos] (0/1) marks when rows score different
    positions (the study's induction candidates)."""

    kind: MetricKind
    positions: Tensor  # [n_pos] sequence indices t, scored on tokens[t + 1]
    labels: Tensor  # [batch, n_pos] reference next tokens
    foils: Tensor  # [batch, n_pos] corrupted next tokens
    weights: Tensor | None = None  # [batch, n_pos] which pairs count; None: all of them

    def __call__(self, logits: Tensor) -> Tensor:
        """logits [batch, n_pos, d_vocab] -> scalar."""
        if self.weights is not None:
            return self.many(logits[None])[0]
        if self.kind == "loss":
            logprobs = logits.log_softmax(-1)  # [batch, n_pos, d_vocab]
            return -logprobs.gather(-1, self.labels[..., None]).mean()
        return (logits.gather(-1, self.labels[..., None]) - logits.gather(-1, self.foils[..., None])).mean()

    def many(self, logits: Tensor, *, overwrite: bool = False, centred: bool = False) -> Tensor:
        """The metric of many patched runs at once: logits [paths, batch, n_pos, d_vocab] -> [paths].
        ``overwrite=True`` lets it use ``logits`` as scratch space (no second d_vocab-wide tensor).
        ``centred=True``: the caller has already moved each row of logits by a constant near its maximum
        (both metrics ignore a constant per row), so the loss skips its own max subtraction; the values
        are then non-finite if that constant was too far off, and the caller retries with plain logits."""
        labels = self.labels.expand(logits.shape[0], *self.labels.shape)[..., None]  # [paths, batch, n_pos, 1]
        if self.kind == "loss":
            picked = logits.gather(-1, labels)[..., 0]  # [paths, batch, n_pos]
            if centred:
                top = torch.zeros_like(picked)  # [paths, batch, n_pos]
                shifted = logits if overwrite else logits.clone()  # [paths, batch, n_pos, d_vocab]
            else:
                top = logits.amax(-1)  # [paths, batch, n_pos]
                shifted = logits.sub_(top[..., None]) if overwrite else logits - top[..., None]
            lse = shifted.exp_().sum(-1).log_() + top  # logsumexp (torch's is ~3x slower on CPU)
            return self._mean(lse - picked)
        foils = self.foils.expand(logits.shape[0], *self.foils.shape)[..., None]  # [paths, batch, n_pos, 1]
        return self._mean((logits.gather(-1, labels) - logits.gather(-1, foils))[..., 0])

    def _mean(self, values: Tensor) -> Tensor:
        """values [paths, batch, n_pos] -> [paths]: the mean over the scored pairs."""
        if self.weights is None:
            return values.flatten(1).mean(1)
        return (values * self.weights).flatten(1).sum(1) / self.weights.sum()


def make_metric(kind: MetricKind, reference: Tensor, corrupted: Tensor, positions: Tensor) -> Metric:
    """The ``kind`` metric of ``reference`` against ``corrupted`` [batch, seq] at prediction ``positions``
    [n_pos] (each < seq - 1): labels the reference's next tokens, foils the corrupted ones."""
    if kind not in METRIC_KINDS:  # a plain string from the command line or an untyped caller
        raise ScrubError(f"unknown metric {kind!r}: use 'loss' or 'logit_diff'")
    if positions.numel() == 0 or int(positions.max()) >= reference.shape[1] - 1:
        raise ScrubError("metric positions must be non-empty prediction positions below seq - 1")
    return Metric(kind, positions, reference[:, positions + 1], corrupted[:, positions + 1])


def masked_loss(tokens: Tensor, mask: Tensor) -> Metric:
    """Mean next-token loss of ``tokens`` [batch, seq] over the prediction positions ``mask`` [batch, seq-1]
    marks (each row its own positions); the positions any row scores are the metric's ``positions``."""
    positions = torch.nonzero(mask.any(0))[:, 0]  # [n_pos]
    labels = tokens[:, positions + 1]  # [batch, n_pos]
    return Metric("loss", positions, labels, labels, mask[:, positions].float())  # weights [batch, n_pos]

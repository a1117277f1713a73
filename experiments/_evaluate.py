"""Scrub many hypotheses on one dataset at once: one clean run per batch, every hypothesis and baseline
evaluated together by ``scrub.engine.evaluator.evaluate_many``, per-example losses kept for several position modes,
so loss recovered against any baseline is a cheap function of the stored losses.

Draws follow ``scrub.experiment.runner.run``: from the whole dataset, seeded by the seed, the tree path and the
datum (so trees that share a path also share its draws: common random numbers between a hypothesis and its
baselines), whatever the batch size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from scrub.claims.hypothesis import Claim
from scrub.engine.compute import clean_run_batched
from scrub.engine.evaluator import evaluate_many
from scrub.engine.sampling import Sampler
from scrub.engine.treeify import assign, localize, treeify
from scrub.metrics import ExampleLosses, MetricName, bootstrap_recovered, recovered, token_metric

MaskFn = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Recovery:
    """Loss recovered of one hypothesis against one baseline at one position mode, with its interval."""

    hypothesis: str
    baseline: str
    positions: str
    value: float
    ci_low: float
    ci_high: float
    loss_clean: float
    loss_baseline: float
    loss_scrubbed: float
    n_examples: int
    n_tokens: int
    per_example: tuple[float, ...]  # loss recovered of each example alone
    data: str = ""  # which dataset ("natural", "rrt")
    metric: str = "loss"  # the per-token quantity ("loss", or "kl": KL from the clean run's predictions)


@dataclass(frozen=True)
class ManyLosses:
    """Per-example summed losses: ``total[tree, mode, example]``, ``clean[mode, example]``, ``count[mode, example]``."""

    names: tuple[str, ...]
    modes: tuple[str, ...]
    total: Tensor  # [tree, mode, example]
    clean: Tensor  # [mode, example]
    count: Tensor  # [mode, example]

    def recovery(self, hypothesis: str, baseline: str, mode: str, *, n_bootstrap: int = 1000,
                 seed: int = 0) -> Recovery:
        h, b, m = self.names.index(hypothesis), self.names.index(baseline), self.modes.index(mode)
        keep = self.count[m] > 0  # [example]
        count = self.count[m][keep]
        clean, base, scrub = (ExampleLosses(t[keep], count)
                              for t in (self.clean[m], self.total[b, m], self.total[h, m]))
        lc, lb, ls = clean.mean(), base.mean(), scrub.mean()
        ci = bootstrap_recovered(clean, base, scrub, n_resamples=n_bootstrap, seed=seed)
        per = recovered(clean.per_example(), base.per_example(), scrub.per_example())  # [example]
        return Recovery(hypothesis, baseline, mode, float(recovered(lc, lb, ls)), ci.low, ci.high, lc, lb, ls,
                        int(keep.sum()), int(count.sum()), tuple(per.tolist()))


@torch.no_grad()
def scrub_many(model: HookedTransformer, claims: tuple[Claim, ...], data: Tensor,
               masks: tuple[tuple[str, MaskFn], ...], *, seed: int, batch_size: int,
               step: Callable[[], None] | None = None) -> ManyLosses:
    """Evaluate every claim on ``data`` [n, seq]; ``masks`` name the scored prediction positions."""
    return scrub_metrics(model, claims, data, masks, seed=seed, batch_size=batch_size, step=step)["loss"]


@torch.no_grad()
def scrub_metrics(model: HookedTransformer, claims: tuple[Claim, ...], data: Tensor,
                  masks: tuple[tuple[str, MaskFn], ...], *, seed: int, batch_size: int,
                  metrics: tuple[MetricName, ...] = ("loss",),
                  step: Callable[[], None] | None = None) -> dict[str, ManyLosses]:
    """``scrub_many`` for several per-token metrics ("loss", "kl") from one evaluation of every claim: the same
    draws, per-example sums and position modes, one ``ManyLosses`` per metric. With "kl" the clean sums are
    zeros, so ``ManyLosses.recovery`` gives KL recovered = (KL_baseline - KL_scrubbed) / KL_baseline, as
    ``scrub.run(..., metric="kl")`` does."""
    trees = [treeify(c) for c in claims]
    parts: dict[str, tuple[list, list, list]] = {m: ([], [], []) for m in metrics}
    sampler = Sampler(data, seed=seed)
    whole = clean_run_batched(model, data, batch_size)  # every batch draws from (and indexes) the whole dataset
    for start in range(0, data.shape[0], batch_size):
        ids = torch.arange(start, min(start + batch_size, data.shape[0]))  # [batch]
        tokens = data[ids]  # [batch, seq]
        _, datas = localize([assign(t, sampler, ids) for t in trees], ids, data.shape[0], whole=True)
        clean_logits = whole.logits[ids]  # [batch, seq, d_vocab]

        def reduce(lg: Tensor, clean_logits: Tensor = clean_logits, tokens: Tensor = tokens) -> Tensor:
            return torch.stack([token_metric(m, lg, clean_logits, tokens) for m in metrics])  # [metric, batch, seq-1]

        values, _ = evaluate_many(model, trees, datas, whole, reduce=reduce)
        stacked = torch.stack(values)  # [tree, metric, batch, seq-1]
        mask = torch.stack([fn(tokens)[:, :-1] for _, fn in masks]).float()  # [mode, batch, seq-1]
        for k, m in enumerate(metrics):
            totals, cleans, counts = parts[m]
            clean_value = token_metric(m, clean_logits, clean_logits, tokens) if m == "loss" else \
                torch.zeros_like(stacked[0, k])  # [batch, seq-1]
            totals.append(torch.einsum("tbs,mbs->tmb", stacked[:, k], mask))
            cleans.append(torch.einsum("bs,mbs->mb", clean_value, mask))
            counts.append(mask.sum(-1))  # [mode, batch]
        if step:
            step()
    names, modes = tuple(c.name for c in claims), tuple(n for n, _ in masks)
    return {m: ManyLosses(names, modes, torch.cat(t, -1), torch.cat(c, -1), torch.cat(n, -1))
            for m, (t, c, n) in parts.items()}


@dataclass(frozen=True)
class EffectSplit:
    """Where one component's effect falls: the loss increase when ``tree`` replaces the clean run, per scored
    token at each position mode, and the share of the summed increase at the first mode (candidates), each
    with a percentile bootstrap interval over examples."""

    name: str
    modes: tuple[str, ...]
    per_token: tuple[tuple[float, float, float], ...]  # per mode: (mean increase per token, low, high), nats
    share: tuple[float, float, float]  # share of the summed increase at modes[0] (vs modes[0] + modes[1])
    token_share: float  # share of the scored tokens that are in modes[0]
    n_examples: int


def effect_split(losses: ManyLosses, tree: str, modes: tuple[str, str] = ("candidates", "other"), *,
                 n_bootstrap: int = 1000, seed: int = 0) -> EffectSplit:
    """Loss increase of ``tree`` over the clean run at two disjoint position sets (``modes``), and the share
    of the total increase at the first."""
    t = losses.names.index(tree)
    idx = [losses.modes.index(m) for m in modes]
    inc = torch.stack([losses.total[t, m] - losses.clean[m] for m in idx]).double()  # [mode, example]
    count = torch.stack([losses.count[m] for m in idx]).double()  # [mode, example]
    n = inc.shape[1]
    gen = torch.Generator().manual_seed(seed)
    draws = torch.randint(0, n, (n_bootstrap, n), generator=gen)  # [resample, example]
    inc_b, count_b = inc[:, draws].sum(-1), count[:, draws].sum(-1)  # [mode, resample]

    def interval(point: float, samples: Tensor) -> tuple[float, float, float]:
        samples = samples[samples.isfinite()]
        if samples.numel() == 0:
            return point, float("nan"), float("nan")
        q = torch.quantile(samples, torch.tensor([0.025, 0.975], dtype=samples.dtype))
        return point, float(q[0]), float(q[1])

    per_token = tuple(interval(float(inc[m].sum() / count[m].sum()), inc_b[m] / count_b[m]) for m in range(2))
    total = inc.sum(-1)  # [mode]
    share = interval(float(total[0] / total.sum()), inc_b[0] / inc_b.sum(0))
    return EffectSplit(tree, tuple(modes), per_token, share, float(count[0].sum() / count.sum()), n)

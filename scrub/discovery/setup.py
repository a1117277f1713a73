"""What discovery scores and against what: the scored tokens, the metric, and the counterfactual datum each
removed edge reads (``Counterfactuals``), shared by attribution and exact verification.

Two kinds of counterfactual (``CounterfactualKind``):

- ``paired``: the user's corrupted batch, as ``patch_matrix`` takes it. The data are the reference rows
  then their corrupted partners; a removed input of any receiver on example i reads datum n + i.
- ``resample``: causal scrubbing's. The data are the examples themselves; a removed input of receiver v on
  example i reads the datum ``scrub.engine.sampling.Sampler`` draws for v's hypothesis node (path
  ``("node", str(v))``, purpose "unclaimed"): exactly the draw the engine makes when the edge is left out
  of a claim, so attribution estimates what verification measures. ``draws`` seeds (seed, seed + 1, ...)
  give several draws per example; every number is averaged over them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from scrub.claims.sites import Component, Logits
from scrub.claims.structure import Structure
from scrub.engine.sampling import Sampler
from scrub.metrics import MetricName, position_metric

CounterfactualKind = Literal["paired", "resample"]


@dataclass(frozen=True)
class Draw:
    """One counterfactual draw: per receiver, the datum [n] its removed inputs read (indices into the data),
    and ``partner`` [n], the datum EAP-IG interpolates from (the logits node's draw: the empty claim's input)."""

    others: dict[Component, Tensor]
    partner: Tensor

    def other(self, receiver: Component) -> Tensor:
        return self.others[receiver]


@dataclass(frozen=True)
class Counterfactuals:
    """The data (examples first: rows 0..n-1 are the scored examples) and the draws."""

    kind: CounterfactualKind
    data: Tensor  # [m, seq] token ids: the examples, then (paired) their corrupted partners
    n: int  # scored examples
    draws: tuple[Draw, ...]
    seeds: tuple[int, ...]  # the sampler seed of each draw (resample), () for paired


def paired(tokens: Tensor, corrupted: Tensor, structure: Structure) -> Counterfactuals:
    """Every removed input of example i reads corrupted row i."""
    n = tokens.shape[0]
    partner = torch.arange(n, device="cpu") + n  # [n] dataset ids, CPU bookkeeping like the sampler's draws
    others = {r: partner for r in structure.receivers}
    return Counterfactuals("paired", torch.cat([tokens, corrupted]), n, (Draw(others, partner),), ())


def resampled(tokens: Tensor, structure: Structure, seed: int, n_draws: int) -> Counterfactuals:
    """Each receiver's removed inputs read its node's unclaimed draw, ``n_draws`` seeds from ``seed``."""
    ids = torch.arange(tokens.shape[0], device="cpu")  # [n] dataset ids for the CPU sampler
    draws = []
    seeds = tuple(seed + k for k in range(n_draws))
    for s in seeds:
        sampler = Sampler(tokens, seed=s)
        others = {r: sampler.agreeing(None, ids, ("node", str(r)), "unclaimed").datum for r in structure.receivers}
        draws.append(Draw(others, others[Logits()]))
    return Counterfactuals("resample", tokens, tokens.shape[0], tuple(draws), seeds)


def position_totals(metric: MetricName, logits: Tensor, clean_logits: Tensor, labels: Tensor, weights: Tensor
                    ) -> Tensor:
    """Per-example sums of the metric at chosen prediction positions, weighted by ``weights`` [batch, n_pos]
    (the scored ones): logits, clean logits [batch, n_pos, d_vocab], next tokens ``labels`` [batch, n_pos].
    Returns [batch] (float64, on the CPU)."""
    values = position_metric(metric, logits, clean_logits, labels)  # [batch, n_pos]
    return (values.double() * weights.to(values.device).double()).sum(1).cpu()  # [batch]

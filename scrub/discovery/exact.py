"""Exact metric of many claims at once under scrubbing semantics, by the batched engine.

A claim here is a set of kept edges; every edge left out reads the counterfactual datum of its receiver
(``setup.Counterfactuals``): in ``resample`` mode by the engine's own draws (``treeify.assign`` on a
``Sampler`` of the examples, one per seed), in ``paired`` mode by assignments in which every node's
unclaimed inputs read the corrupted partner (as ``patching`` does for paths). ``ExactEvaluator.totals``
returns per-example sums of the metric over the scored tokens, averaged over draws, for many claims in
shared ``evaluate_many`` calls, unembedding only the positions some example of a batch scores; it counts the
trees it evaluated (each at most one forward pass over the examples: the engine recomputes only what differs
from the clean run).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from scrub.discovery.edges import Edge, claim_of
from scrub.discovery.setup import Counterfactuals, position_totals
from scrub.engine.compute import CleanRun
from scrub.engine.evaluator import evaluate_many
from scrub.engine.sampling import Sampler
from scrub.engine.treeify import Assignment, Assignments, TreeNode, assign, localize, treeify
from scrub.metrics import MetricName

TREES_PER_CALL = 32  # claims stacked into one evaluate_many call (bounds the stacked inputs' memory)


@dataclass
class ExactEvaluator:
    """Evaluates claims (edge sets) on the examples of ``cf`` with the clean run ``clean`` of ``cf.data``.
    Mutable only in its counters and sampler cache."""

    model: HookedTransformer
    cf: Counterfactuals
    clean: CleanRun
    mask: Tensor  # [n, seq-1] scored positions
    metric: MetricName
    batch_size: int = 32
    trees: int = 0  # claims evaluated on all examples, per draw: forward-pass equivalents
    _samplers: list[Sampler] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self._samplers = [Sampler(self.cf.data, seed=s) for s in self.cf.seeds]

    @property
    def counts(self) -> Tensor:
        """Scored tokens per example: [n] (float64)."""
        return self.mask.sum(1).double()

    @torch.no_grad()
    def totals(self, claims: Sequence[frozenset[Edge]]) -> Tensor:
        """Per-example metric sums of every claim, averaged over draws: [n_claims, n] (float64)."""
        if not claims:
            return torch.zeros(0, self.cf.n, dtype=torch.float64, device="cpu")  # [0, n] like _totals
        roots = [treeify(claim_of(c)) for c in claims]
        parts = []
        for start in range(0, len(roots), TREES_PER_CALL):
            parts.append(self._totals(roots[start : start + TREES_PER_CALL]))
        self.trees += len(claims) * len(self.cf.draws)
        return torch.cat(parts)  # [n_claims, n]

    def _totals(self, roots: list[TreeNode]) -> Tensor:
        """Per batch, unembeds only the positions some example of it scores (none scored: totals stay 0)."""
        n = self.cf.n
        out = torch.zeros(len(roots), n, dtype=torch.float64, device="cpu")  # [claims, n] CPU totals (position_totals)
        for start in range(0, n, self.batch_size):
            ids = torch.arange(start, min(start + self.batch_size, n), device="cpu")  # [b] like the CPU mask and draws
            mask = self.mask[ids]  # [b, seq-1]
            positions = mask.any(0).nonzero()[:, 0].cpu()  # [n_pos] CPU indices, like the engine's datum maps
            if positions.numel() == 0:
                continue
            labels = self.clean.tokens[ids][:, positions + 1]  # [b, n_pos] the next tokens
            clean_logits = self.clean.logits[ids][:, positions]  # [b, n_pos, d_vocab]
            weights = mask[:, positions]  # [b, n_pos]

            def reduce(logits: Tensor, clean_logits: Tensor = clean_logits, labels: Tensor = labels,
                       weights: Tensor = weights) -> Tensor:  # [b, n_pos, d_vocab] -> [b]
                return position_totals(self.metric, logits, clean_logits, labels, weights)

            for datas in self._assignments(roots, ids):
                values, _ = evaluate_many(self.model, roots, datas, self.clean, reduce=reduce, positions=positions)
                out[:, ids] += torch.stack(values) / len(self.cf.draws)
        return out

    def _assignments(self, roots: list[TreeNode], ids: Tensor) -> list[list[Assignments]]:
        """Per draw, the data every node of every root reads on the examples ``ids``."""
        if self.cf.kind == "paired":
            return [[_paired(root, ids, self.cf.n) for root in roots]]
        out = []
        for sampler in self._samplers:
            drawn = [assign(root, sampler, ids) for root in roots]
            _, local = localize(drawn, ids, self.cf.data.shape[0], whole=True)
            out.append(local)
        return out


def _paired(root: TreeNode, ids: Tensor, n: int) -> Assignments:
    """Every node on the examples ``ids``; its unclaimed inputs read the corrupted partner ``ids + n``."""
    no = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)  # [b]
    out = Assignments()
    for node in root.walk():
        out.by_path[node.path] = Assignment(ids, ids + n, torch.zeros(0, dtype=torch.bool, device=ids.device), no)
    return out

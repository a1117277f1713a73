"""The faithfulness curve of a ranking of edges: recovered against the number of edges kept, for the circuit
(the top-k edges) and its complement (every edge but those), with MIB's CPR and CMD (Mueller et al. 2025).

recovered(C) = (m(empty) − m(C)) / (m(empty) − m(full)), m the exact metric (mean over scored tokens) of
the claim under the run's counterfactuals: 1 for the full model, 0 for the empty claim. CPR is the area
under the circuit's curve over the fraction of edges kept, CMD the area between it and 1 (trapezoids).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from scrub.discovery.edges import Edge
from scrub.discovery.exact import ExactEvaluator

FRACTIONS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)  # of the edges, the budgets evaluated


@dataclass(frozen=True)
class CurvePoint:
    edges: int
    fraction: float
    circuit: float  # recovered by the top-``edges`` edges
    complement: float  # recovered by every edge but those


@dataclass(frozen=True)
class Curve:
    points: tuple[CurvePoint, ...]
    cpr: float
    cmd: float

    def to_dict(self) -> dict:
        return {"cpr": self.cpr, "cmd": self.cmd,
                "points": [{"edges": p.edges, "fraction": p.fraction, "circuit": p.circuit,
                            "complement": p.complement} for p in self.points]}


def faithfulness(ev: ExactEvaluator, ranked: Sequence[Edge], fractions: Sequence[float] = FRACTIONS) -> Curve:
    """The curve of ``ranked`` (most important first) at the budgets ``fractions`` of its length."""
    n = len(ranked)
    budgets = sorted({round(f * n) for f in fractions} | {0, n})
    every = frozenset(ranked)
    claims = [frozenset(ranked[:k]) for k in budgets] + [every - frozenset(ranked[:k]) for k in budgets]
    means = ev.totals(claims).sum(1) / ev.counts.sum().clamp(min=1)  # [2 * budgets]
    full, empty = float(means[len(budgets) - 1]), float(means[0])
    gap = empty - full

    def rec(value: float) -> float:
        return (empty - value) / gap if gap != 0 else float("nan")

    points = tuple(CurvePoint(k, k / max(n, 1), rec(float(means[i])), rec(float(means[len(budgets) + i])))
                   for i, k in enumerate(budgets))
    cpr = cmd = 0.0
    for a, b in zip(points, points[1:], strict=False):
        width = b.fraction - a.fraction
        cpr += width * (a.circuit + b.circuit) / 2
        cmd += width * (abs(1 - a.circuit) + abs(1 - b.circuit)) / 2
    return Curve(points, cpr, cmd)

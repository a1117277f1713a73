"""ACDC's greedy pruning under scrubbing semantics, decided with a paired bootstrap interval per edge.

Receivers are visited in reverse topological order (logits first). At each receiver its incoming edges are
tried for removal one at a time, in the order attribution gives (smallest |score| first; for ``acdc``,
latest sender first); removing an edge means that input reads the counterfactual datum, and the edge's
effect is metric(claim without it) − metric(claim), the metric being the mean over scored tokens, with a
percentile bootstrap interval over examples (the same resampled example sets for every edge). Verdicts
(``Verdict``): ``dropped`` when the interval lies inside [−τ, τ] (the edge is removed for good), ``kept``
when it lies outside, ``uncertain`` when it straddles ±τ (kept, and listed).

Batching: decisions are sequential, so each batched call evaluates a speculative run of them: a *chain*
(cumulative removals, right while edges are dropped) or a *fan* (single removals from the current claim,
right while edges are kept); the first decision that breaks the speculation switches the mode and the
rest is evaluated again. The span of a call starts at 4, doubles while the speculation holds and halves when
it breaks (``acdc``; with scores the speculation is off: on the CPU a claim costs about the same alone or in
a batch, and a broken speculation costs its claims).

Groups (with scores): a receiver's edges with |score| < ``skip`` x τ are tried for removal together. The
joint removal is accepted when its interval lies inside [−τ, τ]; otherwise the group is bisected (lower
|score| half first, each half a joint check against the claim as it stands) down to single edges, which get
the ordinary verdict. When a lower half is removed, the upper half's check is the failed parent's claim,
already evaluated: it costs no pass. Each check is one call (it is made against the claim the check before
it left, so checks are not batched). Edges removed in an accepted group of two or more are ``skipped``; each
is also checked singly with probability ``spot`` (``Search.spot_checked``, ``spot_violations``), in one call
after the receiver. The remaining edges are decided one by one. A receiver none of whose outputs is kept any
more has every input dropped without evaluation (its output reaches nothing: effect exactly 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Callable, Sequence

import torch
from torch import Tensor

from scrub.claims.sites import Component, Logits
from scrub.discovery.edges import Edge
from scrub.discovery.exact import ExactEvaluator

SPECULATION = 32  # at most this many decisions per batched call (the span doubles while speculation holds)


class Verdict(str, Enum):
    KEPT = "kept"
    DROPPED = "dropped"
    UNCERTAIN = "uncertain"


class How(str, Enum):
    """How an edge's verdict was reached."""

    EXACT = "exact"  # its own exact removal, with an interval
    SKIPPED = "skipped"  # low |score|: removed with its group, whose joint exact removal is inside [−τ, τ]
    SPOT = "spot"  # skipped, and also checked singly at random
    UNREACHABLE = "unreachable"  # its receiver's output reaches nothing kept: effect exactly 0
    SEARCH_OFF = "not searched"  # outside ``receivers``: kept without a decision


@dataclass(frozen=True)
class Decision:
    edge: Edge
    verdict: Verdict
    how: How
    effect: float | None  # metric(without the edge) − metric(with it), mean over scored tokens
    ci: tuple[float, float] | None  # 95% paired bootstrap interval of ``effect``


@dataclass(frozen=True)
class Search:
    decisions: tuple[Decision, ...]
    kept: frozenset[Edge]
    trees: int  # claims evaluated exactly (per draw)
    skipped: int
    spot_checked: int
    spot_violations: int  # spot-checked skipped edges whose single interval was not inside [−τ, τ]


@dataclass(frozen=True)
class Interval:
    """Paired bootstrap of effects over examples: fixed resampled example multisets, shared by every edge."""

    weights: Tensor  # [n_boot, n] how often each example is drawn
    counts: Tensor  # [n] scored tokens per example

    @classmethod
    def of(cls, counts: Tensor, n_boot: int, seed: int) -> "Interval":
        n = counts.shape[0]
        gen = torch.Generator().manual_seed(seed)  # a CPU generator: the effects' statistics are on the CPU
        idx = torch.randint(0, n, (n_boot, n), generator=gen, device="cpu")  # [n_boot, n]
        ones = torch.ones(n_boot, n, dtype=torch.float64, device="cpu")  # [n_boot, n]
        weights = torch.zeros(n_boot, n, dtype=torch.float64, device="cpu").scatter_add_(1, idx, ones)  # [n_boot, n]
        return cls(weights, counts)

    def __call__(self, diffs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per-example differences [k, n] -> effects [k], lower [k], upper [k] (token-weighted means)."""
        effect = diffs.sum(1) / self.counts.sum().clamp(min=1)  # [k]
        boot = (self.weights @ diffs.T) / (self.weights @ self.counts).clamp(min=1)[:, None]  # [n_boot, k]
        q = torch.quantile(boot, torch.tensor([0.025, 0.975], dtype=torch.float64, device=boot.device), dim=0)  # [2, k]
        return effect, q[0], q[1]


def verdict(low: float, high: float, tau: float) -> Verdict:
    if -tau <= low and high <= tau:
        return Verdict.DROPPED
    if low > tau or high < -tau:
        return Verdict.KEPT
    return Verdict.UNCERTAIN


@dataclass
class _State:
    """The claim being pruned: kept edges and their per-example metric sums [n]."""

    kept: set[Edge]
    base: Tensor


@dataclass(frozen=True)
class Checkpoint:
    """The search after its first ``done`` receivers (in visiting order): all it needs to go on exactly as if
    it had not stopped (the claim's per-example sums and the spot-check generator included)."""

    done: int
    decisions: tuple[Decision, ...]
    kept: frozenset[Edge]
    base: Tensor  # [n] per-example metric sums of the claim ``kept``
    rng: Tensor  # the spot-check generator's state
    skipped: int
    spot_checked: int
    spot_violations: int
    trees: int


def greedy(ev: ExactEvaluator, edges: Sequence[Edge], tau: float, *, scores: dict[Edge, float] | None,
           searched: Callable[[Component], bool], skip: float, spot: float, seed: int,
           n_boot: int = 1000, progress: Callable[[int], None] | None = None,
           resume: Checkpoint | None = None, keep: Callable[[Checkpoint], None] | None = None) -> Search:
    """Prune ``edges`` (all of the model's) at threshold ``tau``; only receivers with ``searched(r)`` are
    searched. ``progress(k)`` is told how many edges were decided; ``keep`` is handed a ``Checkpoint`` after
    each receiver, and ``resume`` (one of those) goes on from there."""
    interval = Interval.of(ev.counts, n_boot, seed)
    at = resume if resume is not None else _start(ev, edges, seed)
    state, rng = _State(set(at.kept), at.base.clone()), torch.Generator()
    rng.set_state(at.rng)  # seeded in ``_start``, or where the stopped run left it
    ev.trees = at.trees
    decisions = list(at.decisions)
    skipped, checked, violations = at.skipped, at.spot_checked, at.spot_violations
    _tell(progress, sum(d.how != How.SEARCH_OFF for d in decisions))
    by_receiver: dict[Component, list[Edge]] = {}  # each receiver's edges, receivers in computation order
    for e in edges:
        by_receiver.setdefault(e.receiver, []).append(e)
    order = list(reversed(by_receiver))
    for i in range(at.done, len(order)):
        receiver = order[i]
        into = by_receiver[receiver]
        if not searched(receiver):
            decisions += [Decision(e, Verdict.KEPT, How.SEARCH_OFF, None, None) for e in into]
        elif not isinstance(receiver, Logits) and not any(e.sender == receiver for e in state.kept):
            state.kept.difference_update(into)
            decisions += [Decision(e, Verdict.DROPPED, How.UNREACHABLE, 0.0, (0.0, 0.0)) for e in into]
            _tell(progress, len(into))
        else:
            ordered = _order(into, scores)
            if scores is None:
                decisions += _decide(ev, state, ordered, interval, tau, progress)
            else:
                group = [e for e in ordered if tau > 0 and abs(scores[e]) < skip * tau]  # a prefix of ``ordered``
                done, removed = _bisect(ev, state, group, interval, tau, progress)
                done, n_checked, n_bad = _spot_check(ev, done, removed, interval, tau, spot, rng)
                skipped += sum(len(g) for g, _, _ in removed)
                checked, violations = checked + n_checked, violations + n_bad
                decisions += done
                decisions += _decide(ev, state, ordered[len(group):], interval, tau, progress, speculate=1)
        if keep is not None:
            keep(Checkpoint(i + 1, tuple(decisions), frozenset(state.kept), state.base, rng.get_state(), skipped,
                            checked, violations, ev.trees))
    return Search(tuple(decisions), frozenset(state.kept), ev.trees, skipped, checked, violations)


def _start(ev: ExactEvaluator, edges: Sequence[Edge], seed: int) -> Checkpoint:
    """The search before its first receiver: every edge kept (one exact evaluation of the full claim)."""
    base = ev.totals([frozenset(edges)])[0]  # [n]
    return Checkpoint(0, (), frozenset(edges), base, torch.Generator().manual_seed(seed).get_state(), 0, 0, 0,
                      ev.trees)


def _tell(progress: Callable[[int], None] | None, k: int) -> None:
    if progress is not None:
        progress(k)


def _order(into: list[Edge], scores: dict[Edge, float] | None) -> list[Edge]:
    if scores is None:
        return list(reversed(into))  # ACDC: latest sender first
    return sorted(into, key=lambda e: abs(scores[e]))


Removed = list[tuple[list[Edge], frozenset[Edge], Tensor]]  # accepted groups: edges, claim before, its sums [n]


def _bisect(ev: ExactEvaluator, state: _State, group: list[Edge], interval: Interval, tau: float,
            progress: Callable[[int], None] | None) -> tuple[list[Decision], Removed]:
    """Decide ``group`` by joint removals, bisected where one fails (see the module docstring); also returns
    the accepted groups of two or more edges, each with the claim it was removed from."""
    seen: dict[frozenset[Edge], Tensor] = {}  # this receiver's evaluated claims -> per-example sums [n]
    out: list[Decision] = []
    removed: Removed = []
    todo = [group] if group else []
    while todo:
        part = todo.pop()
        claim = frozenset(state.kept - set(part))
        if claim not in seen:
            seen[claim] = ev.totals([claim])[0]  # [n]
        effect, low, high = (float(x[0]) for x in interval((seen[claim] - state.base)[None]))
        v = verdict(low, high, tau)
        if v == Verdict.DROPPED and len(part) > 1:
            removed.append((part, frozenset(state.kept), state.base))
            out += [Decision(e, v, How.SKIPPED, None, None) for e in part]
        elif v == Verdict.DROPPED or len(part) == 1:
            out.append(Decision(part[0], v, How.EXACT, effect, (low, high)))
        else:
            half = len(part) // 2
            todo += [part[half:], part[:half]]  # the lower |score| half is tried first
            continue
        if v == Verdict.DROPPED:
            state.kept.difference_update(part)
            state.base = seen[claim]
        _tell(progress, len(part))
    return out, removed


def _spot_check(ev: ExactEvaluator, done: list[Decision], removed: Removed, interval: Interval, tau: float,
                spot: float, rng: torch.Generator) -> tuple[list[Decision], int, int]:
    """Each skipped edge with probability ``spot``: its single removal from the claim its group left, in one call."""
    # a CPU generator: the draws are addressable whatever the model's device
    picks = [(torch.rand(len(part), generator=rng, device="cpu") < spot).tolist() for part, _, _ in removed]
    sample = [(e, before, base) for (part, before, base), pick in zip(removed, picks, strict=True)
              for e, p in zip(part, pick, strict=True) if p]
    if not sample:
        return done, 0, 0
    totals = ev.totals([before - {e} for e, before, _ in sample])  # [k, n]
    effect, low, high = interval(totals - torch.stack([base for _, _, base in sample]))  # [k] x3
    checked = {e: i for i, (e, _, _) in enumerate(sample)}
    out, bad = [], 0
    for d in done:
        if d.edge in checked:
            i = checked[d.edge]
            bad += verdict(float(low[i]), float(high[i]), tau) != Verdict.DROPPED
            d = Decision(d.edge, Verdict.DROPPED, How.SPOT, float(effect[i]), (float(low[i]), float(high[i])))
        out.append(d)
    return out, len(sample), bad


def _decide(ev: ExactEvaluator, state: _State, pending: list[Edge], interval: Interval, tau: float,
            progress: Callable[[int], None] | None, speculate: int = SPECULATION) -> list[Decision]:
    """ACDC's sequential decisions on ``pending``, evaluated speculatively (chain or fan) in batched calls of at
    most ``speculate`` claims."""
    out: list[Decision] = []
    chain, span = True, min(4, speculate)
    while pending:
        head = pending[:span]
        if chain:
            claims = [frozenset(state.kept - set(head[: j + 1])) for j in range(len(head))]
        else:
            claims = [frozenset(state.kept - {e}) for e in head]
        totals = ev.totals(claims)  # [k, n]
        used = 0
        for j, e in enumerate(head):
            effect, low, high = (float(x[0]) for x in interval((totals[j] - state.base)[None]))  # vs the claim now
            v = verdict(low, high, tau)
            out.append(Decision(e, v, How.EXACT, effect, (low, high)))
            used = j + 1
            if v == Verdict.DROPPED:
                state.kept.discard(e)
                state.base = totals[j]
                if not chain:
                    chain = True
                    break
            elif chain:
                chain = False
                break
        _tell(progress, used)
        span = min(2 * span, speculate) if used == len(head) else max(min(2, speculate), span // 2)  # grow if right
        pending = pending[used:]
    return out

"""``check_claim``: every contract that applies to one claim on one model and batch, as one result per check.

``run_checks`` returns a ``CheckResult`` per check (what ``scrub check`` prints, one line each); ``check_claim``
raises the first failure's ``AssertionError`` (its message is the reproducer), for use inside a property test.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Callable

import networkx as nx
from torch import Tensor
from transformer_lens import HookedTransformer

from scrub.claims.hypothesis import Claim
from scrub.engine.treeify import SamplingOptions, TreeTooLargeError
from scrub.experiment.runner import SELF_DRAW_WARNING
from scrub.testing import invariants, purity
from scrub.testing.graphs import as_claim, has_mask, head_inputs

REFERENCE_ROWS = 4  # examples the naive reference evaluates (one forward pass per path copy)
REFERENCE_SEQ = 12  # ... and their length


class Status(str, Enum):
    PASS = "pass"
    WARN = "warn"  # holds, but the numbers may mean less than they say
    SKIP = "skip"  # does not apply, or too large to check
    FAIL = "FAIL"


@dataclass(frozen=True)
class CheckResult:
    """One check: its name, its status and what it found (on a failure: the AssertionError's reproducer)."""

    name: str
    status: Status
    detail: str

    def line(self) -> str:
        """``pass  name: first line of the detail``."""
        return f"{self.status.value:<5} {self.name}: {self.detail.splitlines()[0] if self.detail else ''}"


def _run(name: str, passed: str, fn: Callable[[], object]) -> CheckResult:
    try:
        fn()
    except AssertionError as err:
        return CheckResult(name, Status.FAIL, str(err))
    except TreeTooLargeError as err:
        return CheckResult(name, Status.SKIP, f"too large for the naive reference ({err})")
    return CheckResult(name, Status.PASS, passed)


def function_checks(claim: Claim, tokens: Tensor, *, seed: int = 0) -> list[CheckResult]:
    """Features and positions masks are functions of each row's tokens; query-key masks of the positions."""
    feats = {n.feature.name: n.feature for n in claim.nodes if n.feature is not None}
    positions = {id(getattr(e.positions, 'fn', e.positions)): e.positions for e in claim.edges  # one per function
                 if e.positions is not None}
    masks = {id(e.qk_mask): e.qk_mask for e in claim.edges if e.qk_mask is not None}
    same = "rows permuted, reversed, duplicated and alone: same values"

    def every(check: Callable[[object], None], items: list) -> Callable[[], None]:
        def run() -> None:
            for item in items:
                check(item)
        return run

    out = []
    for what, items, check, of in (
            ("features", list(feats.values()),
             lambda f: purity.feature_is_a_function_of_tokens(f, tokens, seed=seed), "their row's tokens"),
            ("positions masks", list(positions.values()),
             lambda p: purity.positions_are_a_function_of_tokens(p, tokens, seed=seed), "their row's tokens"),
            ("query-key masks", list(masks.values()),
             lambda m: purity.qk_mask_is_a_function_of_positions(m, tokens.shape[1]), "the positions")):
        if not items:
            out.append(CheckResult(what, Status.SKIP, f"the claim has no {what}"))
        else:
            out.append(_run(what, f"{len(items)} of them, each a function of {of} ({same})", every(check, items)))
    return out


def model_checks(model: HookedTransformer, tokens: Tensor, *, seed: int = 0,
                 options: SamplingOptions = SamplingOptions()) -> None:
    """The claim-free contracts: the full claim is the clean run, the empty claim the resampled baseline."""
    invariants.full_claim_is_clean(model, tokens, seed=seed, options=options)
    invariants.empty_claim_is_baseline(model, tokens, seed=seed, options=options)


def resampling_check(model: HookedTransformer, claim: Claim, tokens: Tensor, *, seed: int = 0,
                     options: SamplingOptions = SamplingOptions(),
                     warn_above: float = SELF_DRAW_WARNING) -> CheckResult:
    """Every feature resamples: FAIL when a node's feature draws all return the datum itself (the claim on it is
    never tested), WARN when more than ``warn_above`` of them do (``run`` warns at the same share)."""
    name = "resampling"
    try:
        rates = invariants.every_feature_resamples(model, claim, tokens, seed=seed, options=options)
    except AssertionError as err:
        return CheckResult(name, Status.FAIL, str(err))
    if not rates:
        return CheckResult(name, Status.SKIP, "the claim has no features")
    worst = max(rates, key=rates.__getitem__)
    text = (f"every feature resamples; highest self-draw rate {rates[worst]:.0%} (node {worst!r}) on "
            f"{tokens.shape[0]} examples")
    return CheckResult(name, Status.WARN if rates[worst] > warn_above else Status.PASS, text)


def run_checks(model: HookedTransformer, claim: Claim | nx.DiGraph, tokens: Tensor, *, seed: int = 0,
               options: SamplingOptions = SamplingOptions(), engine_only: bool = False) -> list[CheckResult]:
    """Every check that applies to ``claim`` on ``model`` and ``tokens`` [batch, seq] (a dataset of its own);
    ``engine_only``: the engine's contracts only, not the claim's own (its functions' purity, its resampling)."""
    claim = as_claim(claim, model)
    small = tokens[:REFERENCE_ROWS, :REFERENCE_SEQ]  # [rows, seq]
    out = [_run("model", "the full claim reproduces the clean logits, the empty claim is the model on resampled inputs",
                lambda: model_checks(model, tokens, seed=seed, options=options))]
    out += [] if engine_only else function_checks(claim, tokens, seed=seed)
    out.append(_run("draws", "every draw agrees with its parent on the feature, comes from the pool and is the "
                             "datum itself only when nothing else agrees",
                    lambda: invariants.draws_agree_with_parents(model, claim, tokens, seed=seed, options=options)))
    if not engine_only:
        out.append(resampling_check(model, claim, tokens, seed=seed, options=options))
    out.append(_run("reference", f"the engine equals the naive reference on {small.shape[0]} examples x "
                                 f"{small.shape[1]} tokens (float64)",
                    lambda: invariants.engine_equals_reference(model, claim, small, seed=seed, options=options)))
    out.append(_run("batching", f"draws and logits of {tokens.shape[0]} examples are the same in batches of 2 "
                                f"(each with a fresh sampler) as in one batch",
                    lambda: invariants.draws_independent_of_batching(model, claim, tokens, seed=seed, options=options)))
    masked = [key for key in head_inputs(claim) if has_mask(claim, key)]
    if masked:
        out.append(_run("trivial masks", f"all-true masks = the unmasked claim, all-false = the input resampled, on "
                                         f"{min(len(masked), 2)} masked head inputs",
                        lambda: invariants.trivial_masks_are_exact(model, claim, small, seed=seed, options=options,
                                                                   limit=2, masked_only=True)))
    return out


def check_claim(model: HookedTransformer, claim: Claim | nx.DiGraph, tokens: Tensor, *, seed: int = 0,
                options: SamplingOptions = SamplingOptions(), engine_only: bool = False) -> list[CheckResult]:
    """Run every check that applies (``engine_only``: the engine's contracts only, e.g. for random claims on tiny
    batches, whose features often have no agreeing example); raise the first failure's ``AssertionError`` (a
    reproducer). Returns the results (passes, warnings and skips) when nothing fails."""
    results = run_checks(model, claim, tokens, seed=seed, options=options, engine_only=engine_only)
    for result in results:
        if result.status == Status.FAIL:
            raise AssertionError(f"{result.name}: {result.detail}")
    return results

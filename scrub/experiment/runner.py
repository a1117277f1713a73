"""``run``: a causal scrubbing experiment from a hypothesis and data to loss recovered with intervals.

Streams the dataset in batches; per batch it draws the data of every node from the whole dataset (or the
pool of ``SamplingOptions.pool`` sequences; draws depend on the seed and the datum only, never on the
batching), reads the clean run of those data (the whole dataset's, computed once when it fits in memory,
else one forward pass over the batch and every datum drawn from outside it), evaluates the hypothesis and
the baseline with the engine, and keeps per-example losses at the scored positions.
Under torchrun the batches are shared out across the processes (``scrub.experiment.distributed``) and every process
returns the one-process result.

Every argument is checked before any work (``RunInputError``, a ``ValueError``: one line naming the problem
and the fix): the model, the token ids (integers inside the vocabulary, at least two distinct examples of at
least two tokens), the seed, the batch size, the positions (at least one must be scored), the baseline (not
the hypothesis object or file itself), the claims on the first batch (``hypothesis.check_on``) and the
memory a batch needs against what the machine has. What can only be seen in the numbers is reported in
``ScrubResult.warnings`` (the baseline not clearly worse than the clean run, a baseline equal to the
hypothesis, examples without a scored position, nodes whose feature draws returned the datum itself for
more than ``SELF_DRAW_WARNING`` of rows); a baseline exactly as good as the clean run makes loss recovered
0/0 and raises ``UndefinedRecoveryError``. No example is dropped for the batching: a last batch of one
example joins the one before.

``metric`` chooses the per-token quantity (``scrub.metrics``): "loss" (next-token cross-entropy, the default)
or "kl" (KL divergence of the evaluated model's next-token distribution from the clean run's; 0 for the clean
run, so the recovered fraction is (KL_baseline − KL_scrubbed) / KL_baseline). Either way the result's
``loss_*`` fields, ``loss_recovered`` and the per-example fields hold that metric's values.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import networkx as nx
import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from scrub.claims.hypothesis import Claim, check_on, empty_graph
from scrub.claims.structure import Structure
from scrub.data.candidates import GoodCandidates
from scrub.engine.compute import CleanRun, check_supported, clean_run, clean_run_batched
from scrub.engine.evaluator import evaluate
from scrub.engine.sampling import Sampler
from scrub.engine.treeify import SamplingOptions, TreeNode, assign, localize, treeify
from scrub.errors import ScrubError
from scrub.experiment import checks, distributed
from scrub.experiment.inputs import (
    Positions,
    RunInputError,
    as_claim,
    batch_bounds,
    check_arguments,
    check_model,
    check_tokens,
    same_claim,
    score_mask,
)
from scrub.jsonable import plain
from scrub.memory import available_memory, check_memory, clean_run_bytes, run_batch_bytes
from scrub.metrics import (
    METRIC_LABELS,
    BatchScores,
    ExampleLosses,
    MetricName,
    bootstrap_recovered,
    recovered,
    recovery_warnings,
    score_batch,
    token_view,
)
from scrub.progress import each

SELF_DRAW_WARNING = 0.1  # warn when a node's feature draws return the datum itself for more than this share
WHOLE_RUN_SHARE = 0.25  # keep the whole dataset's clean run when it needs less than this share of free memory


class UndefinedRecoveryError(ScrubError):
    """The baseline loss equals the clean loss (with ``metric="kl"``: the baseline's KL from the clean run is 0),
    so loss recovered (a ratio over their difference) is undefined."""


@dataclass(frozen=True)
class ScrubResult:
    """Losses at the scored positions, loss recovered with a bootstrap interval, and the per-example view.

    ``metric`` names the per-token quantity the numbers are of: "loss" (cross-entropy, nats) or "kl" (KL
    divergence from the clean run's next-token distribution, nats). The field names stay ``loss_*`` for
    both: with "kl", ``loss_clean`` is 0, ``loss_baseline``/``loss_scrubbed`` are mean KLs and
    ``loss_recovered`` is KL recovered. ``token_view`` (``scrub.metrics.TokenView`` as a dict: mean_delta,
    mean_abs_delta, p10, p25, p50, p75, p90, share_positive, n_tokens) describes the per-token differences
    Δ = scrubbed − clean at the scored positions; mean_abs_delta ≫ |mean_delta| means cancellation."""

    hypothesis: str
    baseline: str
    loss_clean: float
    loss_baseline: float
    loss_scrubbed: float
    loss_recovered: float
    ci_low: float
    ci_high: float
    n_examples: int
    n_tokens: int
    self_sample_rate: float
    per_example_clean: tuple[float, ...]
    per_example_baseline: tuple[float, ...]
    per_example_scrubbed: tuple[float, ...]
    warnings: tuple[str, ...] = ()  # what may make the numbers mean less than they say (see ``summary``)
    self_draws: dict[str, float] = field(default_factory=dict)  # per hypothesis node: share of self feature draws
    metric: str = "loss"  # the per-token quantity of every number: "loss" or "kl" (``MetricName``)
    token_view: dict[str, float] = field(default_factory=dict)  # TokenView fields of Δ = scrubbed − clean per token

    def per_example_recovered(self) -> Tensor:
        """Loss recovered of each example alone (unstable where its baseline and clean losses are close)."""
        c, b, s = (torch.tensor(x)
                   for x in (self.per_example_clean, self.per_example_baseline, self.per_example_scrubbed))
        return recovered(c, b, s)

    def to_dict(self, *, per_example: bool = False) -> dict:
        """The fields as JSON-ready values (lists for tuples, None for a non-finite number)."""
        out = asdict(self)
        if not per_example:
            for key in ("per_example_clean", "per_example_baseline", "per_example_scrubbed"):
                out.pop(key)
        return {key: plain(value) for key, value in out.items()}

    def _repr_html_(self) -> str:
        """The notebook view: the numbers and the per-example distribution (``scrub.views.report``; the claim
        graph, token and attention views need the model and data: ``scrub.views.report.explain``)."""
        from scrub.views.report import RunReport

        return RunReport(self)._repr_html_()

    def to_html(self, path: str | Path) -> Path:
        """The notebook view as one self-contained HTML page at ``path``."""
        from scrub.views.report import RunReport

        return RunReport(self).to_html(path)

    def summary(self) -> str:
        """The headline line, the "token-level:" line (when there is a token view), then one line per warning,
        each starting with "warning:"."""
        label = METRIC_LABELS.get(self.metric, self.metric)
        values = (f"clean {self.loss_clean:.4f}, baseline {self.loss_baseline:.4f}, scrubbed {self.loss_scrubbed:.4f}"
                  if self.metric == "loss" else
                  f"KL from clean: baseline {self.loss_baseline:.4f}, scrubbed {self.loss_scrubbed:.4f}")
        line = (f"{self.hypothesis} vs {self.baseline}: {label} recovered {self.loss_recovered:.3f} "
                f"[95% CI {self.ci_low:.3f}, {self.ci_high:.3f}]  ({values}; "
                f"{self.n_examples} examples, {self.n_tokens} tokens)")
        lines = [line]
        view = self.token_view
        if view:
            lines.append(f"token-level: scrubbed - clean {label} per token: mean {view['mean_delta']:+.4f}, "
                         f"mean |Δ| {view['mean_abs_delta']:.4f}; "
                         + ", ".join(f"{q}={view[q]:+.3f}" for q in ("p10", "p25", "p50", "p75", "p90"))
                         + f"; {view['share_positive']:.0%} of tokens worse than clean")
        return "\n".join(lines + [f"warning: {w}" for w in self.warnings])


@torch.no_grad()
def run(model: HookedTransformer, hypothesis: Claim | nx.DiGraph | str | Path, data: Tensor, *,
        baseline: Claim | nx.DiGraph | str | Path | None = None, positions: Positions = "all", seed: int = 0,
        batch_size: int = 32, options: SamplingOptions = SamplingOptions(), device: str | torch.device | None = None,
        n_bootstrap: int = 1000, progress: bool = True, self_draw_warning: float = SELF_DRAW_WARNING,
        metric: MetricName = "loss") -> ScrubResult:
    """Scrub ``hypothesis`` on ``data`` [n, seq] and report loss recovered against ``baseline``
    (default: the empty hypothesis, every path resampled). ``metric="kl"`` scores the KL divergence from the
    clean run's next-token distribution instead of the loss (KL recovered = (KL_baseline − KL_scrubbed) /
    KL_baseline; see ``ScrubResult``).

    Data are cut into batches of ``batch_size`` (a last batch of one example joins the one before). Every
    argument is checked before any work (``RunInputError``); the result's ``warnings`` say what may make
    its numbers mean less than they say, e.g. a node whose feature draws returned the datum itself for more
    than ``self_draw_warning`` of rows.

    The model stays where it is: the run uses its device (``device``, if given, must match it). Launched by
    torchrun, every process calls ``run`` with the same arguments; batch ``i`` is evaluated by rank
    ``i % world_size`` and every rank returns the result one process would (draws depend only on ``seed``
    and the batch index)."""
    setup = _prepare(model, hypothesis, data, baseline, positions, seed, batch_size, options, device, n_bootstrap,
                     self_draw_warning, metric)
    current = distributed.setup(setup.device)  # None for one process
    batches = distributed.shard(setup.bounds, current)  # this rank's (i, (start, stop))
    done = [(i, _scrub_batch(setup, i, start, stop))
            for i, (start, stop) in each(batches, f"scrub {setup.claim.name}", unit="batch", show=progress)]
    check = None if current is None else checks.rank_check(  # the claims' content and the data, labelled
        setup.claim, setup.base, setup.data, setup.data[slice(*setup.bounds[0])].to(setup.device), seed=seed,
        batch_size=batch_size, options=options, n_bootstrap=n_bootstrap, metric=metric,
        positions=positions if isinstance(positions, str) else "function")
    evaluated = distributed.gather(done, current, check=check)  # every rank's batches, in batch order
    return _summarise(setup, evaluated, positions, seed, n_bootstrap, self_draw_warning)


@dataclass(frozen=True)
class _Setup:
    """What every batch of a run shares, checked and built once before any batch: the claims and their trees,
    the batches and their scored positions, the sampler over the whole dataset (or pool) and, when it fits in
    memory, the whole dataset's clean run (each batch then only indexes its rows)."""

    model: HookedTransformer
    data: Tensor  # [n, seq]
    claim: Claim
    base: Claim
    same: bool  # the baseline is the same claim as the hypothesis
    tree: TreeNode
    base_tree: TreeNode
    bounds: list[tuple[int, int]]
    masks: list[Tensor]  # [batch, seq-1] scored positions per batch
    options: SamplingOptions
    metric: MetricName
    device: torch.device
    sampler: Sampler
    structure: Structure
    whole: CleanRun | None


@dataclass(frozen=True)
class _Batch:
    """One batch's outcome: per-example sums of the metric, the share of draws that returned their own datum,
    per-node self feature draws of the hypothesis and the baseline, and how many examples it holds."""

    losses: BatchScores
    self_rate: float
    self_draws: dict[str, float]
    base_self_draws: dict[str, float]
    rows: int


def _prepare(model, hypothesis, data, baseline, positions, seed, batch_size, options, device, n_bootstrap,
             self_draw_warning, metric) -> _Setup:
    """Check every argument (``RunInputError``: one line naming the fix) and build what the batches share."""
    check_model(model)
    checks.check_placement(model, data)  # never on the meta device
    checks.check_finite_model(model)  # a NaN weight: refused here, never blamed on a hypothesis file
    check_arguments(hypothesis, baseline, seed, batch_size, options, n_bootstrap, metric)
    if not 0 <= self_draw_warning <= 1:
        raise RunInputError(f"self_draw_warning is a share of rows, between 0 and 1 (got {self_draw_warning!r})")
    check_supported(model)
    model_device = next(model.parameters()).device
    if device is not None and torch.device(device) != model_device:
        raise RunInputError(f"the model is on {model_device} but device={device!r}; move it first with "
                            f"model.to({device!r}) (scrub never moves or changes your model)")
    data = check_tokens(model, data)
    claim = as_claim(hypothesis, model)
    base = (as_claim(empty_graph(), model, name="empty") if baseline is None
            else as_claim(baseline, model, name="baseline"))
    bounds = batch_bounds(data.shape[0], batch_size)
    largest = max(stop - start for start, stop in bounds)
    check_memory(run_batch_bytes(model.cfg, largest, data.shape[1], metric),
                 f"a batch of {largest} x {data.shape[1]} tokens",
                 "use a smaller batch_size (--batch-size) or shorter sequences (--seq-len)", model_device)
    masks = _score_masks(data, bounds, positions, model_device)
    first = data[bounds[0][0]:bounds[0][1]].to(model_device)
    check_on(claim, first)
    check_on(base, first)
    budget = available_memory(model_device)
    whole = None  # the clean run of every example, kept when it fits: each batch then only gathers its rows
    if budget is not None and clean_run_bytes(model.cfg, data.shape[0], data.shape[1]) < WHOLE_RUN_SHARE * budget:
        whole = clean_run_batched(model, data.to(model_device), batch_size)
    return _Setup(model, data, claim, base, same_claim(claim, base), treeify(claim, options.unit),
                  treeify(base, options.unit), bounds, masks, options, metric, model_device,
                  Sampler(data, seed=seed, pool_size=options.pool, allow_self=options.allow_self),  # the whole dataset
                  Structure.of(model), whole)


def _score_masks(data: Tensor, bounds: list[tuple[int, int]], positions: Positions, device) -> list[Tensor]:
    """The scored prediction positions of every batch ([batch, seq-1] each); refuses positions that score none."""
    scoring = GoodCandidates.shipped() if positions == "good_candidates" else positions  # the list built once
    # the named modes per dataset (good candidates leave every row of the dataset out of their list), so the
    # batch size changes no number; a positions function is called per batch, as documented
    whole = score_mask(data.to(device), scoring).cpu() if isinstance(positions, str) else None  # [n, seq-1]
    masks = [score_mask(data[start:stop].to(device), scoring).cpu() if whole is None else whole[start:stop]
             for start, stop in bounds]  # [batch, seq-1] each
    if int(sum(int(m.sum()) for m in masks)) == 0:
        how = positions if isinstance(positions, str) else "the positions function"
        raise RunInputError(f"no position is scored: positions={how!r} selects none of the {data.shape[1] - 1} "
                            f"prediction positions of any example"
                            + ("; induction candidates need a token seen earlier in the sequence: use longer "
                               "sequences (--seq-len) or positions='all'" if positions == "candidates" else ""))
    return masks


def _scrub_batch(setup: _Setup, i: int, start: int, stop: int) -> _Batch:
    """Scrub one batch, as the write-up does: sample the data of every node, read their clean run, evaluate the
    hypothesis and the baseline on it, and score both against the clean logits."""
    ids = torch.arange(start, stop, device="cpu")  # [batch] the examples scored in this batch: CPU dataset ids (draws)
    drawn = [assign(t, setup.sampler, ids, options=setup.options, structure=setup.structure)
             for t in (setup.tree, setup.base_tree)]
    # common random numbers; indices into the whole dataset's clean run, or into the batch's run of its
    # examples and every datum drawn from outside it
    every, (scrub_data, base_data) = localize(drawn, ids, setup.data.shape[0], whole=setup.whole is not None)
    clean = setup.whole if setup.whole is not None else clean_run(setup.model, setup.data[every].to(setup.device))
    scrubbed, _ = evaluate(setup.model, setup.tree, scrub_data, clean)  # [batch, seq, d_vocab]
    baselined, _ = evaluate(setup.model, setup.base_tree, base_data, clean)  # [batch, seq, d_vocab]
    clean_logits = clean.logits[scrub_data[setup.tree].datum]  # [batch, seq, d_vocab] the examples of this batch
    tokens = setup.data[start:stop].to(setup.device)  # [batch, seq]
    losses = score_batch(setup.metric, tokens, setup.masks[i], clean_logits, baselined, scrubbed)
    return _Batch(losses, scrub_data.self_sample_rate(), scrub_data.self_draws(), base_data.self_draws(),
                  stop - start)


def _summarise(setup: _Setup, evaluated: list[_Batch], positions: Positions, seed: int, n_bootstrap: int,
               self_draw_warning: float) -> ScrubResult:
    """Join the batches into the result: mean metrics of the examples with a scored position, loss recovered
    with its bootstrap interval, the token view, the self-draw rates and the warnings."""
    claim, base, metric = setup.claim, setup.base, setup.metric
    parts = {key: [getattr(part.losses, key) for part in evaluated] for key in ("clean", "baseline", "scrubbed")}
    view = token_view(torch.cat([part.losses.token_delta for part in evaluated]))  # unscored examples add none
    rows = [part.rows for part in evaluated]
    joined = {k: ExampleLosses(torch.cat([p.total for p in v]), torch.cat([p.count for p in v]))
              for k, v in parts.items()}
    checks.check_finite_losses(joined)  # no nan result is ever reported
    keep = joined["clean"].count > 0
    joined = {k: ExampleLosses(v.total[keep], v.count[keep]) for k, v in joined.items()}
    lc, lb, ls = (joined[k].mean() for k in ("clean", "baseline", "scrubbed"))
    _check_defined(lc, lb, metric, base.name)
    self_draws = _weighted([part.self_draws for part in evaluated], rows)
    warnings = recovery_warnings(joined["clean"], joined["baseline"], metric=metric)
    if setup.same:
        warnings.insert(0, f"the baseline {base.name!r} is the same claim as the hypothesis {claim.name!r}: "
                           f"{METRIC_LABELS[metric]} recovered is 0 by construction")
    dropped = int((~keep).sum())
    if dropped:
        warnings.append(f"{dropped} of {keep.numel()} examples have no scored position and are left out of every "
                        f"number (positions={positions if isinstance(positions, str) else 'function'!r})")
    base_draws = _weighted([part.base_self_draws for part in evaluated], rows)
    warnings += _self_draw_warnings({f"hypothesis {claim.name!r}": self_draws, f"baseline {base.name!r}": base_draws},
                                    setup.options, self_draw_warning)
    ci = bootstrap_recovered(joined["clean"], joined["baseline"], joined["scrubbed"], n_resamples=n_bootstrap,
                             seed=seed)
    return checks.with_data_checks(ScrubResult(  # + data warnings; copies of a datum count as self draws
        hypothesis=claim.name, baseline=base.name, loss_clean=lc, loss_baseline=lb, loss_scrubbed=ls,
        loss_recovered=float(recovered(lc, lb, ls)), ci_low=ci.low, ci_high=ci.high,
        n_examples=int(keep.sum()), n_tokens=int(joined["clean"].count.sum()),
        self_sample_rate=sum(part.self_rate * r for part, r in zip(evaluated, rows, strict=True)) / max(sum(rows), 1),
        per_example_clean=tuple(joined["clean"].per_example().tolist()),
        per_example_baseline=tuple(joined["baseline"].per_example().tolist()),
        per_example_scrubbed=tuple(joined["scrubbed"].per_example().tolist()),
        warnings=tuple(warnings), self_draws=self_draws, metric=metric, token_view=asdict(view),
    ), setup.model, setup.data, setup.tree, seed=seed, options=setup.options, structure=setup.structure)


def _check_defined(lc: float, lb: float, metric: MetricName, base: str) -> None:
    """Refuse a baseline exactly as good as the clean run: loss (or KL) recovered would be 0/0."""
    if lb == lc and metric == "kl":
        raise UndefinedRecoveryError(
            f"the baseline's KL divergence from the clean run is 0 on these data: the baseline {base!r} changes "
            f"no prediction at the scored positions, so KL recovered is 0/0; use a baseline that resamples more "
            f"(none: the empty hypothesis), other positions, or sequences that differ where they are scored")
    if lb == lc:
        raise UndefinedRecoveryError(
            f"the baseline loss equals the clean loss ({lc:.6g}) on these data: the baseline {base!r} changes "
            f"nothing the scored positions depend on, so loss recovered is 0/0; use a baseline that resamples more "
            f"(none: the empty hypothesis), other positions, or sequences that differ where they are scored")


def _self_draw_warnings(by_claim: dict[str, dict[str, float]], options: SamplingOptions, limit: float) -> list[str]:
    """A warning per node whose feature draws returned the datum itself for more than ``limit`` of rows."""
    out = []
    for label, draws in by_claim.items():
        for node, rate in draws.items():
            if rate > limit:
                where = "the dataset" if options.pool is None else f"the pool of {options.pool}"
                why = (f"allow_self lets a draw return it, and few examples of {where} agree on the feature"
                       if options.allow_self else f"no other example of {where} agrees on the feature")
                out.append(f"{label} node {node!r}: {rate:.0%} of its feature draws returned the datum itself "
                           f"({why}), so the claim is barely tested there; use more examples (--n), a larger "
                           f"pool, or a coarser feature (a per-position one, e.g. is_repeat(per_position=True), "
                           f"agrees at far more positions than a whole-sequence one)")
    return out


def _weighted(per_batch: list[dict[str, float]], rows: list[int]) -> dict[str, float]:
    """Per-node rates of every batch averaged over rows (each batch weighs as many rows as it has)."""
    total = sum(rows)
    out: dict[str, float] = {}
    for draws, r in zip(per_batch, rows, strict=True):
        for node, rate in draws.items():
            out[node] = out.get(node, 0.0) + rate * r / total
    return out

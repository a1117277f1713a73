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

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Literal

import networkx as nx
import torch
from torch import Tensor
from tqdm import tqdm
from transformer_lens import HookedTransformer

from scrub.claims.files import load_hypothesis
from scrub.claims.hypothesis import Claim, HypothesisError, check_on, empty_graph, validate
from scrub.claims.structure import Structure
from scrub.data.batches import all_positions, available_memory, check_memory, induction_candidates
from scrub.data.candidates import GoodCandidates
from scrub.engine.compute import check_supported, clean_run, clean_run_batched, clean_run_bytes
from scrub.engine.evaluator import evaluate
from scrub.engine.sampling import Sampler
from scrub.engine.treeify import SamplingOptions, assign, localize, treeify
from scrub.errors import ScrubError
from scrub.experiment import checks, distributed
from scrub.metrics import (
    METRIC_LABELS,
    ExampleLosses,
    MetricName,
    bootstrap_recovered,
    check_metric,
    recovered,
    recovery_warnings,
    score_batch,
    token_view,
)

# every prediction position; induction candidates (the current token occurred before); or REMIX-like "good
# induction candidate" tokens (``scrub.data.candidates.good_candidates``)
PositionsMode = Literal["all", "candidates", "good_candidates"]
Positions = PositionsMode | Callable[[Tensor], Tensor]  # or a function tokens -> bool mask, both [batch, seq]

MAX_SEED = 2**63 - 1  # seeds are 0..MAX_SEED: torch generators take 64 bits, and -1 would alias 2**64 - 1
SELF_DRAW_WARNING = 0.1  # warn when a node's feature draws return the datum itself for more than this share
WHOLE_RUN_SHARE = 0.25  # keep the whole dataset's clean run when it needs less than this share of free memory


class RunInputError(ScrubError):
    """An argument of ``run`` that cannot give a meaningful result; the message names the fix."""


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
        return {key: _plain(value) for key, value in out.items()}

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


def _plain(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def as_claim(hypothesis: Claim | nx.DiGraph | str | Path, model: HookedTransformer, *, name: str = "graph") -> Claim:
    """Accept a Claim, a graph, or the path of a hypothesis file."""
    if isinstance(hypothesis, Claim):
        return hypothesis
    if isinstance(hypothesis, nx.DiGraph):
        claim = validate(hypothesis, model)
        return Claim(name, claim.nodes, claim.edges, claim.root)
    if isinstance(hypothesis, (str, Path)):
        return load_hypothesis(hypothesis, model)
    raise HypothesisError(f"a hypothesis is a networkx.DiGraph, a hypothesis file path or a Claim, "
                          f"got {type(hypothesis).__name__}")


def score_mask(tokens: Tensor, positions: Positions) -> Tensor:
    """Which prediction positions are scored: [batch, seq-1] bool."""
    if callable(positions):
        name = getattr(positions, "__name__", "positions")
        try:
            mask = positions(tokens)
        except Exception as err:  # the caller's function: one line saying which and why
            raise RunInputError(f"the positions function {name!r} failed on tokens of shape {list(tokens.shape)}: "
                                f"{type(err).__name__}: {err}") from err
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.shape != tokens.shape:
            got = (f"a {str(mask.dtype).replace('torch.', '')} tensor of shape {list(mask.shape)}"
                   if isinstance(mask, Tensor) else f"a {type(mask).__name__}")
            raise RunInputError(f"the positions function {name!r} returned {got}: it must return a bool mask of the "
                                f"tokens' shape {list(tokens.shape)} (e.g. a comparison, or mask.bool())")
    elif positions == "all":
        mask = all_positions(tokens)
    elif positions == "candidates":
        mask = induction_candidates(tokens)  # the current token occurred before: induction can help
    elif positions == "good_candidates":
        mask = GoodCandidates.shipped()(tokens.cpu()).to(tokens.device)  # the current token is a good candidate
    else:
        raise RunInputError(f"positions must be 'all', 'candidates', 'good_candidates' or a function tokens -> bool "
                            f"mask, got {positions!r}")
    return mask[:, :-1]


def _check_model(model: object) -> None:
    if not isinstance(model, HookedTransformer):
        hint = (f"load it first: scrub.run(scrub.load_model({model!r}), ...)" if isinstance(model, (str, Path))
                else "load one with scrub.load_model(name or checkpoint directory)")
        raise RunInputError(f"model must be a TransformerLens HookedTransformer, got {type(model).__name__}; {hint}")


def _check_tokens(model: HookedTransformer, data: Tensor) -> Tensor:
    if not isinstance(data, Tensor):
        raise RunInputError(f"data must be a torch tensor of token ids [n_examples, seq], got {type(data).__name__}; "
                            f"convert it with torch.as_tensor(data, dtype=torch.long)")
    if data.dim() != 2:
        raise RunInputError(f"data must be a LongTensor of token ids [n_examples, seq], got shape {list(data.shape)}"
                            + ("; add the batch dimension with data[None]" if data.dim() == 1 else ""))
    if data.dtype == torch.bool or data.is_floating_point() or data.is_complex():
        raise RunInputError(f"token ids must be integers, got a {str(data.dtype).replace('torch.', '')} tensor "
                            f"(scrub never rounds ids); convert whole-number ids with data.long()")
    n, seq = data.shape
    if n < 2:
        raise RunInputError(f"need at least 2 examples, got {n}: resampling draws inputs from the other examples")
    if seq < 2:
        raise RunInputError(f"sequences of length {seq} have no next token to predict: the loss needs at least 2 "
                            f"tokens per example (position t predicts token t+1)")
    if seq > model.cfg.n_ctx:
        raise RunInputError(f"sequences of length {seq} are longer than the model's n_ctx {model.cfg.n_ctx}; "
                            f"use sequences of at most {model.cfg.n_ctx} tokens")
    bad = (data < 0) | (data >= model.cfg.d_vocab)  # [n, seq]
    if bool(bad.any()):
        row, col = (int(i) for i in bad.nonzero()[0])
        raise RunInputError(f"token id {int(data[row, col])} (example {row}, position {col}; {int(bad.sum())} such "
                            f"ids) is outside the model's vocabulary of {model.cfg.d_vocab} "
                            f"(ids 0..{model.cfg.d_vocab - 1}): was the data made with another tokenizer?")
    if bool((data == data[:1]).all()):
        raise RunInputError(f"all {n} examples are the same sequence: every resampled input equals the clean one, so "
                            f"there is nothing to measure; use distinct examples")
    return data.long()


def check_seed(seed: object, name: str = "seed") -> int:
    """``seed`` if it is a whole number in 0..MAX_SEED, else ``RunInputError``."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise RunInputError(f"{name} must be a whole number (0 to 2**63 - 1), got {seed!r}: runs are reproducible "
                            f"only from a given seed")
    if not 0 <= seed <= MAX_SEED:
        raise RunInputError(f"{name} must be between 0 and 2**63 - 1, got {seed}")
    return seed


def check_batch_size(batch_size: object, name: str = "batch_size") -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 2:
        raise RunInputError(f"{name} must be a whole number ≥ 2, got {batch_size!r}: a batch holds at least two "
                            f"examples (default 32; it trades memory for speed, draws come from the whole dataset)")
    return batch_size


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, stop) of every batch: ``batch_size`` examples each; a last batch of a single example (which
    could draw from no other) joins the one before, so no example is dropped."""
    bounds = [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < 2:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def batch_memory(cfg, batch_size: int, seq_len: int, metric: MetricName = "loss") -> int:
    """About how many bytes one batch of ``run`` needs at its peak: the clean run's component outputs, the
    clean, scrubbed and baseline logits and a log-softmax (with "kl": three more vocabulary-wide tensors),
    and attention patterns. A guard against sizes that cannot fit, not a measurement."""
    itemsize = torch.empty((), dtype=cfg.dtype).element_size()
    vocab_wide = 7 if metric == "kl" else 4  # logits and log-softmaxes (KL: both distributions, a product)
    per_position = vocab_wide * cfg.d_vocab + cfg.n_layers * (cfg.n_heads + 4) * cfg.d_model + 2 * cfg.n_heads * seq_len
    return batch_size * seq_len * per_position * itemsize


def _same_claim(a: Claim, b: Claim) -> bool:
    """Whether two claims are the same graph (same nodes, features and edges; names aside)."""
    return a.nodes == b.nodes and set(a.edges) == set(b.edges)


def _check_arguments(hypothesis, baseline, seed, batch_size, options, n_bootstrap, metric) -> None:
    check_seed(seed)
    try:
        check_metric(metric)
    except ValueError as err:
        raise RunInputError(f"{err}: 'loss' is next-token cross-entropy, 'kl' the KL divergence from the clean "
                            f"run's predictions") from None
    check_batch_size(batch_size)
    if not isinstance(options, SamplingOptions):
        raise RunInputError(f"options must be a scrub.SamplingOptions, got {type(options).__name__}")
    pool = options.pool
    if pool is not None and (isinstance(pool, bool) or not isinstance(pool, int) or pool < 2):
        raise RunInputError(f"SamplingOptions.pool must be None (the whole dataset) or a whole number ≥ 2, got "
                            f"{pool!r}: a draw needs at least one other example to come from")
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, int) or n_bootstrap < 1:
        raise RunInputError(f"n_bootstrap must be a whole number ≥ 1, got {n_bootstrap!r}")
    if baseline is not None and (baseline is hypothesis or (
            isinstance(baseline, (str, Path)) and isinstance(hypothesis, (str, Path))
            and Path(baseline).resolve() == Path(hypothesis).resolve())):
        raise RunInputError("the baseline is the hypothesis itself: scrubbed and baseline losses would be equal and "
                            "loss recovered 0 (or 0/0); pass another baseline, or none for the empty hypothesis")


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
    _check_model(model)
    checks.check_placement(model, data)
    checks.check_finite_model(model)
    _check_arguments(hypothesis, baseline, seed, batch_size, options, n_bootstrap, metric)
    label = METRIC_LABELS[metric]
    if not 0 <= self_draw_warning <= 1:
        raise RunInputError(f"self_draw_warning is a share of rows, between 0 and 1 (got {self_draw_warning!r})")
    check_supported(model)
    model_device = next(model.parameters()).device
    if device is not None and torch.device(device) != model_device:
        raise RunInputError(f"the model is on {model_device} but device={device!r}; move it first with "
                            f"model.to({device!r}) (scrub never moves or changes your model)")
    device = model_device
    data = _check_tokens(model, data)
    claim = as_claim(hypothesis, model)
    base = (as_claim(empty_graph(), model, name="empty") if baseline is None
            else as_claim(baseline, model, name="baseline"))
    same = _same_claim(claim, base)  # a sanity anchor (e.g. the empty hypothesis against the empty baseline)
    bounds = batch_bounds(data.shape[0], batch_size)
    largest = max(stop - start for start, stop in bounds)
    check_memory(batch_memory(model.cfg, largest, data.shape[1], metric),
                 f"a batch of {largest} x {data.shape[1]} tokens",
                 "use a smaller batch_size (--batch-size) or shorter sequences (--seq-len)", device)
    scoring = GoodCandidates.shipped() if positions == "good_candidates" else positions  # the list built once
    # the named modes per dataset (good candidates leave every row of the dataset out of their list), so the
    # batch size changes no number; a positions function is called per batch, as documented
    whole_mask = score_mask(data.to(device), scoring).cpu() if isinstance(positions, str) else None  # [n, seq-1]
    masks = [score_mask(data[start:stop].to(device), scoring).cpu() if whole_mask is None else whole_mask[start:stop]
             for start, stop in bounds]  # [batch, seq-1] each
    scored = torch.cat([m.sum(1) for m in masks])  # [n] scored positions per example
    if int(scored.sum()) == 0:
        how = positions if isinstance(positions, str) else "the positions function"
        raise RunInputError(f"no position is scored: positions={how!r} selects none of the {data.shape[1] - 1} "
                            f"prediction positions of any example"
                            + ("; induction candidates need a token seen earlier in the sequence: use longer "
                               "sequences (--seq-len) or positions='all'" if positions == "candidates" else ""))
    first = data[bounds[0][0]:bounds[0][1]].to(device)
    check_on(claim, first)
    check_on(base, first)
    tree, base_tree = treeify(claim, options.unit), treeify(base, options.unit)
    current = distributed.setup(device)  # None for one process
    done: list[tuple[int, tuple]] = []  # (batch index, (losses, self rate, self draws, baseline self draws, rows))
    batches = distributed.shard(bounds, current)  # this rank's (i, (start, stop))
    sampler = Sampler(data, seed=seed, pool_size=options.pool, allow_self=options.allow_self)  # draws: whole dataset
    structure = Structure.of(model)
    budget = available_memory(device)
    whole = None  # the clean run of every example, kept when it fits: each batch then only gathers its rows
    if budget is not None and clean_run_bytes(model.cfg, data.shape[0], data.shape[1]) < WHOLE_RUN_SHARE * budget:
        whole = clean_run_batched(model, data.to(device), batch_size)
    for i, (start, stop) in tqdm(batches, desc=f"scrub {claim.name}", disable=not progress, leave=False):
        ids = torch.arange(start, stop)  # [batch] the examples scored in this batch
        drawn = [assign(t, sampler, ids, options=options, structure=structure) for t in (tree, base_tree)]
        # common random numbers; indices into the whole dataset's clean run, or into the batch's run of its
        # examples and every datum drawn from outside it
        every, (scrub_data, base_data) = localize(drawn, ids, data.shape[0], whole=whole is not None)
        clean = whole if whole is not None else clean_run(model, data[every].to(device))
        tokens = data[start:stop].to(device)  # [batch, seq]
        mask = masks[i]  # [batch, seq-1]
        scrubbed, _ = evaluate(model, tree, scrub_data, clean)
        baselined, _ = evaluate(model, base_tree, base_data, clean)
        clean_logits = clean.logits[scrub_data[tree].datum]  # [batch, seq, d_vocab] the examples of this batch
        losses = score_batch(metric, tokens, mask, clean_logits, baselined, scrubbed)
        done.append((i, (losses, scrub_data.self_sample_rate(), scrub_data.self_draws(), base_data.self_draws(),
                         stop - start)))
    check = None if current is None else checks.rank_check(
        claim, base, data, first, seed=seed, batch_size=batch_size, options=options, n_bootstrap=n_bootstrap,
        metric=metric, positions=positions if isinstance(positions, str) else "function")
    evaluated = distributed.gather(done, current, check=check)  # every rank's batches, in batch order
    parts = {key: [getattr(part[0], key) for part in evaluated] for key in ("clean", "baseline", "scrubbed")}
    view = token_view(torch.cat([part[0].token_delta for part in evaluated]))  # examples without scored tokens add none
    rows = [part[4] for part in evaluated]
    joined = {k: ExampleLosses(torch.cat([p.total for p in v]), torch.cat([p.count for p in v]))
              for k, v in parts.items()}
    checks.check_finite_losses(joined)
    keep = joined["clean"].count > 0
    joined = {k: ExampleLosses(v.total[keep], v.count[keep]) for k, v in joined.items()}
    lc, lb, ls = (joined[k].mean() for k in ("clean", "baseline", "scrubbed"))
    if lb == lc and metric == "kl":
        raise UndefinedRecoveryError(
            f"the baseline's KL divergence from the clean run is 0 on these data: the baseline {base.name!r} changes "
            f"no prediction at the scored positions, so KL recovered is 0/0; use a baseline that resamples more "
            f"(none: the empty hypothesis), other positions, or sequences that differ where they are scored")
    if lb == lc:
        raise UndefinedRecoveryError(
            f"the baseline loss equals the clean loss ({lc:.6g}) on these data: the baseline {base.name!r} changes "
            f"nothing the scored positions depend on, so loss recovered is 0/0; use a baseline that resamples more "
            f"(none: the empty hypothesis), other positions, or sequences that differ where they are scored")
    self_draws = _weighted([part[2] for part in evaluated], rows)
    warnings = recovery_warnings(joined["clean"], joined["baseline"], metric=metric)
    if same:
        warnings.insert(0, f"the baseline {base.name!r} is the same claim as the hypothesis {claim.name!r}: {label} "
                           f"recovered is 0 by construction")
    dropped = int((~keep).sum())
    if dropped:
        warnings.append(f"{dropped} of {keep.numel()} examples have no scored position and are left out of every "
                        f"number (positions={positions if isinstance(positions, str) else 'function'!r})")
    for label, draws in ((f"hypothesis {claim.name!r}", self_draws),
                         (f"baseline {base.name!r}", _weighted([part[3] for part in evaluated], rows))):
        for node, rate in draws.items():
            if rate > self_draw_warning:
                where = "the dataset" if options.pool is None else f"the pool of {options.pool}"
                why = (f"allow_self lets a draw return it, and few examples of {where} agree on the feature"
                       if options.allow_self else f"no other example of {where} agrees on the feature")
                warnings.append(f"{label} node {node!r}: {rate:.0%} of its feature draws returned the datum itself "
                                f"({why}), so the claim is barely tested there; use more examples (--n), a larger "
                                f"pool, or a coarser feature (a per-position one, e.g. is_repeat(per_position=True), "
                                f"agrees at far more positions than a whole-sequence one)")
    ci = bootstrap_recovered(joined["clean"], joined["baseline"], joined["scrubbed"], n_resamples=n_bootstrap,
                             seed=seed)
    return checks.with_data_checks(ScrubResult(
        hypothesis=claim.name, baseline=base.name, loss_clean=lc, loss_baseline=lb, loss_scrubbed=ls,
        loss_recovered=float(recovered(lc, lb, ls)), ci_low=ci.low, ci_high=ci.high,
        n_examples=int(keep.sum()), n_tokens=int(joined["clean"].count.sum()),
        self_sample_rate=sum(part[1] * r for part, r in zip(evaluated, rows, strict=True)) / max(sum(rows), 1),
        per_example_clean=tuple(joined["clean"].per_example().tolist()),
        per_example_baseline=tuple(joined["baseline"].per_example().tolist()),
        per_example_scrubbed=tuple(joined["scrubbed"].per_example().tolist()),
        warnings=tuple(warnings), self_draws=self_draws, metric=metric, token_view=asdict(view),
    ), model, data, tree, seed=seed, options=options, structure=structure)


def _weighted(per_batch: list[dict[str, float]], rows: list[int]) -> dict[str, float]:
    """Per-node rates of every batch averaged over rows (each batch weighs as many rows as it has)."""
    total = sum(rows)
    out: dict[str, float] = {}
    for draws, r in zip(per_batch, rows, strict=True):
        for node, rate in draws.items():
            out[node] = out.get(node, 0.0) + rate * r / total
    return out

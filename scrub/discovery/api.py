"""``discover``: circuit discovery under causal-scrubbing semantics, from a model and tokens to a
``Discovery`` (every edge with a score, an exact effect, an interval and a verdict; the found claim; its
loss recovered on held-out data; the faithfulness curve).

Methods (``Method``): "eap" and "eap-ig" score every edge (``attribution``) and keep those with |score| ≥ τ,
without exact checks; "acdc" is the exact greedy search without attribution (``search``); "eap-ig+verify"
(the default) orders the greedy search's candidates by EAP-IG scores and removes the low-scoring ones in
jointly checked groups, bisected where a check fails. Counterfactuals: the ``corrupted`` batch when given
("paired"), else draws from the examples by the engine's sampler ("resample", ``draws`` of them, averaged).
Every argument is checked before any work (``DiscoveryError``).
"""

from __future__ import annotations

import time
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Callable, Sequence, get_args

import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from scrub.claims.sites import Component
from scrub.claims.structure import Structure
from scrub.discovery.attribution import Attribution, AttributionMethod, attribute, check_attributable
from scrub.discovery.curve import faithfulness
from scrub.discovery.edges import Edge, all_edges, graph_of, parse_receivers, runnable
from scrub.discovery.exact import ExactEvaluator
from scrub.discovery.journal import Journal
from scrub.discovery.result import Discovery, EdgeRecord, Method, Passes
from scrub.discovery.search import Decision, How, Search, Verdict, greedy
from scrub.discovery.setup import Counterfactuals, paired, resampled
from scrub.engine.compute import check_supported, clean_run_batched
from scrub.errors import ScrubError
from scrub.experiment.distributed import digest
from scrub.experiment.inputs import Positions, check_seed, score_mask
from scrub.experiment.runner import run
from scrub.metrics import MetricName, check_metric
from scrub.model.fingerprint import ModelFingerprint

METHODS: tuple[Method, ...] = get_args(Method)


class DiscoveryError(ScrubError):
    """An argument of ``discover`` that cannot give a meaningful result; the message names the fix."""


@dataclass(frozen=True)
class Options:
    """The knobs of one discovery run (see ``discover``)."""

    method: Method
    metric: MetricName
    threshold: float
    seed: int
    draws: int
    steps: int
    skip: float
    spot: float
    batch_size: int
    n_bootstrap: int


def discover(model: HookedTransformer, tokens: Tensor, *, corrupted: Tensor | None = None,
             method: Method = "eap-ig+verify", metric: MetricName = "kl", positions: Positions = "all",
             threshold: float = 0.01, receivers: Sequence[str] | None = None, seed: int = 0,
             heldout: Tensor | None = None, draws: int = 3, steps: int = 5, skip: float = 0.25, spot: float = 0.1,
             batch_size: int = 16, n_bootstrap: int = 1000, curve: bool = True, command: str = "",
             progress: Callable[[int, int], None] | None = None, resume: str | Path | None = None) -> Discovery:
    """Discover the edges that matter for ``metric`` at ``positions`` of ``tokens`` [n, seq].

    A score is EAP(-IG)'s first-order estimate of metric(edge removed) − metric(clean), an effect the exact
    change when the greedy search removes it from the claim at hand (``search``); both are means over the
    scored tokens. ``threshold`` τ: an edge is dropped when its effect's 95% interval lies inside [−τ, τ].
    ``receivers``: search only the inputs of these components (every other edge is kept). ``heldout``: the
    data the found claim is scored on with ``scrub.run`` (default: the second half of ``tokens``, the first
    half being discovery data). ``skip``: a receiver's edges with |score| < skip x τ are removed together when
    their joint removal's interval lies inside [−τ, τ], and bisected down to single edges where it does not
    (0: every edge alone); ``spot``: the chance that such a skipped edge is also checked singly.
    ``progress(done, total)`` is told how many edges are decided.
    ``resume``: a file that keeps the run's progress (the scores, and the search after each receiver); if it
    holds an earlier run's, with the same model, data and arguments, this run continues from it and ends with
    the result that run would have had. It is removed when the run finishes."""
    opts = Options(method, metric, threshold, seed, draws, steps, skip, spot, batch_size, n_bootstrap)
    _check(model, tokens, corrupted, heldout, opts)
    targets = parse_receivers(receivers, model)
    if heldout is None:
        half = tokens.shape[0] // 2
        tokens, heldout = tokens[:half], tokens[half:]
        corrupted = None if corrupted is None else corrupted[:half]
    mask = score_mask(tokens, positions).cpu()  # [n, seq-1]
    if not bool(mask.any()):
        raise DiscoveryError("no position is scored on the discovery data: choose positions='all' or longer "
                             "sequences")
    score_mask(heldout, positions)  # a bad positions function fails here, before any work
    start = time.perf_counter()
    structure = Structure.of(model)
    cf = (paired(tokens.cpu(), corrupted.cpu(), structure) if corrupted is not None
          else resampled(tokens.cpu(), structure, seed, draws))
    edges = all_edges(structure)
    journal = None if resume is None else Journal.open(resume, _fingerprint(model, cf, mask, opts, targets), edges)
    device = next(model.parameters()).device
    clean = clean_run_batched(model, cf.data.to(device), batch_size)
    attribution = _attribution(model, cf, clean, mask, opts, journal)
    search = _search(model, cf, clean, mask, opts, edges, attribution, targets, progress, journal)
    found = _result(model, cf, opts, edges, attribution, search, heldout, positions, mask, clean,
                    curve, command, time.perf_counter() - start)
    if journal is not None:
        journal.remove()
    return found


def _fingerprint(model: HookedTransformer, cf: Counterfactuals, mask: Tensor, opts: Options,
                 targets: tuple[Component, ...] | None) -> dict[str, str]:
    """What a resume file must agree on with this run, part by part (digests): what makes its numbers."""
    weights = ModelFingerprint.of(model)
    return {"model": digest(sorted(weights.weights.items()), sorted(weights.config.items())),
            "data": digest(cf.kind, cf.data, cf.seeds, len(cf.draws)), "positions": digest(mask),
            "options": digest(astuple(opts)),
            "receivers": digest(None if targets is None else [str(t) for t in targets])}


def _check(model: object, tokens: object, corrupted: object, heldout: object, opts: Options) -> None:
    if not isinstance(model, HookedTransformer):
        raise DiscoveryError(f"model must be a TransformerLens HookedTransformer, got {type(model).__name__}; load "
                             f"one with scrub.load_model()")
    check_supported(model)
    for name, t in (("tokens", tokens), ("corrupted", corrupted), ("heldout", heldout)):
        if t is None and name != "tokens":
            continue
        if not isinstance(t, Tensor) or t.dim() != 2 or t.dtype.is_floating_point or t.dtype == torch.bool:
            raise DiscoveryError(f"{name} must be an integer tensor of token ids [n, seq]; got "
                                 f"{type(t).__name__}{list(t.shape) if isinstance(t, Tensor) else ''}")
        if int(t.min()) < 0 or int(t.max()) >= model.cfg.d_vocab or t.shape[1] < 2 or t.shape[1] > model.cfg.n_ctx:
            raise DiscoveryError(f"{name}: ids must lie in 0..{model.cfg.d_vocab - 1} and sequences have 2..n_ctx "
                                 f"({model.cfg.n_ctx}) tokens; got ids {int(t.min())}..{int(t.max())}, length "
                                 f"{t.shape[1]}")
    assert isinstance(tokens, Tensor)
    need = 2 if heldout is not None else 4
    if tokens.shape[0] < need:
        held = "" if heldout is not None else "half of them held out, "
        raise DiscoveryError(f"need at least {need} examples ({held}"
                             f"at least 2 to draw from), got {tokens.shape[0]}")
    if isinstance(corrupted, Tensor) and corrupted.shape != tokens.shape:
        raise DiscoveryError(f"corrupted must have the shape of tokens {list(tokens.shape)}, got "
                             f"{list(corrupted.shape)}: one corrupted row per example")
    if opts.method not in METHODS:
        raise DiscoveryError(f"method must be one of {', '.join(METHODS)}, got {opts.method!r}")
    try:
        check_metric(opts.metric)
    except ValueError as err:
        raise DiscoveryError(str(err)) from None
    check_seed(opts.seed)
    if not (isinstance(opts.threshold, (int, float)) and opts.threshold >= 0):
        raise DiscoveryError(f"threshold must be a number ≥ 0 (an effect size in the metric's units), got "
                             f"{opts.threshold!r}")
    for name, value, low in (("draws", opts.draws, 1), ("steps", opts.steps, 1), ("batch_size", opts.batch_size, 1),
                             ("n_bootstrap", opts.n_bootstrap, 10)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise DiscoveryError(f"{name} must be a whole number ≥ {low}, got {value!r}")
    if not (isinstance(opts.skip, (int, float)) and opts.skip >= 0 and 0 < opts.spot <= 1):
        raise DiscoveryError(f"skip must be a number ≥ 0 (a multiple of τ; inf groups every edge) and spot lie in "
                             f"(0, 1]; got skip={opts.skip!r}, spot={opts.spot!r}")
    if opts.method != "acdc":
        check_attributable(model)


def _attribution(model: HookedTransformer, cf: Counterfactuals, clean, mask: Tensor, opts: Options,
                 journal: Journal | None) -> Attribution | None:
    if opts.method == "acdc":
        return None
    if journal is not None and journal.attribution is not None:
        return journal.attribution
    kind: AttributionMethod = "eap" if opts.method == "eap" else "eap-ig"
    found = attribute(model, cf, clean, mask, opts.metric, kind, steps=opts.steps, batch_size=opts.batch_size)
    if journal is not None:
        journal.keep_attribution(found)
    return found


def _search(model: HookedTransformer, cf: Counterfactuals, clean, mask: Tensor, opts: Options, edges: tuple[Edge, ...],
            attribution: Attribution | None, targets: tuple[Component, ...] | None,
            progress: Callable[[int, int], None] | None, journal: Journal | None) -> Search | None:
    if opts.method in ("eap", "eap-ig"):
        return None
    ev = ExactEvaluator(model, cf, clean, mask, opts.metric, batch_size=opts.batch_size)
    total = len(edges) if targets is None else sum(e.receiver in targets for e in edges)
    done = [0]

    def tell(k: int) -> None:
        done[0] += k
        if progress is not None:
            progress(done[0], total)

    found = greedy(ev, edges, opts.threshold, scores=None if attribution is None else attribution.scores,
                   searched=(lambda r: True) if targets is None else (lambda r: r in targets),
                   skip=opts.skip if attribution is not None else 0.0, spot=opts.spot, seed=opts.seed,
                   n_boot=opts.n_bootstrap, progress=tell, resume=None if journal is None else journal.search,
                   keep=None if journal is None else journal.keep_search)
    if journal is not None:
        journal.flush()  # the finished search, in case what follows (held-out run, curve) is stopped
    return found


def _decisions(edges: tuple[Edge, ...], attribution: Attribution | None, search: Search | None,
               tau: float) -> dict[Edge, Decision]:
    if search is not None:
        return {d.edge: d for d in search.decisions}
    assert attribution is not None  # scores-only methods
    return {e: Decision(e, Verdict.KEPT if abs(attribution.scores[e]) >= tau else Verdict.DROPPED, How.EXACT,
                        None, None) for e in edges}


def _result(model: HookedTransformer, cf: Counterfactuals, opts: Options, edges: tuple[Edge, ...],
            attribution: Attribution | None, search: Search | None, heldout: Tensor, positions: Positions,
            mask: Tensor, clean, curve: bool, command: str, seconds: float) -> Discovery:
    decided = _decisions(edges, attribution, search, opts.threshold)
    kept = [e for e in edges if decided[e].verdict != Verdict.DROPPED]
    claim = runnable(kept)
    in_claim = set(claim)
    scores = None if attribution is None else attribution.scores
    records = tuple(EdgeRecord.of(e, score=None if scores is None else scores[e], effect=decided[e].effect,
                                  ci=decided[e].ci, verdict=decided[e].verdict.value,
                                  how="score" if search is None else decided[e].how.value, in_claim=e in in_claim)
                    for e in edges)
    graph = graph_of(claim)
    warnings = []
    if opts.method == "eap" and opts.metric == "kl":
        warnings.append("EAP with metric 'kl' takes the gradient at the clean run, where KL's gradient is 0: every "
                        "score is 0; use eap-ig or metric 'loss'")
    if len(kept) != len(claim):
        off = len(kept) - len(claim)
        warnings.append(f"{off} kept {'edge lies' if off == 1 else 'edges lie'} on no input -> logits path and "
                        f"{'is' if off == 1 else 'are'} left out of the claim (the sender reads nothing claimed, or "
                        f"reaches no kept output)")
    held = run(model, graph, heldout, positions=positions, metric=opts.metric, seed=opts.seed, progress=False)
    ev = ExactEvaluator(model, cf, clean, mask, opts.metric, batch_size=opts.batch_size)
    ranking = sorted(edges, key=lambda e: -abs(scores[e] if scores is not None else (decided[e].effect or 0.0)))
    faith = faithfulness(ev, ranking) if curve else None
    trees = (search.trees if search is not None else 0) + ev.trees
    forward = (attribution.forward if attribution is not None else (2 if cf.kind == "paired" else 1)) + trees
    return Discovery(
        method=opts.method, metric=opts.metric, counterfactual=cf.kind, threshold=float(opts.threshold),
        seed=opts.seed, edges=records, claim_edges=tuple(str(e) for e in claim), heldout=held, curve=faith,
        passes=Passes(forward, 0 if attribution is None else attribution.backward),
        skipped=0 if search is None else search.skipped, spot_checked=0 if search is None else search.spot_checked,
        spot_violations=0 if search is None else search.spot_violations, n_examples=cf.n, seconds=seconds,
        command=command, warnings=tuple(warnings + list(held.warnings)), graph=graph)

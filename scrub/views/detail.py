"""What the run views show beyond a ``ScrubResult``'s numbers: a few examples re-evaluated token by token
(clean, scrubbed and baseline metric and top predictions per position) and the claimed heads' attention
patterns, clean and scrubbed, on one of them.

The examples are evaluated exactly as ``scrub.run`` evaluates them: draws depend only on the seed and the
datum, so one batch of the picked examples gets the draws the run gave them (``check_against`` compares
the per-example numbers with the result's)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from scrub.claims.hypothesis import Claim, empty_graph
from scrub.claims.sites import Head
from scrub.claims.structure import Structure
from scrub.engine.compute import clean_run
from scrub.engine.evaluator import evaluate
from scrub.engine.sampling import Sampler
from scrub.engine.treeify import Assignments, SamplingOptions, TreeNode, assign, localize, treeify
from scrub.errors import ScrubError
from scrub.experiment.inputs import Positions, as_claim, score_mask
from scrub.experiment.runner import ScrubResult
from scrub.metrics import MetricName, token_kl, token_losses
from scrub.model.tokenizer import Tokenizer
from scrub.views.attention import HeadCall, clean_patterns, pattern_normed, recording
from scrub.views.graph import heads_of

PICKS = 9  # examples re-evaluated for the token view: best, worst, median and quantiles between
MATCH_TOLERANCE = 1e-4  # re-evaluated per-example numbers agree with the run's to this (float32 sums)


@dataclass(frozen=True)
class ExampleDetail:
    """One example, position by position: position t predicts token t+1 (lists of seq-1 values)."""

    label: str  # "best", "median", "worst" or the quantile it was picked at
    index: int  # row of the dataset
    rank: int  # position of the example in the result's per-example numbers
    recovered: float  # the example's own loss recovered
    tokens: tuple[str, ...]  # [seq] the decoded tokens
    clean: tuple[float, ...]  # [seq-1] per-token metric of the clean run
    scrubbed: tuple[float, ...]  # [seq-1]
    baseline: tuple[float, ...]  # [seq-1]
    scored: tuple[bool, ...]  # [seq-1] whether the position is scored
    clean_top: tuple[str, ...]  # [seq-1] the clean run's top prediction and its probability
    scrubbed_top: tuple[str, ...]  # [seq-1]

    def mean(self, values: tuple[float, ...]) -> float:
        """The example's mean over its scored positions (as the result's per-example numbers)."""
        kept = [v for v, s in zip(values, self.scored, strict=True) if s]
        return sum(kept) / len(kept) if kept else math.nan


@dataclass(frozen=True)
class HeadPattern:
    """A claimed head's attention on the attention example: [seq, seq] clean, and scrubbed where recomputed."""

    head: str
    clean: Tensor  # [q, k]
    scrubbed: Tensor | None  # [q, k]; None: the engine read the head from a clean run
    note: str = ""


@dataclass(frozen=True)
class RunDetail:
    """Everything the run page shows that the numbers do not hold: the claim and the model's shape, the
    picked examples, and the attention example's patterns."""

    claim: Claim
    structure: Structure
    metric: str
    examples: tuple[ExampleDetail, ...]
    attention_index: int  # dataset row of the example the patterns are of
    patterns: tuple[HeadPattern, ...]


def picks(recovered: Tensor, n: int = PICKS) -> list[tuple[str, int]]:
    """(label, rank in the result) of the best, the median, the worst and evenly spaced quantiles between,
    by per-example loss recovered (non-finite values sort last); each example once."""
    order = sorted(range(recovered.shape[0]), key=lambda i: (not math.isfinite(float(recovered[i])),
                                                             -float(recovered[i])))
    finite = [i for i in order if math.isfinite(float(recovered[i]))] or order
    last = len(finite) - 1
    wanted = [("median", last // 2), ("best", 0), ("worst", last)]
    wanted += [(f"{100 * q / (n - 2):.0f}% from the best", round(last * q / (n - 2))) for q in range(1, n - 2)]
    out: list[tuple[str, int]] = []
    for label, at in wanted:
        if finite[at] not in [r for _, r in out]:
            out.append((label, finite[at]))
    return out


def _top(logits: Tensor, tokenizer: Tokenizer | None) -> list[str]:
    """The top prediction and its probability at each position of logits [seq-1, d_vocab]."""
    probs = logits.float().softmax(-1)  # [seq-1, d_vocab]
    p, ids = probs.max(-1)  # [seq-1] x2
    return [f"{_token(int(i), tokenizer)!r} p={float(q):.2f}" for q, i in zip(p, ids, strict=True)]


def _token(token_id: int, tokenizer: Tokenizer | None) -> str:
    return tokenizer.token_str(token_id) if tokenizer is not None else f"<{token_id}>"


def _metric(metric: str, clean_logits: Tensor, logits: Tensor, tokens: Tensor) -> Tensor:
    """Per-token metric [batch, seq-1] of ``logits`` (KL from the clean logits, or the loss)."""
    return token_kl(clean_logits, logits) if metric == "kl" else token_losses(logits, tokens)


def _row_of(root: TreeNode, target: TreeNode, data: Assignments, example: int) -> int | None:
    """The row of ``target`` that example ``example`` of the batch reads along the first path from the root
    to it (None where a per-position draw makes the row differ by position)."""
    def walk(node: TreeNode, row: int) -> int | None:
        if node is target:
            return row
        for inp in node.inputs:
            child = inp.child
            read = data[child].read
            if read is not None and read.dim() > 1:
                continue
            child_row = row if read is None else int(read[int(data[node].datum[row])])
            found = walk(child, child_row)
            if found is not None:
                return found
        return None

    return walk(root, example)


def _scrubbed_pattern(model: HookedTransformer, root: TreeNode, data: Assignments, calls: list[HeadCall],
                      node: TreeNode, example: int) -> tuple[Tensor | None, str]:
    """The head's pattern in the scrubbed run for batch example ``example``, from the recorded engine call."""
    comp = node.component
    assert isinstance(comp, Head)
    rows = data[node].datum.shape[0]
    matching = [c for c in calls if (c.layer, c.head) == (comp.layer, comp.head) and c.xq.shape[0] == rows]
    if not matching:
        return None, "The engine did not recompute this head: all its inputs come from one clean run."
    row = _row_of(root, node, data, example)
    if row is None or matching[0].masked:
        return None, "Not shown: per-position draws or query-key masks split this head's inputs."
    call = matching[0]
    pattern = pattern_normed(model, call.layer, call.head, call.xq[row:row + 1], call.xk[row:row + 1], call.pos)
    note = f"One of {len(matching)} copies of this head." if len(matching) > 1 else ""
    return pattern[0].cpu(), note


def check_against(detail: RunDetail, result: ScrubResult) -> float:
    """The largest difference between the detail's per-example scrubbed means and the result's (the examples'
    ranks are looked up by index); ``ScrubError`` above ``MATCH_TOLERANCE`` relative."""
    worst = 0.0
    scrubbed = result.per_example_scrubbed
    for ex in detail.examples:
        worst = max(worst, abs(ex.mean(ex.scrubbed) - scrubbed[ex.rank]) / max(1.0, abs(scrubbed[ex.rank])))
    if worst > MATCH_TOLERANCE:
        raise ScrubError(f"the re-evaluated examples differ from the run's numbers by {worst:.3g}: were the data, "
                         f"the seed, the positions and the sampling options those of the run?")
    return worst


@torch.no_grad()
def collect(model: HookedTransformer, hypothesis: Claim | nx.DiGraph | str | Path, data: Tensor, result: ScrubResult, *,
            baseline: Claim | nx.DiGraph | str | Path | None = None, positions: Positions = "all", seed: int = 0,
            options: SamplingOptions = SamplingOptions(), tokenizer: Tokenizer | None = None,
            n_examples: int = PICKS) -> RunDetail:
    """Re-evaluate the picked examples of ``result`` (the run of ``hypothesis`` on ``data`` with these
    arguments) position by position, and the claimed heads' patterns on the median example."""
    device = next(model.parameters()).device
    claim = as_claim(hypothesis, model)
    base = (as_claim(empty_graph(), model, name="empty") if baseline is None
            else as_claim(baseline, model, name="baseline"))
    mask = score_mask(data.to(device), positions).cpu()  # [n, seq-1]
    kept = (mask.sum(1) > 0).nonzero()[:, 0]  # [n_kept] dataset rows of the result's per-example numbers
    chosen = picks(result.per_example_recovered(), n_examples)
    ids = kept[torch.tensor([rank for _, rank in chosen])]  # [batch]
    structure = Structure.of(model)
    tree, base_tree = treeify(claim, options.unit), treeify(base, options.unit)
    sampler = Sampler(data.cpu(), seed=seed, pool_size=options.pool, allow_self=options.allow_self)
    drawn = [assign(t, sampler, ids, options=options, structure=structure) for t in (tree, base_tree)]
    every, (scrub_data, base_data) = localize(drawn, ids, data.shape[0])
    clean = clean_run(model, data[every].to(device))
    calls: list[HeadCall] = []
    with recording(calls):
        scrubbed, _ = evaluate(model, tree, scrub_data, clean)  # [batch, seq, d_vocab]
    baselined, _ = evaluate(model, base_tree, base_data, clean)  # [batch, seq, d_vocab]
    tokens = data[ids].to(device)  # [batch, seq]
    clean_logits = clean.logits[scrub_data[tree].datum]  # [batch, seq, d_vocab]
    metric: MetricName = "kl" if result.metric == "kl" else "loss"
    per = {name: _metric(metric, clean_logits, x, tokens).cpu()
           for name, x in (("clean", clean_logits), ("scrubbed", scrubbed), ("baseline", baselined))}  # [batch, seq-1]
    rec = result.per_example_recovered()
    examples = []
    for b, ((label, rank), row) in enumerate(zip(chosen, ids.tolist(), strict=True)):
        examples.append(ExampleDetail(
            label, row, rank, float(rec[rank]), tuple(_token(int(t), tokenizer) for t in data[row]),
            tuple(per["clean"][b].tolist()), tuple(per["scrubbed"][b].tolist()), tuple(per["baseline"][b].tolist()),
            tuple(mask[row].tolist()), tuple(_top(clean_logits[b, :-1], tokenizer)),
            tuple(_top(scrubbed[b, :-1], tokenizer))))
    heads = heads_of(claim)
    clean_at = clean_patterns(model, tokens[0], [(h.layer, h.head) for h in heads])
    patterns: list[HeadPattern] = []
    for node in tree.walk():
        comp = node.component
        if not isinstance(comp, Head) or any(p.head == str(comp) for p in patterns):
            continue
        pattern, note = _scrubbed_pattern(model, tree, scrub_data, calls, node, 0)
        patterns.append(HeadPattern(str(comp), clean_at[(comp.layer, comp.head)], pattern, note))
    return RunDetail(claim, structure, metric, tuple(examples), int(ids[0]), tuple(patterns))

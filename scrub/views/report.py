"""The HTML of what people hold in a notebook: a ``ScrubResult`` (numbers and the per-example distribution;
with a ``RunDetail`` also the claim graph, the token view and the attention patterns), a ``PatchMatrix`` and
``HeadScores``. ``explain`` runs (or takes) a result and collects its detail in one call."""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import networkx as nx
import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from scrub.claims.hypothesis import Claim
from scrub.claims.sites import Mlp
from scrub.experiment.runner import ScrubResult, run
from scrub.metrics import METRIC_LABELS
from scrub.model.tokenizer import Tokenizer
from scrub.views.detail import PICKS, RunDetail, check_against, collect
from scrub.views.graph import claim_graph, matrix_graph
from scrub.views.page import Html, Part, View, ViewKind, fragment, rounded, write_page

if TYPE_CHECKING:
    from scrub.heads.scores import HeadScores
    from scrub.patching.paths import PatchMatrix

MAX_PATTERN_HEADS = 6  # attention patterns shown per page: recomputed heads first (each is seq x seq numbers)


def headline(result: ScrubResult) -> Html:
    """The summary line and the warnings, as markup."""
    label = METRIC_LABELS.get(result.metric, result.metric)
    lines = [f'<div class="scrub-headline"><b>{html.escape(result.hypothesis)}</b> vs '
             f'{html.escape(result.baseline)}: {label} recovered <b>{result.loss_recovered:.3f}</b> '
             f'[95% CI {result.ci_low:.3f}, {result.ci_high:.3f}]</div>']
    lines += [f"<div>{html.escape(line)}</div>" for line in result.summary().splitlines()[1:]
              if not line.startswith("warning: ")]
    lines += [f'<div class="scrub-warning">{html.escape(w)}</div>' for w in result.warnings]
    rows = (("clean", result.loss_clean), ("baseline", result.loss_baseline), ("scrubbed", result.loss_scrubbed))
    cells = "".join(f"<td>{name} {value:.4f}</td>" for name, value in rows)
    lines.append(f"<table><tr>{cells}<td>{result.n_examples} examples, {result.n_tokens} tokens</td></tr></table>")
    return Html("\n".join(lines))


def distribution(result: ScrubResult) -> View:
    """The per-example loss recovered as a histogram, with the whole set's value and interval."""
    label = f"{METRIC_LABELS.get(result.metric, result.metric)} recovered"
    values = [float(v) for v in result.per_example_recovered().tolist()]
    return View(ViewKind.HISTOGRAM, f"Per-example {label}",
                {"values": rounded(values), "overall": result.loss_recovered, "ci_low": result.ci_low,
                 "ci_high": result.ci_high, "label": label},
                note="Each example's own value; unstable where its baseline and clean losses are close.")


def token_view(detail: RunDetail, result: ScrubResult) -> View:
    """The picked examples' text coloured by scrubbed − clean per token; hover shows the predictions."""
    deltas = [abs(s - c) for ex in detail.examples for c, s, k in zip(ex.clean, ex.scrubbed, ex.scored, strict=True)
              if k]
    ordered = sorted(deltas)
    scale = max(0.05, ordered[int(0.95 * (len(ordered) - 1))] if ordered else 1.0)
    label = METRIC_LABELS.get(result.metric, result.metric)
    examples = [{"label": ex.label, "index": ex.index, "recovered": ex.recovered, "tokens": list(ex.tokens),
                 "delta": [rounded(s - c, 4) if k else None
                           for c, s, k in zip(ex.clean, ex.scrubbed, ex.scored, strict=True)],
                 "clean": rounded(list(ex.clean), 4), "scrubbed": rounded(list(ex.scrubbed), 4),
                 "clean_top": list(ex.clean_top), "scrubbed_top": list(ex.scrubbed_top),
                 "mean_clean": ex.mean(ex.clean), "mean_scrubbed": ex.mean(ex.scrubbed),
                 "mean_baseline": ex.mean(ex.baseline), "n_scored": sum(ex.scored)} for ex in detail.examples]
    return View(ViewKind.TOKENS, "Where in the text the claim fails",
                {"examples": examples, "metric": label, "scale": rounded(scale, 3),
                 "recovered_label": f"{label} recovered"},
                note=f"Each token coloured by the scrubbed − clean {label} of predicting it (grey: not scored). "
                     f"Examples picked from the per-example distribution; hover a token for both predictions.")


def attention_view(detail: RunDetail) -> View:
    """The claimed heads' patterns on one example, clean beside scrubbed (recomputed heads first)."""
    ordered = sorted(detail.patterns, key=lambda p: p.scrubbed is None)[:MAX_PATTERN_HEADS]
    tokens = next(ex.tokens for ex in detail.examples if ex.index == detail.attention_index)
    heads = [{"name": p.head, "clean": _pattern(p.clean), "note": p.note,
              "scrubbed": None if p.scrubbed is None else _pattern(p.scrubbed)} for p in ordered]
    shown = len(ordered) < len(detail.patterns)
    return View(ViewKind.ATTENTION, "Attention of the claimed heads, clean and scrubbed",
                {"heads": heads, "tokens": list(tokens), "index": detail.attention_index},
                note=(f"The first {len(ordered)} of {len(detail.patterns)} claimed heads, those the scrubbed run "
                      f"recomputes first." if shown else "Every claimed head.") + " Hover a cell for its tokens.")


def _pattern(pattern: Tensor) -> list:
    return rounded(pattern.double().tolist(), 3)


def result_parts(result: ScrubResult, detail: RunDetail | None = None) -> list[Part]:
    """The views of one run: headline, distribution, and with ``detail`` the graph, tokens and attention."""
    parts: list[Part] = [headline(result), distribution(result)]
    if detail is None:
        parts.append(Html('<p class="scrub-note">The claim graph, the token view and the attention patterns need the '
                          'model and the data: <code>scrub.views.report.explain(model, hypothesis, data, result, '
                          '...)</code>.</p>'))
        return parts
    return parts + [claim_graph(detail.claim, detail.structure), token_view(detail, result), attention_view(detail)]


@dataclass(frozen=True)
class RunReport:
    """A result with its detail: shown inline in a notebook, or written as one self-contained page."""

    result: ScrubResult
    detail: RunDetail | None = None

    def _repr_html_(self) -> str:
        return fragment(result_parts(self.result, self.detail))

    def to_html(self, path: str | Path) -> Path:
        return write_page(path, f"scrub: {self.result.hypothesis}", result_parts(self.result, self.detail))


def explain(model: HookedTransformer, hypothesis: Claim | nx.DiGraph | str | Path, data: Tensor,
            result: ScrubResult | None = None, *, tokenizer: Tokenizer | None = None, n_examples: int = PICKS,
            **run_args: Any) -> RunReport:
    """The report of ``scrub.run(model, hypothesis, data, **run_args)`` (run here unless ``result`` is that
    run's result) with its detail, checked to reproduce the result's per-example numbers."""
    if result is None:
        result = run(model, hypothesis, data, **run_args)
    keep: dict[str, Any] = {k: run_args[k] for k in ("baseline", "positions", "seed", "options") if k in run_args}
    detail = collect(model, hypothesis, data, result, tokenizer=tokenizer, n_examples=n_examples, **keep)
    check_against(detail, result)
    return RunReport(result, detail)


def patch_parts(matrix: PatchMatrix) -> list[Part]:
    """A ``PatchMatrix`` as a heatmap (senders x receiver inputs, and the direct path to the logits) and a graph."""
    columns, values = [], []
    effects = matrix.effects.double()  # [sender, receiver, channel]
    for j, receiver in enumerate(matrix.receivers):
        for k, channel in enumerate(matrix.channels):
            if isinstance(receiver, Mlp) and k > 0:
                continue
            columns.append(str(receiver) if isinstance(receiver, Mlp) else f"{receiver}:{channel.value}")
            values.append(effects[:, j, k])  # [sender]
    columns.append("logits")
    values.append(matrix.to_logits.double())
    grid = torch.stack(values, 1)  # [sender, column]
    layers = [c.layer for c in (*matrix.senders, *matrix.receivers) if hasattr(c, "layer")]
    heat = View(ViewKind.HEATMAP, "Path-patching effects", {"matrices": [{
        "name": f"{matrix.metric} effect", "rows": [str(s) for s in matrix.senders], "cols": columns,
        "values": rounded(grid.tolist()), "row_title": "sender", "col_title": "receiver input",
        "note": f"patched − clean {matrix.metric} (clean {matrix.clean:.4g}, corrupted {matrix.corrupted:.4g}); "
                f"grey: the sender does not feed that input."}]})
    return [heat, matrix_graph(matrix, max(layers, default=0) + 1)]


def head_scores_parts(scores: HeadScores) -> list[Part]:
    """Every behavioral score as a layer x head heatmap, one selector."""
    from scrub.heads.scores import SCORE_NAMES

    matrices = []
    for name in SCORE_NAMES:
        values = scores.score(name).double()  # [layer, head]
        matrices.append({"name": name.replace("_", " "), "rows": [str(i) for i in range(values.shape[0])],
                         "cols": [str(i) for i in range(values.shape[1])], "values": rounded(values.tolist()),
                         "row_title": "layer", "col_title": "head",
                         "note": f"previous-token and duplicate-token scores on {scores.data} data."})
    return [View(ViewKind.HEATMAP, "Behavioral head scores", {"matrices": matrices})]


def patch_html(matrix: PatchMatrix) -> str:
    """``PatchMatrix._repr_html_``: the heatmap and the graph of its effects."""
    return fragment(patch_parts(matrix))


def write_patch(matrix: PatchMatrix, path: str | Path) -> Path:
    return write_page(path, f"scrub: path patching ({matrix.metric})", patch_parts(matrix))


def heads_html(scores: HeadScores) -> str:
    """``HeadScores._repr_html_``: one heatmap per behavioral score."""
    return fragment(head_scores_parts(scores))


def write_heads(scores: HeadScores, path: str | Path) -> Path:
    return write_page(path, "scrub: behavioral head scores", head_scores_parts(scores))

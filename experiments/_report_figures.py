"""The figures of one model's study (head heatmaps, loss-recovered ladders, per-example distributions, context
sensitivity, claim graphs, the REMIX ladder, composition and where each head's effect falls), written beside its
report."""

from __future__ import annotations

from pathlib import Path

import torch

from experiments._figures import claim_graph, composition_heatmap, grouped_intervals
from experiments._remix import remix_figure
from experiments._results import K_VIA_MLP0, KEY, NOT_ON_INDUCTION_SCALE, OTHER_EMBEDDING, REDWOOD, StudyResults
from scrub.claims.sites import parse_component
from scrub.views.plots import context_scatter, head_heatmap, per_example_distribution, recovery_ladder

QUICK_GRAPHS = ("induction_minimal", "induction_refined", OTHER_EMBEDDING, K_VIA_MLP0)
STUDY_FIGURES = ("heads_*.png", "graph_*.png", "ladder_*.png", "per_example_*.png", "context_vs_prefix.png",
                 "composition.png", "effect_by_position.png")


def write_figures(res: StudyResults, out: Path, model) -> list[str]:
    """Every figure of ``res`` into ``out`` (an earlier run's figures there are removed first); returns their
    names relative to ``out``, in the order the report lists them."""
    out.mkdir(parents=True, exist_ok=True)
    for pattern in STUDY_FIGURES:  # an earlier run's figures: replaced, never mixed with this run's
        for stale in out.glob(pattern):
            stale.unlink()
    figs = (_head_heatmaps(res, out) + _ladders(res, out) + _per_example(res, out) + [_context(res, out)]
            + _claim_graphs(res, out, model) + _remix_and_composition(res, out))
    return [str(p.relative_to(out)) for p in figs]


def _head_heatmaps(res: StudyResults, out: Path) -> list[Path]:
    roles, s = res.roles, res.roles.scores
    figs = []
    for name, values, lo, hi, cmap in (
            ("prefix_matching", s.prefix_matching, 0, 1, "viridis"), ("copying", s.copying, -1, 1, "coolwarm"),
            ("previous_token_natural", s.previous_token, 0, 1, "viridis"),
            ("previous_token_rrt", res.scores_rrt.previous_token, 0, 1, "viridis"),
            ("duplicate_token_natural", s.duplicate_token, 0, 1, "viridis"),
            ("further_back", roles.further_back_score, 0, 1, "viridis"),
            ("context_sensitivity", res.sensitivity.increase, None, None, "magma")):
        figs.append(head_heatmap(values, out / f"heads_{name}.png", vmin=lo, vmax=hi, cmap=cmap,
                                 title=name.replace("_", " "),
                                 fmt="{:.3f}" if name == "context_sensitivity" else "{:.2f}"))
    return figs


def _ladders(res: StudyResults, out: Path) -> list[Path]:
    """Loss recovered of every hypothesis, natural text and RRT side by side, beside Redwood's numbers."""
    redwood = {n: v for n, v, _ in REDWOOD}
    figs = []
    for base, mode in (("induction_baseline", "candidates"), ("induction_baseline", "all"), ("empty", "candidates")):
        names = [h.name for h in res.hypotheses if base == "empty" or h.name not in NOT_ON_INDUCTION_SCALE]
        labels = [res.label(n) for n in names]
        rows = [[res.row(d, n, base, mode) for n in names] for d in ("natural", "rrt")]

        def series(f, rows=rows) -> torch.Tensor:  # [series, hypothesis]
            return torch.tensor([[f(r) for r in rs] for rs in rows])

        figs.append(recovery_ladder(labels, series(lambda r: r.value), series(lambda r: r.ci_low),
                                    series(lambda r: r.ci_high),
                                    ["natural text", "repeated random tokens"], out / f"ladder_{base}_{mode}.png",
                                    title=f"loss recovered vs {base.replace('_', ' ')}, {mode} positions",
                                    reference=[redwood.get(n) for n in names] if base == "induction_baseline" else None,
                                    reference_label="Redwood (their model)"))
    return figs


def _per_example(res: StudyResults, out: Path) -> list[Path]:
    figs = []
    for data in ("natural", "rrt"):
        per = [list(res.row(data, n, b).per_example) for n, b in KEY]
        figs.append(per_example_distribution([f"{res.label(n)} (vs {b.replace('_', ' ')})" for n, b in KEY], per,
                                             out / f"per_example_{data}.png",
                                             title=f"per-example loss recovered, {data}, candidate positions"))
    return figs


def _context(res: StudyResults, out: Path) -> Path:
    s = res.roles.scores
    heads = [f"{lay}.{h}" for lay in range(s.prefix_matching.shape[0]) for h in range(s.prefix_matching.shape[1])]
    return context_scatter(s.prefix_matching.flatten(), res.sensitivity.increase.flatten(),
                           res.sensitivity.stderr.flatten(), heads, list(res.roles.behavioral),
                           out / "context_vs_prefix.png", title="context sensitivity vs prefix matching "
                           "(red: behavioral induction heads)", xlabel="prefix-matching score",
                           ylabel=f"loss increase, keys > {res.sensitivity.window} back resampled (nats)")


def _claim_graphs(res: StudyResults, out: Path, model) -> list[Path]:
    """Each claim's inputs into the induction heads and the mechanism's copies, drawn by depth."""
    roles = res.roles
    drawn = [h for h in res.hypotheses if h.name not in ("empty",)]
    if res.config.quick:  # quick runs draw three claims only (each drawing takes about a second)
        drawn = [h for h in drawn if h.name in QUICK_GRAPHS]
    figs = []
    for h in drawn:
        def depth(n, g=h.graph) -> float:
            return parse_component(g.nodes[n].get("component", n), model.cfg).depth

        figs.append(claim_graph(h.graph, out / f"graph_{h.name}.png", depth=depth, focus=tuple(roles.induction),
                                title=f"{h.name}: {h.label}\nclaimed inputs of {', '.join(roles.induction)} and of "
                                      f"the mechanism's copies; the rest of the claim is not drawn"))
    return figs


def _remix_and_composition(res: StudyResults, out: Path) -> list[Path]:
    """The REMIX ladder, path patching from the induction heads, and where each head's effect falls."""
    figs = []
    name = Path(str(res.config.model)).name
    remix = remix_figure(res.remix, out / "remix_ladder.png", title=f"{name}: Redwood's "
                         "REMIX ladder, loss recovered vs the induction baseline")
    if remix is not None:
        figs.append(remix)
    comps = [c.to_dict() for c in res.composition]
    if any(c["receivers"] for c in comps):  # (with nothing after the induction heads, the table says it all)
        figs.append(composition_heatmap(comps, out / "composition.png",
                                        title=f"{name}: path patching from the induction "
                                              f"heads (nats; '*': 95% interval excludes 0)"))
    if res.splits:
        groups = [sp.name for sp in res.splits]
        figs.append(grouped_intervals(groups, ["induction candidates", "other positions"],
                                      [[sp.per_token[0], sp.per_token[1]] for sp in res.splits],
                                      out / "effect_by_position.png", xlabel="loss increase per token when the head is "
                                      "resampled (nats, natural text)", title=f"{res.config.model}: where each "
                                      "behavioral head's effect falls"))
    return figs

"""The induction study's results, figures and Markdown report. Every number in the report is read from a
``StudyResults`` (nothing is typed by hand); Redwood's published numbers are the only constants here.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import networkx as nx
import torch

from scrub.plots import context_scatter, head_heatmap, hypothesis_graph, per_example_distribution, recovery_ladder
from scrub.sites import parse_component

REDWOOD_SOURCE = ("Chan, Garriga-Alonso, Goldowsky-Dill, Greenblatt, Lin, Nitishinskaya, Radhakrishnan, Shlegeris, "
                  "Thomas (Redwood Research), \"Causal scrubbing: results on induction heads\", AI Alignment Forum / "
                  "LessWrong, 3 Dec 2022, https://www.lesswrong.com/posts/j6s9H9SHrEhEfuJnq — measured on their own "
                  "2-layer attention-only model (OpenWebText) against the baseline that resamples every input of the "
                  "induction heads; the naive (minimal) hypothesis explains about 35% and their refined one 89%")
REDWOOD = (("induction_v_only", 0.90, "0.90"), ("induction_q_only", 0.51, "0.51"), ("induction_k_only", 0.83, "0.83"),
           ("induction_minimal", 0.36, "0.35–0.37"), ("induction_refined", 0.89, "0.89 (their refined hypothesis)"))
KEY = (("induction_v_only", "induction_baseline"), ("induction_q_only", "induction_baseline"),
       ("induction_k_only", "induction_baseline"), ("induction_minimal", "induction_baseline"),
       ("induction_refined", "induction_baseline"), ("induction_behavioral", "empty"))  # (hypothesis, baseline)
NOT_ON_INDUCTION_SCALE = ("induction_behavioral", "empty")  # they drop paths the induction baseline keeps
REFINEMENTS = ("induction_prev_heads", "induction_positions", "induction_long_prefix", "induction_layer0_qv",
               "induction_direct_k", "induction_restricted", "induction_refined")
SENSITIVE_NATS = 0.01  # a head is context-sensitive if resampling its far input costs >= this and > 2 s.e.


@dataclass(frozen=True)
class HypothesisInfo:
    name: str
    label: str
    description: str
    n_paths: int
    path: str
    graph: nx.DiGraph


@dataclass(frozen=True)
class StudyResults:
    config: object  # StudyConfig
    command: str
    roles: object  # hypotheses._heads.HeadRoles
    scores_rrt: object  # scrub.scores.HeadScores
    hypotheses: tuple[HypothesisInfo, ...]
    rows: tuple  # Recovery, one per (data, hypothesis, baseline, positions)
    per_head: tuple  # Recovery of each behavioral head's mechanism (natural text)
    sensitivity: object  # experiments._context.Sensitivity
    elapsed: float
    figures: tuple[str, ...]

    def row(self, data: str, hypothesis: str, baseline: str = "induction_baseline", positions: str = "candidates"):
        return next(r for r in self.rows if (r.data, r.hypothesis, r.baseline, r.positions) == (data, hypothesis, baseline, positions))

    def label(self, name: str) -> str:
        return self.info(name).label

    def info(self, name: str) -> HypothesisInfo:
        return next(h for h in self.hypotheses if h.name == name)

    def sensitive(self) -> list[str]:
        s = self.sensitivity
        return [f"{lay}.{h}" for lay in range(s.increase.shape[0]) for h in range(s.increase.shape[1])
                if float(s.increase[lay, h]) >= SENSITIVE_NATS and float(s.increase[lay, h]) > 2 * float(s.stderr[lay, h])]

    def summary(self) -> dict:
        """JSON form of the results (an output format)."""
        keep = lambda r: {k: v for k, v in asdict(r).items() if k != "per_example"}  # noqa: E731
        return {"command": self.command, "config": asdict(self.config), "elapsed_s": self.elapsed,
                "roles": {k: getattr(self.roles, k) for k in ("induction", "behavioral", "previous_token",
                                                              "previous_like", "further_back", "fallbacks")},
                "rows": [keep(r) for r in self.rows], "per_head": [keep(r) for r in self.per_head],
                "context_sensitivity": {"window": self.sensitivity.window, "late_start": self.sensitivity.late_start,
                                        "increase": self.sensitivity.increase.tolist(),
                                        "stderr": self.sensitivity.stderr.tolist()},
                "figures": list(self.figures)}


def _same_graph(a: nx.DiGraph, b: nx.DiGraph) -> bool:
    key = lambda g: {(s, t, frozenset(d.get("via", "")), d.get("positions")) for s, t, d in g.edges(data=True)}  # noqa: E731
    return key(a) == key(b)


def _fmt(r) -> str:
    return f"{r.value:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]"


# --- figures -------------------------------------------------------------------------------------------

def write_figures(res: StudyResults, out: Path, model) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    figs: list[Path] = []
    roles, s = res.roles, res.roles.scores
    for name, values, lo, hi, cmap in (
            ("prefix_matching", s.prefix_matching, 0, 1, "viridis"), ("copying", s.copying, -1, 1, "coolwarm"),
            ("previous_token_natural", s.previous_token, 0, 1, "viridis"),
            ("previous_token_rrt", res.scores_rrt.previous_token, 0, 1, "viridis"),
            ("duplicate_token_natural", s.duplicate_token, 0, 1, "viridis"),
            ("further_back", roles.further_back_score, 0, 1, "viridis"),
            ("context_sensitivity", res.sensitivity.increase, None, None, "magma")):
        figs.append(head_heatmap(values, out / f"heads_{name}.png", vmin=lo, vmax=hi, cmap=cmap,
                                 title=name.replace("_", " "), fmt="{:.3f}" if name == "context_sensitivity" else "{:.2f}"))
    redwood = {n: v for n, v, _ in REDWOOD}
    for base, mode in (("induction_baseline", "candidates"), ("induction_baseline", "all"), ("empty", "candidates")):
        names = [h.name for h in res.hypotheses if base == "empty" or h.name not in NOT_ON_INDUCTION_SCALE]
        labels = [res.label(n) for n in names]
        rows = [[res.row(d, n, base, mode) for n in names] for d in ("natural", "rrt")]
        t = lambda f: torch.tensor([[f(r) for r in rs] for rs in rows])  # noqa: E731  [series, hypothesis]
        figs.append(recovery_ladder(labels, t(lambda r: r.value), t(lambda r: r.ci_low), t(lambda r: r.ci_high),
                                    ["natural text", "repeated random tokens"], out / f"ladder_{base}_{mode}.png",
                                    title=f"loss recovered vs {base.replace('_', ' ')}, {mode} positions",
                                    reference=[redwood.get(n) for n in names] if base == "induction_baseline" else None,
                                    reference_label="Redwood (their model)"))
    for data in ("natural", "rrt"):
        per = [list(res.row(data, n, b).per_example) for n, b in KEY]
        figs.append(per_example_distribution([f"{res.label(n)} (vs {b.replace('_', ' ')})" for n, b in KEY], per,
                                             out / f"per_example_{data}.png",
                                             title=f"per-example loss recovered, {data}, candidate positions"))
    heads = [f"{lay}.{h}" for lay in range(s.prefix_matching.shape[0]) for h in range(s.prefix_matching.shape[1])]
    figs.append(context_scatter(s.prefix_matching.flatten(), res.sensitivity.increase.flatten(),
                                res.sensitivity.stderr.flatten(), heads, list(roles.behavioral),
                                out / "context_vs_prefix.png", title="context sensitivity vs prefix matching "
                                "(red: behavioral induction heads)", xlabel="prefix-matching score",
                                ylabel=f"loss increase, keys > {res.sensitivity.window} back resampled (nats)"))
    depth = lambda g: lambda n: parse_component(g.nodes[n].get("component", n), model.cfg).depth  # noqa: E731
    for h in res.hypotheses:
        if h.name not in ("empty",):
            focus = tuple(roles.induction) + tuple(n for n, a in h.graph.nodes(data=True) if "component" in a)
            figs.append(hypothesis_graph(h.graph, out / f"graph_{h.name}.png", depth=depth(h.graph), focus=focus,
                                         title=f"{h.name}: {h.label} (strong: inputs of {', '.join(roles.induction)} "
                                               f"and of mechanism copies)"))
    return [str(p.relative_to(out)) for p in figs]


# --- report --------------------------------------------------------------------------------------------

def _table(res: StudyResults, base: str, mode: str) -> list[str]:
    redwood = {n: text for n, _, text in REDWOOD}
    lines = ["| hypothesis | paths | natural text | repeated random tokens | Redwood (their model) |",
             "|---|---:|---|---|---|"]
    for h in res.hypotheses:
        if base == "induction_baseline" and h.name in NOT_ON_INDUCTION_SCALE:
            continue
        lines.append(f"| {h.label} (`{h.name}`) | {h.n_paths} | {_fmt(res.row('natural', h.name, base, mode))} | "
                     f"{_fmt(res.row('rrt', h.name, base, mode))} | {redwood.get(h.name, '') if base == 'induction_baseline' else ''} |")
    return lines


def _findings(res: StudyResults) -> list[str]:
    nat, rrt = res.row("natural", "induction_minimal"), res.row("rrt", "induction_minimal")
    gap = rrt.value - nat.value
    separated = rrt.ci_low > nat.ci_high
    out = []
    pm, prev = res.roles.scores.prefix_matching, res.roles.scores.previous_token
    if not res.roles.behavioral:
        e = res.row("rrt", "full", "empty")
        uses = "it barely uses the repeat" if e.loss_clean > 0.5 * e.loss_baseline else "it does use the repeat"
        out.append(f"- **This model has no behavioral induction heads** (largest prefix-matching score "
                   f"{float(pm.max()):.2f}, threshold 0.4; largest previous-token score {float(prev.max()):.2f}). On "
                   f"RRT its clean loss at repeated tokens is {e.loss_clean:.3f} nats against {e.loss_baseline:.3f} for "
                   f"the model run on another example: {uses}. Every induction number below therefore describes the "
                   f"fallback head(s) {', '.join(res.roles.induction)} and previous-token head "
                   f"{res.roles.previous_token}, not an identified induction mechanism.")
    elif any("previous-token" in f for f in res.roles.fallbacks):
        out.append(f"- **No single previous-token head:** the behavioral induction heads are "
                   f"{', '.join(res.roles.behavioral)} (prefix matching up to {float(pm.max()):.2f}), but no layer-0 "
                   f"head passes previous-token >= 0.5 (largest {float(prev[0].max()):.2f}); the previous-token-like "
                   f"heads {', '.join(res.roles.previous_like) or 'none'} share the job. The minimal mechanism's "
                   f"\"previous-token head\" is the top scorer {res.roles.previous_token}; the first refinement "
                   f"claims all of them.")
    out += [f"- The minimal two-head mechanism recovers {_fmt(rrt)} of the loss on repeated random tokens and "
           f"{_fmt(nat)} on natural text (induction-candidate positions, against the induction baseline): "
           + (f"it falls short on natural text by {gap:.3f} (the intervals do not overlap)." if separated else
              f"a difference of {gap:.3f}, {'with overlapping intervals' if gap > 0 else 'not a shortfall on natural text'}.")]
    width = rrt.ci_high - rrt.ci_low
    out.append("- On RRT alone the minimal mechanism " + (
        f"cannot be judged: its interval is {width:.2f} wide." if width > 0.5 else
        "is consistent with explaining the behaviour (its interval reaches 1)." if rrt.ci_high >= 1 else
        f"falls short of the full model by {1 - rrt.value:.3f} (interval below 1)."))
    for data in ("natural", "rrt"):
        b = res.row(data, "induction_baseline", "empty")
        out.append(f"- How much the induction heads' inputs matter at all ({data}, candidate positions): the "
                   f"induction baseline still recovers {_fmt(b)} of the loss against the empty baseline, i.e. "
                   f"resampling every input of {', '.join(res.roles.induction)} raises the loss by "
                   f"{b.loss_scrubbed - b.loss_clean:.4f} nats ({1 - b.value:.1%} of the clean-to-empty gap of "
                   f"{b.loss_baseline - b.loss_clean:.3f} nats). That rise is the denominator of every "
                   f"induction-baseline number.")
    out.append(f"- Gap to the full model on natural text: {1 - nat.value:.3f}. Each refinement adds one idea to the minimal "
               "mechanism; gain over the minimal mechanism and the share of that gap it closes:")
    minimal = res.info("induction_minimal").graph
    for name in REFINEMENTS:
        r, rr = res.row("natural", name), res.row("rrt", name)
        share = (r.value - nat.value) / (1 - nat.value) if abs(1 - nat.value) > 1e-9 else float("nan")
        same = " — the same graph as the minimal one on this model (no head qualifies)" if _same_graph(
            res.info(name).graph, minimal) else ""
        out.append(f"  - {res.label(name)}: natural {_fmt(r)} (gain {r.value - nat.value:+.3f}, {100 * share:.0f}% of "
                   f"the gap); RRT {_fmt(rr)} (gain {rr.value - rrt.value:+.3f}){same}")
    beh_e, beh_n = res.row("natural", "induction_behavioral", "empty"), res.row("rrt", "induction_behavioral", "empty")
    out.append(f"- The behavioral heads alone (every other path to the logits resampled) recover {_fmt(beh_n)} of the "
               f"loss on RRT and {_fmt(beh_e)} on natural text against the empty baseline (candidate positions).")
    return out


def _sanity(res: StudyResults) -> list[str]:
    full = [r for r in res.rows if r.hypothesis == "full"]
    worst = max(abs(r.value - 1) for r in full)
    empty = [r for r in res.rows if r.hypothesis == "empty" and r.baseline == "empty"]
    base = [r for r in res.rows if r.hypothesis == "induction_baseline" and r.baseline == "induction_baseline"]
    pos = max(abs(res.row(d, "induction_positions").value - res.row(d, "induction_minimal").value) for d in ("natural", "rrt"))
    widths = [r.ci_high - r.ci_low for r in res.rows if r.hypothesis not in ("full", "empty", "induction_baseline")
              and not (r.baseline == "induction_baseline" and r.hypothesis in NOT_ON_INDUCTION_SCALE)]
    denominators = [r.loss_baseline - r.loss_clean for r in res.rows if r.baseline == "induction_baseline" and r.hypothesis == "full"]
    return [f"- full graph: loss recovered within {worst:.1e} of 1 in all {len(full)} settings "
            f"({'OK' if worst < 1e-3 else 'NOT 1: engine problem'}).",
            f"- empty vs empty and induction baseline vs itself: {max(abs(r.value) for r in empty + base):.1e} (must be 0).",
            f"- positions into Q/K change loss recovered by at most {pos:.1e} (0 expected: shortformer positions are "
            "identical in every example, so claiming them changes nothing).",
            f"- 95% interval widths of the other hypotheses: median {sorted(widths)[len(widths) // 2]:.3f}, max {max(widths):.3f}.",
            f"- induction-baseline denominators (baseline - clean loss, nats): "
            + ", ".join(f"{d:.4f}" for d in denominators) + " (natural/RRT x candidates/all)."]


def _per_example(res: StudyResults) -> list[str]:
    lines = ["| data | hypothesis | p10 | p25 | median | p75 | p90 | share < 0 | share > 1 |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for data in ("natural", "rrt"):
        for name, base in KEY:
            per = torch.tensor(res.row(data, name, base).per_example)
            q = torch.quantile(per, torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9])).tolist()
            lines.append(f"| {data} | {res.label(name)} (vs {base.replace('_', ' ')}) | " + " | ".join(f"{x:.2f}" for x in q)
                         + f" | {float((per < 0).float().mean()):.2f} | {float((per > 1).float().mean()):.2f} |")
    return lines


def _context(res: StudyResults) -> list[str]:
    s, sc = res.sensitivity, res.roles.scores
    sens, beh = res.sensitive(), set(res.roles.behavioral)
    lines = ["| head | loss increase (nats) ± s.e. | prefix matching | copying | behavioral induction | context-sensitive |",
             "|---|---:|---:|---:|---|---|"]
    for lay in range(s.increase.shape[0]):
        for h in range(s.increase.shape[1]):
            name = f"{lay}.{h}"
            lines.append(f"| {name} | {float(s.increase[lay, h]):.4f} ± {float(s.stderr[lay, h]):.4f} | "
                         f"{float(sc.prefix_matching[lay, h]):.2f} | {float(sc.copying[lay, h]):.2f} | "
                         f"{'yes' if name in beh else ''} | {'yes' if name in sens else ''} |")
    lines += ["", f"- Context-sensitive heads that are not behavioral induction heads: "
              f"{', '.join(h for h in sens if h not in beh) or 'none'}.",
              f"- Behavioral induction heads that do little on natural text (not context-sensitive): "
              f"{', '.join(h for h in res.roles.behavioral if h not in sens) or 'none'}."]
    return lines


def _training_rrt_share(model: str) -> float:
    """The share of repeated-random-token rows in the training recipe of a scrub checkpoint (0 if unknown)."""
    from scrub.model import SHIPPED_DIR, SHIPPED_NAME

    config = (SHIPPED_DIR if model == SHIPPED_NAME else Path(model)) / "config.json"
    try:
        return float(json.loads(config.read_text())["meta"]["recipe"].get("rrt_frac", 0.0))
    except (OSError, KeyError, ValueError):
        return 0.0


def write_report(res: StudyResults, out: Path) -> Path:
    cfg, roles = res.config, res.roles
    L = [f"# Induction heads: the mechanistic definition against the behavioral one", "",
         f"Generated by `{res.command}` (seed {cfg.seed}) on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC in "
         f"{res.elapsed:.0f} s; model `{cfg.model}`. Natural text: {cfg.n_natural} windows of {cfg.seq_len} tokens; "
         f"repeated random tokens (RRT): {cfg.n_rrt} sequences of BOS + {cfg.rrt_length} tokens x 2; "
         f"{cfg.n_bootstrap} bootstrap resamples of examples. Every number below is written by "
         f"`experiments/_report.py` from the run.", ""]
    if roles.fallbacks:
        L += ["**Warning — roles by fallback:** " + "; ".join(roles.fallbacks) + ".", ""]
    rrt_share = _training_rrt_share(str(cfg.model))
    if rrt_share:
        L += [f"**Note — RRT is in distribution here:** {rrt_share:.0%} of this model's training rows were repeated "
              "random tokens (see the model card in README.md), so the RRT columns measure a trained-for behaviour; "
              "the natural-text columns are held-out plays without augmentation.", ""]
    L += ["## 1. Behavioral head scores", "",
          f"Roles (from `hypotheses/_heads.py`: scores of `scrub.scores` with its fixed seed, the heads every hypothesis file picks): behavioral induction heads "
          f"{', '.join(roles.behavioral) or 'none'}; mechanism receivers {', '.join(roles.induction)}; "
          f"strongest previous-token head {roles.previous_token}; previous-token-like heads {', '.join(roles.previous_like)}; "
          f"heads attending further back {', '.join(roles.further_back) or 'none'}.", "",
          "| head | prev-token (natural) | prev-token (RRT) | prefix matching (RRT) | duplicate (natural) | copying | further back |",
          "|---|---:|---:|---:|---:|---:|---:|"]
    s = roles.scores
    for lay in range(s.previous_token.shape[0]):
        for h in range(s.previous_token.shape[1]):
            L.append(f"| {lay}.{h} | {float(s.previous_token[lay, h]):.2f} | {float(res.scores_rrt.previous_token[lay, h]):.2f} | "
                     f"{float(s.prefix_matching[lay, h]):.2f} | {float(s.duplicate_token[lay, h]):.2f} | "
                     f"{float(s.copying[lay, h]):.2f} | {float(roles.further_back_score[lay, h]):.2f} |")
    L += ["", "Heatmaps: " + ", ".join(f"[{f}]({f})" for f in res.figures if f.startswith("heads_")) + ".", "",
          "## 2. Hypotheses", ""]
    L += [f"- `{h.path}` ({h.n_paths} paths, [graph](graph_{h.name}.png)): {' '.join(h.description.split())}" for h in res.hypotheses]
    L += ["", "## 3. Loss recovered", "", f"Redwood's numbers: {REDWOOD_SOURCE}. **The models differ** (theirs: "
          "OpenWebText, larger vocabulary, different heads); the column is context, not a target.", ""]
    for base, mode in (("induction_baseline", "candidates"), ("induction_baseline", "all"),
                       ("empty", "candidates"), ("empty", "all")):
        L += [f"### Against the {base.replace('_', ' ')}, {mode} positions", "",
              f"![ladder](ladder_{base}_{mode}.png)" if f"ladder_{base}_{mode}.png" in res.figures else "", ""]
        L += _table(res, base, mode) + [""]
        if base == "induction_baseline":
            L += ["(The behavioral and empty hypotheses resample paths this baseline keeps, so they are reported "
                  "against the empty baseline only.)", ""]
    L += ["## 4. What the numbers say", ""] + _findings(res) + ["", "Sanity checks:", ""] + _sanity(res)
    L += ["", "## 5. Per-example distribution (candidate positions)", "",
          "Per-example loss recovered is noisy where an example's baseline and clean losses are close; the point is "
          "that a good mean is not the net of large gains and losses.", ""] + _per_example(res)
    L += ["", "![natural](per_example_natural.png) ![rrt](per_example_rrt.png)", "",
          "## 6. Context sensitivity", "",
          f"For each head, keys more than W = {res.sensitivity.window} tokens before the query read K and V from another "
          f"example (exact, per query, with TransformerLens hooks in `experiments/_context.py`: an edge `positions` mask "
          f"cannot depend on the query); scored at prediction positions >= {res.sensitivity.late_start} on "
          f"{cfg.n_context} natural-text windows (clean loss there {res.sensitivity.loss_clean:.3f}). Context-sensitive: "
          f"increase >= {SENSITIVE_NATS} nats and > 2 s.e.", "", "![context](context_vs_prefix.png)", ""] + _context(res)
    L += ["", "## 7. Per head: share of the natural-text effect explained by the two-head mechanism", "",
          "For each behavioral induction head alone: that head's inputs reduced to the mechanism, everything else "
          "(including the other induction heads) kept; baseline = that head's inputs resampled.", "",
          "| head | candidates | all positions | baseline - clean (nats, candidates) |", "|---|---|---|---:|"]
    for h in dict.fromkeys(r.hypothesis for r in res.per_head):
        c, a = (next(r for r in res.per_head if r.hypothesis == h and r.positions == m) for m in ("candidates", "all"))
        L.append(f"| {h} | {_fmt(c)} | {_fmt(a)} | {c.loss_baseline - c.loss_clean:.4f} |")
    L += ["", "## Method notes", "",
          "- Loss recovered = (L_baseline - L_scrubbed) / (L_baseline - L_clean), token-weighted over the scored "
          "positions; intervals: percentile bootstrap over examples. Candidates: prediction positions whose token "
          "occurred earlier in the sequence.",
          "- Hypotheses are built from the full graph minus the inputs of the induction heads (Redwood's baseline), "
          "plus the claimed paths; a previous-token head on a mechanism path is an alias node whose V reads the "
          "embedding and whose Q/K read only positions. All hypotheses and baselines of one batch share one clean run "
          "and the same seeded draws: one draw per hypothesis node per datum, shared by every path through the node "
          "(Redwood's implementation; `experiments/_evaluate.py`).",
          "- Shortformer: positions enter only Q and K and are identical across examples, so resampling never touches "
          "them; the positional refinement is a no-op by construction."]
    path = out / "induction_study.md"
    path.write_text("\n".join(L) + "\n")
    (out / "results.json").write_text(json.dumps(res.summary(), indent=1) + "\n")
    return path

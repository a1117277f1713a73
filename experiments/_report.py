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

from experiments._figures import claim_graph, composition_heatmap, grouped_intervals
from experiments._remix import remix_figure, remix_lines
from scrub.claims.sites import parse_component
from scrub.views.plots import context_scatter, head_heatmap, per_example_distribution, recovery_ladder

REDWOOD_SOURCE = ("Chan, Garriga-Alonso, Goldowsky-Dill, Greenblatt, Lin, Nitishinskaya, Radhakrishnan, Shlegeris, "
                  "Thomas (Redwood Research), \"Causal scrubbing: results on induction heads\", AI Alignment Forum / "
                  "LessWrong, 3 Dec 2022, https://www.lesswrong.com/posts/j6s9H9SHrEhEfuJnq — measured on their own "
                  "2-layer attention-only model (OpenWebText) against the baseline that resamples every input of the "
                  "induction heads; the naive (minimal) hypothesis explains about 35% and their refined one 89%")
REDWOOD = (("induction_v_only", 0.90, "0.90"), ("induction_q_only", 0.51, "0.51"), ("induction_k_only", 0.83, "0.83"),
           ("induction_minimal", 0.36, "0.35–0.37"),
           ("induction_refined", None, "— (ours; Redwood's own refined hypothesis, a different claim: 0.89)"))
# (the refinements are this project's own: no Redwood number is drawn beside them)
KEY = (("induction_v_only", "induction_baseline"), ("induction_q_only", "induction_baseline"),
       ("induction_k_only", "induction_baseline"), ("induction_minimal", "induction_baseline"),
       ("induction_refined", "induction_baseline"), ("induction_behavioral", "empty"))  # (hypothesis, baseline)
NOT_ON_INDUCTION_SCALE = ("induction_behavioral", "empty")  # they drop paths the induction baseline keeps
REFINEMENTS = ("induction_prev_heads", "induction_positions", "induction_long_prefix", "induction_layer0_qv",
               "induction_direct_k", "induction_restricted", "induction_refined")
SENSITIVE_NATS = 0.01  # a head is context-sensitive if resampling its far input costs >= this and > 2 s.e.
OTHER_EMBEDDING = "induction_minimal_other_embedding"  # built by the study for models with MLPs
K_VIA_MLP0 = "induction_minimal_k_via_mlp0"  # built by the study for models with MLPs
COMPOSES = 0.1  # a later component "composes" with an induction head if a path through it moves the loss by
# at least this share of the head's direct effect, with an interval that excludes 0


@dataclass(frozen=True)
class HypothesisInfo:
    name: str
    label: str
    description: str
    n_paths: int
    path: str
    graph: nx.DiGraph
    claimed: str = ""  # what the graph claims into the induction heads on this model, in words


@dataclass(frozen=True)
class StudyResults:
    config: object  # StudyConfig
    command: str
    roles: object  # hypotheses._heads.HeadRoles
    scores_rrt: object  # anything with previous_token [n_layers, n_heads] on repeated random tokens
    hypotheses: tuple[HypothesisInfo, ...]
    rows: tuple  # Recovery, one per (data, hypothesis, baseline, positions)
    per_head: tuple  # Recovery of each behavioral head's mechanism (natural text)
    sensitivity: object  # experiments._context.Sensitivity
    elapsed: float
    figures: tuple[str, ...]
    model: dict = None  # experiments.induction_study.model_info
    splits: tuple = ()  # experiments._evaluate.EffectSplit of each behavioral head (natural text)
    composition: tuple = ()  # experiments._composition.Composition, natural text and RRT
    timings: dict = None  # seconds per stage of the run
    k_paths: tuple = ()  # experiments._composition.KPaths, natural text and RRT
    remix: dict | None = None  # experiments._remix.run_remix: Redwood's REMIX ladder (JSON-ready)

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
        """JSON form of the results (an output format; the cross-model report reads it)."""
        keep = lambda r: {k: v for k, v in asdict(r).items() if k != "per_example"}  # noqa: E731
        sc = self.roles.scores
        return {"command": self.command, "config": asdict(self.config), "elapsed_s": self.elapsed,
                "timings_s": dict(self.timings or {}),
                "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "model": self.model,
                "roles": {k: getattr(self.roles, k) for k in ("induction", "behavioral", "previous_token",
                                                              "previous_like", "further_back", "fallbacks",
                                                              "previous_of", "embedding", "mlp0_token_share")},
                "scores": {name: getattr(sc, name).tolist() for name in ("previous_token", "prefix_matching", "copying")},
                "hypotheses": [{"name": h.name, "label": h.label, "n_paths": h.n_paths, "path": h.path,
                                "claimed": h.claimed} for h in self.hypotheses],
                "rows": [keep(r) for r in self.rows], "per_head": [keep(r) for r in self.per_head],
                "effect_split": [asdict(s) for s in self.splits],
                "composition": [c.to_dict() for c in self.composition],
                "k_paths": [k.to_dict() for k in self.k_paths],
                "remix": self.remix,
                "context_sensitivity": {"window": self.sensitivity.window, "late_start": self.sensitivity.late_start,
                                        "increase": self.sensitivity.increase.tolist(),
                                        "stderr": self.sensitivity.stderr.tolist(),
                                        "sensitive": self.sensitive(), "threshold_nats": SENSITIVE_NATS},
                "figures": list(self.figures)}


def claimed_inputs(graph: nx.DiGraph, roles, model=None) -> str:
    """What ``graph`` claims into each induction head and into the copies (alias nodes) that feed them, in
    words: "1.3: q <- embed; k <- 0.3~1.3; v <- embed. 0.3~1.3 (= 0.3): v <- embed; q, k <- pos". With
    ``model``, a channel that reads every input it has in the full graph says so."""
    from scrub.claims.hypothesis import full_graph

    full = full_graph(model) if model is not None else None

    def inputs(node: str) -> str:
        by: dict[tuple[str, bool], list[str]] = {}  # (channel, position-restricted) -> component names
        for s, _, a in graph.in_edges(node, data=True):
            name = s.split("#")[0]  # a full copy "X#..." stands for X with all its inputs
            for c in (a.get("via") or ["in"]):
                by.setdefault((c, a.get("positions") is not None), []).append(name)
        if not by:
            return "nothing (all resampled)"
        comp = graph.nodes[node].get("component", node)
        every: dict[str, set[str]] = {}
        if full is not None and comp in full:
            for s, _, a in full.in_edges(comp, data=True):
                for c in (a.get("via") or ["in"]):
                    every.setdefault(c, set()).add(s)

        def describe(c: str, senders: list[str]) -> str:
            have, full_set = set(senders), every.get(c, set())
            if have == full_set and len(senders) > 3:
                return f"all its inputs ({len(senders)})"
            if len(senders) <= 6:
                return ", ".join(sorted(senders))
            if have < full_set and len(full_set - have) <= 3:
                return f"all its inputs but {', '.join(sorted(full_set - have))}"
            return f"{len(senders)} inputs ({', '.join(sorted(senders)[:3])}, ...)"

        groups: dict[tuple[str, bool], list[str]] = {}  # (description, restricted) -> channels
        for (c, restricted) in sorted(by):
            groups.setdefault((describe(c, by[c, restricted]), restricted), []).append(c)
        parts = [f"{', '.join(c for c in chans if c != 'in') or 'in'}{' at no-match keys' if restricted else ''} <- {what}"
                 for (what, restricted), chans in groups.items()]
        return "; ".join(parts)

    out, seen, todo = [], set(), [h for h in roles.induction if h in graph]
    while todo:
        node = todo.pop(0)
        if node in seen:
            continue
        seen.add(node)
        comp = graph.nodes[node].get("component")
        out.append(f"{node}{f' (= {comp})' if comp and comp != node.split('~')[0] else ''}: {inputs(node)}")
        todo += sorted(s for s in graph.predecessors(node) if "~" in s)  # the mechanism's copies
    return ". ".join(out) if out else "no induction head in this graph"


def training_rrt_share(model: str) -> float | None:
    """The share of repeated-random-token rows in the training recipe of a scrub checkpoint (None if unknown)."""
    from scrub.model.loading import ASSETS

    name = str(model)
    config = (ASSETS / name if (ASSETS / name / "config.json").is_file() else Path(name)) / "config.json"
    try:
        return float(json.loads(config.read_text())["meta"]["recipe"].get("rrt_frac", 0.0))
    except (OSError, KeyError, ValueError, TypeError):
        return None


def _same_graph(a: nx.DiGraph, b: nx.DiGraph) -> bool:
    key = lambda g: {(s, t, frozenset(d.get("via", "")), d.get("positions")) for s, t, d in g.edges(data=True)}  # noqa: E731
    return key(a) == key(b)


def _fmt(r) -> str:
    return f"{r.value:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]"


# --- figures -------------------------------------------------------------------------------------------

QUICK_GRAPHS = ("induction_minimal", "induction_refined", OTHER_EMBEDDING, K_VIA_MLP0)
STUDY_FIGURES = ("heads_*.png", "graph_*.png", "ladder_*.png", "per_example_*.png", "context_vs_prefix.png",
                 "composition.png", "effect_by_position.png")


def write_figures(res: StudyResults, out: Path, model) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    for pattern in STUDY_FIGURES:  # an earlier run's figures: replaced, never mixed with this run's
        for stale in out.glob(pattern):
            stale.unlink()
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
    drawn = [h for h in res.hypotheses if h.name not in ("empty",)]
    if res.config.quick:  # quick runs draw three claims only (each drawing takes about a second)
        drawn = [h for h in drawn if h.name in QUICK_GRAPHS]
    for h in drawn:
        figs.append(claim_graph(h.graph, out / f"graph_{h.name}.png", depth=depth(h.graph), focus=tuple(roles.induction),
                                title=f"{h.name}: {h.label}\nclaimed inputs of {', '.join(roles.induction)} and of "
                                      f"the mechanism's copies; the rest of the claim is not drawn"))
    remix = remix_figure(res.remix, out / "remix_ladder.png", title=f"{Path(str(res.config.model)).name}: Redwood's "
                         "REMIX ladder, loss recovered vs the induction baseline")
    if remix is not None:
        figs.append(remix)
    comps = [c.to_dict() for c in res.composition]
    if any(c["receivers"] for c in comps):  # (with nothing after the induction heads, the table says it all)
        figs.append(composition_heatmap(comps, out / "composition.png",
                                        title=f"{Path(str(res.config.model)).name}: path patching from the induction "
                                              f"heads (nats; '*': 95% interval excludes 0)"))
    if res.splits:
        groups = [sp.name for sp in res.splits]
        figs.append(grouped_intervals(groups, ["induction candidates", "other positions"],
                                      [[sp.per_token[0], sp.per_token[1]] for sp in res.splits],
                                      out / "effect_by_position.png", xlabel="loss increase per token when the head is "
                                      "resampled (nats, natural text)", title=f"{res.config.model}: where each behavioral "
                                      f"head's effect falls"))
    return [str(p.relative_to(out)) for p in figs]


# --- report --------------------------------------------------------------------------------------------

def _table(res: StudyResults, base: str, mode: str) -> list[str]:
    redwood = {n: text for n, _, text in REDWOOD}
    lines = ["| hypothesis | paths | natural text | repeated random tokens | Redwood (their model) |",
             "|---|---:|---|---|---|"]
    for h in res.hypotheses:
        if base == "induction_baseline" and h.name in NOT_ON_INDUCTION_SCALE:
            continue
        theirs = redwood.get(h.name, "— (ours)" if h.name in REFINEMENTS or h.name in (OTHER_EMBEDDING, K_VIA_MLP0) else "")
        lines.append(f"| {h.label} (`{h.name}`) | {h.n_paths} | {_fmt(res.row('natural', h.name, base, mode))} | "
                     f"{_fmt(res.row('rrt', h.name, base, mode))} | {theirs if base == 'induction_baseline' else ''} |")
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
        below = [f for f in res.roles.fallbacks if "previous-token" in f]
        out.append(f"- **No single previous-token head:** the behavioral induction heads are "
                   f"{', '.join(res.roles.behavioral)} (prefix matching up to {float(pm.max()):.2f}), but "
                   f"{'; '.join(below)}; the previous-token-like heads {', '.join(res.roles.previous_like) or 'none'} "
                   f"share the job. The minimal mechanism's \"previous-token head\" is the top scorer of the layers "
                   f"below each induction head ({', '.join(f'{r} <- {p}' for r, p in res.roles.previous_of)}); the "
                   f"first refinement claims all of them.")
    out += [f"- The minimal two-head mechanism recovers {_fmt(rrt)} of the loss on repeated random tokens and "
           f"{_fmt(nat)} on natural text (induction-candidate positions, against the induction baseline): "
           + (f"it falls short on natural text by {gap:.3f} (the intervals do not overlap)." if separated else
              f"a difference of {gap:.3f}, {'with overlapping intervals' if gap > 0 else 'not a shortfall on natural text'}.")]
    if any(h.name == OTHER_EMBEDDING for h in res.hypotheses):
        on, orr = res.row("natural", OTHER_EMBEDDING), res.row("rrt", OTHER_EMBEDDING)
        out.append(f"- The token-embedding choice (mlp.0 {'in' if 'mlp.0' in res.roles.embedding else 'out'}, from its "
                   f"token share {res.roles.mlp0_token_share:.2f}), tested: the other choice "
                   f"({res.label(OTHER_EMBEDDING)}) recovers {_fmt(on)} on natural text and {_fmt(orr)} on RRT, against "
                   f"{_fmt(nat)} and {_fmt(rrt)} as claimed.")
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
    for name in [*REFINEMENTS, *(h.name for h in res.hypotheses if h.name == K_VIA_MLP0)]:
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
            "- induction-baseline denominators (baseline - clean loss, nats): "
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
    lines = ["| head | loss increase (nats) [95% interval] | prefix matching | copying | behavioral induction | context-sensitive |",
             "|---|---:|---:|---:|---|---|"]
    for lay in range(s.increase.shape[0]):
        for h in range(s.increase.shape[1]):
            name = f"{lay}.{h}"
            inc, err = float(s.increase[lay, h]), float(s.stderr[lay, h])
            lines.append(f"| {name} | {inc:.4f} [{inc - 1.96 * err:.4f}, {inc + 1.96 * err:.4f}] | "
                         f"{float(sc.prefix_matching[lay, h]):.2f} | {float(sc.copying[lay, h]):.2f} | "
                         f"{'yes' if name in beh else ''} | {'yes' if name in sens else ''} |")
    lines += ["", f"- Context-sensitive heads that are not behavioral induction heads: "
              f"{', '.join(h for h in sens if h not in beh) or 'none'}.",
              f"- Behavioral induction heads that do little on natural text (not context-sensitive): "
              f"{', '.join(h for h in res.roles.behavioral if h not in sens) or 'none'}."]
    return lines


def _interval3(t) -> str:
    return f"{t[0]:.4f} [{t[1]:.4f}, {t[2]:.4f}]"


def _per_head(res: StudyResults) -> list[str]:
    L = ["For each behavioral induction head alone: that head's inputs reduced to the mechanism, everything else "
         "(including the other induction heads) kept; baseline = that head's inputs resampled (natural text). "
         "\"Other\" positions are the prediction positions that are not induction candidates.", "",
         "| head | candidates | all positions | other positions | baseline - clean (nats, candidates) |",
         "|---|---|---|---|---:|"]
    for h in dict.fromkeys(r.hypothesis for r in res.per_head):
        c, a, o = (next(r for r in res.per_head if r.hypothesis == h and r.positions == m) for m in ("candidates", "all", "other"))
        L.append(f"| {h} | {_fmt(c)} | {_fmt(a)} | {_fmt(o)} | {c.loss_baseline - c.loss_clean:.4f} |")
    if res.splits:
        L += ["", "Where each head's effect falls: the loss increase when the head's inputs are all resampled (it runs "
              "on another sequence), per scored token at induction-candidate positions and elsewhere, and the share "
              "of its summed effect that falls at candidates (95% bootstrap intervals over sequences).", "",
              "![effect by position](effect_by_position.png)", "",
              "| head | per token, candidates (nats) | per token, other positions (nats) | share of the effect at candidates | share of tokens that are candidates |",
              "|---|---|---|---|---:|"]
        for sp in res.splits:
            L.append(f"| {sp.name} | {_interval3(sp.per_token[0])} | {_interval3(sp.per_token[1])} | "
                     f"{sp.share[0]:.2f} [{sp.share[1]:.2f}, {sp.share[2]:.2f}] | {sp.token_share:.2f} |")
    return L


def composers(comp: dict) -> list[dict]:
    """Paths from an induction head through a later component whose interval excludes 0 and whose size is at
    least ``COMPOSES`` of the sender's direct effect (or of the largest direct effect if that is ~0)."""
    scale = max([abs(d["value"]) for d in comp["direct"].values()] or [0.0])
    out = []
    for p in comp["paths"]:
        direct = abs(comp["direct"][p["sender"]]["value"]) or scale
        if (p["low"] > 0 or p["high"] < 0) and abs(p["value"]) >= COMPOSES * direct:
            out.append(p)
    return sorted(out, key=lambda p: -abs(p["value"]))


def _composition(res: StudyResults) -> list[str]:
    comps = [c.to_dict() for c in res.composition]
    if not comps:
        return ["Not computed."]
    first = comps[0]
    L = [f"Path patching (`scrub.patching.paths.patch_matrix`, MLPs included) from each behavioral induction head "
         f"({', '.join(first['senders'])}) into every later head's Q, K and V and every MLP that reads it, and "
         f"straight into the logits. Effect = patched - clean loss (nats; positive: the path lowers the loss). RRT: "
         f"corrupted = a fresh random sequence, loss at the second repeat; natural text: corrupted = another window, "
         f"loss at each window's induction-candidate positions. Intervals: t intervals over {first['n_chunks']} "
         f"chunks of {first['n_examples'] // max(1, first['n_chunks'])} sequences. A later component *composes* with "
         f"an induction head when its path's interval excludes 0 and it is at least {COMPOSES:.0%} of the head's "
         f"direct effect (the analogue of IOI's S-inhibition heads, which read the induction heads through Q).", ""]
    if not first["receivers"]:
        L += ["No head or MLP comes after the induction heads in this model: nothing can compose with them. "
              "Direct effects only:", ""]
    if "composition.png" in res.figures:
        L += ["![composition](composition.png)", ""]
    L += ["", "| data | induction head | direct effect (-> logits) | largest paths through later components |", "|---|---|---|---|"]
    for c in comps:
        for s in c["senders"]:
            paths = sorted((p for p in c["paths"] if p["sender"] == s), key=lambda p: -abs(p["value"]))[:4]
            d = c["direct"][s]
            L.append(f"| {c['data']} | {s} | {d['value']:.4f} [{d['low']:.4f}, {d['high']:.4f}] | "
                     + ("; ".join(f"{p['receiver']}{':' + p['channel'] if p['channel'] != 'in' else ''} "
                                  f"{p['value']:.4f} [{p['low']:.4f}, {p['high']:.4f}]" for p in paths) or "none") + " |")
    for c in comps:
        found = composers(c)
        if first["receivers"]:
            L.append("")
            L.append(f"- {c['data']}: " + (("components that compose: " + "; ".join(
                f"{p['sender']} -> {p['receiver']}{':' + p['channel'] if p['channel'] != 'in' else ''} "
                f"({p['value']:+.4f})" for p in found)) if found else "no later component composes with the induction "
                "heads by this criterion") + f" (clean loss {c['clean']:.3f}, corrupted {c['corrupted']:.3f}).")
    return L


def k_path_summary(k: dict) -> list[tuple[str, str, dict, list[dict]]]:
    """Per (induction head, previous-token head): the direct route and the indirect routes whose interval
    excludes 0, largest first."""
    out = []
    for pair in dict.fromkeys((p["receiver"], p["previous"]) for p in k["paths"]):
        rows = [p for p in k["paths"] if (p["receiver"], p["previous"]) == pair]
        direct = next(p for p in rows if p["route"] == "direct")
        found = sorted((p for p in rows if p["route"] != "direct" and (p["low"] > 0 or p["high"] < 0)),
                       key=lambda p: -abs(p["value"]))
        out.append((pair[0], pair[1], direct, found))
    return out


def _k_paths(res: StudyResults) -> list[str]:
    ks = [k.to_dict() for k in res.k_paths]
    if not ks:
        return []
    claimed = dict(res.roles.previous_of)
    L = ["The mechanism claims the previous-token head's output into the induction head's K directly, through the "
         "residual stream. Measured (path patching, same data and intervals as above), for the claimed previous-token "
         "head (**bold**) and every other previous-token-like head before the induction head: the direct route "
         "head -> induction head K -> logits, and each route through one component computed between them (a head's "
         "V, an MLP) -> induction head K -> logits.", "",
         "| data | induction head <- previous-token head | direct | indirect routes with an interval excluding 0 (largest first) | indirect routes |",
         "|---|---|---|---|---:|"]
    for k in ks:
        for r, p, d, found in k_path_summary(k):
            n = sum(1 for x in k["paths"] if (x["receiver"], x["previous"]) == (r, p) and x["route"] != "direct")
            pair = f"**{r} <- {p}**" if claimed.get(r) == p else f"{r} <- {p}"
            L.append(f"| {k['data']} | {pair} | {d['value']:.4f} [{d['low']:.4f}, {d['high']:.4f}] | "
                     + ("; ".join(f"{x['route']} {x['value']:.4f} [{x['low']:.4f}, {x['high']:.4f}]" for x in found[:4])
                        or "none") + f" | {n} |")
    return L


def _roles_text(res: StudyResults) -> list[str]:
    roles, m = res.roles, res.model or {}
    prev = "; ".join(f"{r} <- {p}" for r, p in roles.previous_of) or roles.previous_token
    L = [f"- Previous-token head of each induction head (top previous-token scorer of the earlier layers, induction "
         f"heads excluded): {prev}. The mechanism's K path runs from it to the induction head directly, through the "
         f"residual stream (no intermediate component is claimed on it)."]
    if m.get("mlps"):
        share = roles.mlp0_token_share
        L.append(f"- MLPs: mlp.0's output is {share:.2f} a function of the current token (share of its variance left "
                 f"in place when its other input, the layer-0 heads, comes from another sequence; "
                 f"`hypotheses._heads.mlp0_token_share`). Threshold 0.5: the mechanism's \"token embedding\" is "
                 + ("**the embedding and mlp.0** (an alias `mlp.0~token` that reads the embedding only), wherever the "
                    "mechanism claims the token embedding (Q and V of the induction heads, V of the previous-token "
                    "head's copy, K with the embedding refinement)." if "mlp.0" in roles.embedding else
                    "**the embedding alone**; mlp.0 is not claimed on the mechanism's paths (resampled there).")
                 + " The other MLPs are never part of the mechanism: they keep all their inputs everywhere except as "
                 "inputs of the induction heads, where the Q/V refinement claims them.")
    return L


def write_report(res: StudyResults, out: Path) -> Path:
    cfg, roles, m = res.config, res.roles, res.model or {}
    arch = (f"{m['n_layers']} layers x {m['n_heads']} heads, d_model {m['d_model']}, "
            + (f"MLPs (d_mlp {m['d_mlp']})" if m.get("mlps") else "attention-only") + f", {m['positions']} positions"
            if m else "")
    L = [f"# Induction heads: the mechanistic definition against the behavioral one — `{cfg.model}`", "",
         f"Generated by `{res.command}` (seed {cfg.seed}) on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC in "
         f"{res.elapsed:.0f} s; model `{cfg.model}` ({arch}). Natural text: {cfg.n_natural} windows of {cfg.seq_len} "
         f"tokens; repeated random tokens (RRT): {cfg.n_rrt} sequences of BOS + {cfg.rrt_length} tokens x 2; "
         f"{cfg.n_bootstrap} bootstrap resamples of examples. Every number below is written by "
         f"`experiments/_report.py` from the run; the cross-model report is [../induction_study.md](../induction_study.md)."
         + (" Seconds per stage: " + ", ".join(f"{k} {v:.0f}" for k, v in res.timings.items())
            + f"; torch threads: {m.get('torch_threads', '?')}." if res.timings else ""), ""]
    if roles.fallbacks:
        L += ["**Warning — roles by fallback:** " + "; ".join(roles.fallbacks) + ".", ""]
    rrt_share = m.get("rrt_frac") if m else training_rrt_share(str(cfg.model))
    if rrt_share:
        L += [f"**Note — RRT is in distribution here:** {rrt_share:.0%} of this model's training rows were repeated "
              "random tokens (see the model card in README.md), so the RRT columns measure a trained-for behaviour; "
              "the natural-text columns are held-out plays without augmentation.", ""]
    elif rrt_share == 0:
        L += ["**Note — RRT is out of distribution here:** none of this model's training rows were repeated random "
              "tokens, so the RRT columns measure how the model generalises its in-context copying to a sequence "
              "unlike anything it was trained on; the natural-text columns are held-out plays.", ""]
    L += ["## 1. Behavioral head scores", "",
          f"Roles (from `hypotheses/_heads.py`: scores of `scrub.heads.scores` with its fixed seed, the heads every hypothesis file picks): behavioral induction heads "
          f"{', '.join(roles.behavioral) or 'none'}; mechanism receivers {', '.join(roles.induction)}; "
          f"previous-token head {roles.previous_token}; previous-token-like heads {', '.join(roles.previous_like)}; "
          f"heads attending further back {', '.join(roles.further_back) or 'none'}.", ""] + _roles_text(res) + ["",
          "| head | prev-token (natural) | prev-token (RRT) | prefix matching (RRT) | duplicate (natural) | copying | further back |",
          "|---|---:|---:|---:|---:|---:|---:|"]
    s = roles.scores
    for lay in range(s.previous_token.shape[0]):
        for h in range(s.previous_token.shape[1]):
            L.append(f"| {lay}.{h} | {float(s.previous_token[lay, h]):.2f} | {float(res.scores_rrt.previous_token[lay, h]):.2f} | "
                     f"{float(s.prefix_matching[lay, h]):.2f} | {float(s.duplicate_token[lay, h]):.2f} | "
                     f"{float(s.copying[lay, h]):.2f} | {float(roles.further_back_score[lay, h]):.2f} |")
    L += ["", "Heatmaps: " + ", ".join(f"[{f}]({f})" for f in res.figures if f.startswith("heads_")) + ".", "",
          "## 2. Hypotheses", "",
          "Each file's docstring says the claim in words; *on this model* says what its graph claims into the "
          "induction heads (and into the copies of other components that feed them; `X~R` is X's copy on the path "
          "into R), every other input of the model being claimed as in the full graph.", ""]
    for h in res.hypotheses:
        where = f"`{h.path}`" if h.path else f"`{h.name}` (built by the study)"
        graph = f", [graph](graph_{h.name}.png)" if f"graph_{h.name}.png" in res.figures else ""
        L.append(f"- {where} ({h.n_paths} paths{graph}): {' '.join(h.description.split())}"
                 + (f" *On this model:* {h.claimed}." if h.claimed and h.name not in ("empty",) else ""))
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
    L += ["## 3b. Redwood's REMIX ladder, rung by rung", "",
          "Redwood's REMIX day-3 exercises (the induction write-up's naive hypothesis) resample one part of the induction "
          "heads' inputs at a time, everything else of the model claimed in full. The V/Q/K-only rows above are this "
          "study's mechanism thirds (K through a copy of the previous-token head that reads only the embedding and the "
          "positions); the REMIX rungs below keep the previous-token head's own inputs, as REMIX does.", ""]
    L += (["![REMIX ladder](remix_ladder.png)", ""] if "remix_ladder.png" in res.figures else []) + remix_lines(res.remix) + [""]
    L += ["## 4. What the numbers say", ""] + _findings(res) + ["", "Sanity checks:", ""] + _sanity(res)
    L += ["", "## 5. Per-example distribution (candidate positions)", "",
          "Per-example loss recovered is noisy where an example's baseline and clean losses are close; the point is "
          "that a good mean is not the net of large gains and losses.", ""] + _per_example(res)
    L += ["", "![natural](per_example_natural.png) ![rrt](per_example_rrt.png)", "",
          "## 6. Context sensitivity", "",
          f"For each head, keys more than W = {res.sensitivity.window} tokens before the query read K and V from another "
          f"example, written as a hypothesis per head and run by the engine (`experiments/_context.py`: the full graph "
          f"with the edges into the head's K and V claimed through `qk_mask=within(W)`, checked against the "
          f"TransformerLens-hook version in `tests/test_context.py`); scored at prediction positions >= "
          f"{res.sensitivity.late_start} on "
          f"{cfg.n_context} natural-text windows (clean loss there {res.sensitivity.loss_clean:.3f}). Context-sensitive: "
          f"increase >= {SENSITIVE_NATS} nats and > 2 s.e.; intervals: +- 1.96 s.e. over windows.", "",
          "![context](context_vs_prefix.png)", ""] + _context(res)
    L += ["", "## 7. Per head: the two-head mechanism, and where the head's effect falls", ""] + _per_head(res)
    L += ["", "## 8. Do later components compose with the induction heads?", ""] + _composition(res)
    if res.k_paths:
        L += ["", "### The K path: direct, or through the layers in between?", ""] + _k_paths(res)
    L += ["", "## Method notes", "",
          "- Loss recovered = (L_baseline - L_scrubbed) / (L_baseline - L_clean), token-weighted over the scored "
          "positions; intervals: percentile bootstrap over examples. Candidates: prediction positions whose token "
          "occurred earlier in the sequence.",
          "- Hypotheses are built from the full graph minus the inputs of the induction heads (Redwood's baseline), "
          "plus the claimed paths; a previous-token head on a mechanism path is an alias node whose V reads the "
          "token embedding and whose Q/K read only positions. All hypotheses and baselines of one batch share one clean run "
          "and the same seeded draws: one draw per hypothesis node per datum, shared by every path through the node "
          "(Redwood's implementation; `experiments/_evaluate.py`).",
          "- Roles in deeper models: the induction heads are the behavioral heads after layer 0 (any layer); each one's "
          "previous-token head is the top previous-token scorer of the layers before it; previous-token-like, "
          "further-back and \"other\" heads are the heads of the layers before the last induction head (never an "
          "induction head), each used only for the induction heads it can feed.",
          ] + (["- MLPs: " + ("mlp.0 was claimed as part of the token embedding" if "mlp.0" in roles.embedding else
                             "mlp.0 was not claimed as part of the token embedding")
                + f" because its token share is {roles.mlp0_token_share:.2f} (threshold 0.5); the ladder's "
                  f"`{OTHER_EMBEDDING}` row is the minimal mechanism with the other choice, so the choice is "
                  "tested, not assumed."] if roles.mlp0_token_share is not None else []) + (
          ["- Shortformer: positions enter only Q and K and are identical across examples, so resampling never touches "
           "them; the positional refinement is a no-op by construction."] if m.get("positions") == "shortformer" else [])
    path = out / "induction_study.md"
    path.write_text("\n".join(L) + "\n")
    (out / "results.json").write_text(json.dumps(res.summary(), indent=1) + "\n")
    return path

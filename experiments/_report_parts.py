"""The tables and lists inside the sections of one model's Markdown report (loss-recovered tables, findings,
sanity checks, per-example quantiles, context sensitivity, per-head results, composition, K paths, roles), each
a function from the ``StudyResults`` to its lines; every number is read from the results."""

from __future__ import annotations

import networkx as nx
import torch

from experiments._results import (
    COMPOSES,
    K_VIA_MLP0,
    KEY,
    NOT_ON_INDUCTION_SCALE,
    OTHER_EMBEDDING,
    REDWOOD,
    REFINEMENTS,
    StudyResults,
    composers,
    k_path_summary,
)


def _same_graph(a: nx.DiGraph, b: nx.DiGraph) -> bool:
    key = lambda g: {(s, t, frozenset(d.get("via", "")), d.get("positions")) for s, t, d in g.edges(data=True)}  # noqa: E731
    return key(a) == key(b)


def _fmt(r) -> str:
    return f"{r.value:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]"


def recovery_table(res: StudyResults, base: str, mode: str) -> list[str]:
    """Loss recovered of every hypothesis against ``base`` at ``mode`` positions, beside Redwood's numbers."""
    redwood = {n: text for n, _, text in REDWOOD}
    ours = (*REFINEMENTS, OTHER_EMBEDDING, K_VIA_MLP0)
    lines = ["| hypothesis | paths | natural text | repeated random tokens | Redwood (their model) |",
             "|---|---:|---|---|---|"]
    for h in res.hypotheses:
        if base == "induction_baseline" and h.name in NOT_ON_INDUCTION_SCALE:
            continue
        theirs = redwood.get(h.name, "— (ours)" if h.name in ours else "")
        lines.append(f"| {h.label} (`{h.name}`) | {h.n_paths} | {_fmt(res.row('natural', h.name, base, mode))} | "
                     f"{_fmt(res.row('rrt', h.name, base, mode))} | {theirs if base == 'induction_baseline' else ''} |")
    return lines


def findings(res: StudyResults) -> list[str]:
    """What the numbers say, in bullets: caveats on the roles, the minimal mechanism, the refinements."""
    return _role_caveats(res) + _minimal_findings(res) + _refinement_findings(res)


def _role_caveats(res: StudyResults) -> list[str]:
    """A bullet when the roles are fallbacks: no behavioral induction heads, or no single previous-token head."""
    pm, prev = res.roles.scores.prefix_matching, res.roles.scores.previous_token
    if not res.roles.behavioral:
        e = res.row("rrt", "full", "empty")
        uses = "it barely uses the repeat" if e.loss_clean > 0.5 * e.loss_baseline else "it does use the repeat"
        return [f"- **This model has no behavioral induction heads** (largest prefix-matching score "
                f"{float(pm.max()):.2f}, threshold 0.4; largest previous-token score {float(prev.max()):.2f}). On "
                f"RRT its clean loss at repeated tokens is {e.loss_clean:.3f} nats against {e.loss_baseline:.3f} "
                f"for the model run on another example: {uses}. Every induction number below therefore describes "
                f"the fallback head(s) {', '.join(res.roles.induction)} and previous-token head "
                f"{res.roles.previous_token}, not an identified induction mechanism."]
    if any("previous-token" in f for f in res.roles.fallbacks):
        below = [f for f in res.roles.fallbacks if "previous-token" in f]
        return [f"- **No single previous-token head:** the behavioral induction heads are "
                f"{', '.join(res.roles.behavioral)} (prefix matching up to {float(pm.max()):.2f}), but "
                f"{'; '.join(below)}; the previous-token-like heads {', '.join(res.roles.previous_like) or 'none'} "
                f"share the job. The minimal mechanism's \"previous-token head\" is the top scorer of the layers "
                f"below each induction head ({', '.join(f'{r} <- {p}' for r, p in res.roles.previous_of)}); the "
                f"first refinement claims all of them."]
    return []


def _minimal_findings(res: StudyResults) -> list[str]:
    """The minimal mechanism on both data, the other token-embedding choice, and what the baseline leaves."""
    nat, rrt = res.row("natural", "induction_minimal"), res.row("rrt", "induction_minimal")
    gap = rrt.value - nat.value
    separated = rrt.ci_low > nat.ci_high
    overlap = "with overlapping intervals" if gap > 0 else "not a shortfall on natural text"
    out = [f"- The minimal two-head mechanism recovers {_fmt(rrt)} of the loss on repeated random tokens and "
           f"{_fmt(nat)} on natural text (induction-candidate positions, against the induction baseline): "
           + (f"it falls short on natural text by {gap:.3f} (the intervals do not overlap)." if separated else
              f"a difference of {gap:.3f}, {overlap}.")]
    if any(h.name == OTHER_EMBEDDING for h in res.hypotheses):
        on, orr = res.row("natural", OTHER_EMBEDDING), res.row("rrt", OTHER_EMBEDDING)
        out.append(f"- The token-embedding choice (mlp.0 {'in' if 'mlp.0' in res.roles.embedding else 'out'}, from its "
                   f"token share {res.roles.mlp0_token_share:.2f}), tested: the other choice "
                   f"({res.label(OTHER_EMBEDDING)}) recovers {_fmt(on)} on natural text and {_fmt(orr)} on RRT, "
                   f"against {_fmt(nat)} and {_fmt(rrt)} as claimed.")
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
    return out


def _refinement_findings(res: StudyResults) -> list[str]:
    """What each refinement adds to the minimal mechanism, and the behavioral heads alone."""
    nat, rrt = res.row("natural", "induction_minimal"), res.row("rrt", "induction_minimal")
    out = [f"- Gap to the full model on natural text: {1 - nat.value:.3f}. Each refinement adds one idea to the "
           "minimal mechanism; gain over the minimal mechanism and the share of that gap it closes:"]
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


def sanity(res: StudyResults) -> list[str]:
    """Checks every run must pass (the full graph recovers 1, a baseline 0 against itself) and interval sizes."""
    full = [r for r in res.rows if r.hypothesis == "full"]
    worst = max(abs(r.value - 1) for r in full)
    empty = [r for r in res.rows if r.hypothesis == "empty" and r.baseline == "empty"]
    base = [r for r in res.rows if r.hypothesis == "induction_baseline" and r.baseline == "induction_baseline"]
    pos = max(abs(res.row(d, "induction_positions").value - res.row(d, "induction_minimal").value)
              for d in ("natural", "rrt"))
    widths = [r.ci_high - r.ci_low for r in res.rows if r.hypothesis not in ("full", "empty", "induction_baseline")
              and not (r.baseline == "induction_baseline" and r.hypothesis in NOT_ON_INDUCTION_SCALE)]
    denominators = [r.loss_baseline - r.loss_clean for r in res.rows
                    if r.baseline == "induction_baseline" and r.hypothesis == "full"]
    return [f"- full graph: loss recovered within {worst:.1e} of 1 in all {len(full)} settings "
            f"({'OK' if worst < 1e-3 else 'NOT 1: engine problem'}).",
            f"- empty vs empty and induction baseline vs itself: {max(abs(r.value) for r in empty + base):.1e} "
            "(must be 0).",
            f"- positions into Q/K change loss recovered by at most {pos:.1e} (0 expected: shortformer positions are "
            "identical in every example, so claiming them changes nothing).",
            f"- 95% interval widths of the other hypotheses: median {sorted(widths)[len(widths) // 2]:.3f}, "
            f"max {max(widths):.3f}.",
            "- induction-baseline denominators (baseline - clean loss, nats): "
            + ", ".join(f"{d:.4f}" for d in denominators) + " (natural/RRT x candidates/all)."]


def per_example_quantiles(res: StudyResults) -> list[str]:
    """Quantiles of per-example loss recovered of the key hypotheses, and the shares below 0 and above 1."""
    lines = ["| data | hypothesis | p10 | p25 | median | p75 | p90 | share < 0 | share > 1 |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for data in ("natural", "rrt"):
        for name, base in KEY:
            per = torch.tensor(res.row(data, name, base).per_example)
            q = torch.quantile(per, torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9])).tolist()
            lines.append(f"| {data} | {res.label(name)} (vs {base.replace('_', ' ')}) | "
                         + " | ".join(f"{x:.2f}" for x in q)
                         + f" | {float((per < 0).float().mean()):.2f} | {float((per > 1).float().mean()):.2f} |")
    return lines


def context_table(res: StudyResults) -> list[str]:
    s, sc = res.sensitivity, res.roles.scores
    sens, beh = res.sensitive(), set(res.roles.behavioral)
    lines = ["| head | loss increase (nats) [95% interval] | prefix matching | copying | behavioral induction "
             "| context-sensitive |",
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


def per_head(res: StudyResults) -> list[str]:
    L = ["For each behavioral induction head alone: that head's inputs reduced to the mechanism, everything else "
         "(including the other induction heads) kept; baseline = that head's inputs resampled (natural text). "
         "\"Other\" positions are the prediction positions that are not induction candidates.", "",
         "| head | candidates | all positions | other positions | baseline - clean (nats, candidates) |",
         "|---|---|---|---|---:|"]
    for h in dict.fromkeys(r.hypothesis for r in res.per_head):
        c, a, o = (next(r for r in res.per_head if r.hypothesis == h and r.positions == m)
                   for m in ("candidates", "all", "other"))
        L.append(f"| {h} | {_fmt(c)} | {_fmt(a)} | {_fmt(o)} | {c.loss_baseline - c.loss_clean:.4f} |")
    if res.splits:
        L += ["", "Where each head's effect falls: the loss increase when the head's inputs are all resampled (it runs "
              "on another sequence), per scored token at induction-candidate positions and elsewhere, and the share "
              "of its summed effect that falls at candidates (95% bootstrap intervals over sequences).", "",
              "![effect by position](effect_by_position.png)", "",
              "| head | per token, candidates (nats) | per token, other positions (nats) "
              "| share of the effect at candidates | share of tokens that are candidates |",
              "|---|---|---|---|---:|"]
        for sp in res.splits:
            L.append(f"| {sp.name} | {_interval3(sp.per_token[0])} | {_interval3(sp.per_token[1])} | "
                     f"{sp.share[0]:.2f} [{sp.share[1]:.2f}, {sp.share[2]:.2f}] | {sp.token_share:.2f} |")
    return L


def composition(res: StudyResults) -> list[str]:
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
    L += ["", "| data | induction head | direct effect (-> logits) | largest paths through later components |",
          "|---|---|---|---|"]
    for c in comps:
        for s in c["senders"]:
            paths = sorted((p for p in c["paths"] if p["sender"] == s), key=lambda p: -abs(p["value"]))[:4]
            d = c["direct"][s]
            routes = "; ".join(f"{p['receiver']}{':' + p['channel'] if p['channel'] != 'in' else ''} "
                               f"{p['value']:.4f} [{p['low']:.4f}, {p['high']:.4f}]" for p in paths)
            L.append(f"| {c['data']} | {s} | {d['value']:.4f} [{d['low']:.4f}, {d['high']:.4f}] | "
                     + (routes or "none") + " |")
    for c in comps:
        found = composers(c)
        if first["receivers"]:
            L.append("")
            L.append(f"- {c['data']}: " + (("components that compose: " + "; ".join(
                f"{p['sender']} -> {p['receiver']}{':' + p['channel'] if p['channel'] != 'in' else ''} "
                f"({p['value']:+.4f})" for p in found)) if found else "no later component composes with the induction "
                "heads by this criterion") + f" (clean loss {c['clean']:.3f}, corrupted {c['corrupted']:.3f}).")
    return L


def k_path_table(res: StudyResults) -> list[str]:
    ks = [k.to_dict() for k in res.k_paths]
    if not ks:
        return []
    claimed = dict(res.roles.previous_of)
    L = ["The mechanism claims the previous-token head's output into the induction head's K directly, through the "
         "residual stream. Measured (path patching, same data and intervals as above), for the claimed previous-token "
         "head (**bold**) and every other previous-token-like head before the induction head: the direct route "
         "head -> induction head K -> logits, and each route through one component computed between them (a head's "
         "V, an MLP) -> induction head K -> logits.", "",
         "| data | induction head <- previous-token head | direct "
         "| indirect routes with an interval excluding 0 (largest first) | indirect routes |",
         "|---|---|---|---|---:|"]
    for k in ks:
        for r, p, d, found in k_path_summary(k):
            n = sum(1 for x in k["paths"] if (x["receiver"], x["previous"]) == (r, p) and x["route"] != "direct")
            pair = f"**{r} <- {p}**" if claimed.get(r) == p else f"{r} <- {p}"
            L.append(f"| {k['data']} | {pair} | {d['value']:.4f} [{d['low']:.4f}, {d['high']:.4f}] | "
                     + ("; ".join(f"{x['route']} {x['value']:.4f} [{x['low']:.4f}, {x['high']:.4f}]" for x in found[:4])
                        or "none") + f" | {n} |")
    return L


def roles_text(res: StudyResults) -> list[str]:
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

"""The cross-model report of the induction study: ``<out>/induction_study.md``, written only from the
per-model ``<out>/<model>/results.json`` files (``StudyResults.summary()``), so it can be rebuilt without
rerunning anything (``scrub study --report-only``). With one model it is that model's summary alone; with
two or more it adds the cross-model section (four questions, with intervals) and a conclusion.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from experiments._discovery import discovery_cell, discovery_sentence
from experiments._figures import grouped_intervals
from experiments._remix import cross_remix_lines, remix_sentence
from experiments._results import COMPOSES, K_VIA_MLP0, OTHER_EMBEDDING, REFINEMENTS, composers, k_path_summary

LADDER = ("induction_minimal", *REFINEMENTS)
OLD_LAYOUT = ("results.json", "heads_*.png", "graph_*.png", "ladder_*.png", "per_example_*.png",
              "context_vs_prefix.png")
# the files the study wrote straight into experiments/results/ before it wrote one folder per model


def _row(res: dict, data: str, name: str, base: str = "induction_baseline",
         positions: str = "candidates") -> dict | None:
    return next((r for r in res["rows"] if (r["data"], r["hypothesis"], r["baseline"], r["positions"])
                 == (data, name, base, positions)), None)


def _fmt(r: dict | None, digits: int = 3) -> str:
    if r is None:
        return "—"
    return f"{r['value']:.{digits}f} [{r['ci_low']:.{digits}f}, {r['ci_high']:.{digits}f}]"


def _label(res: dict, name: str) -> str:
    return next((h["label"] for h in res["hypotheses"] if h["name"] == name), name)


def _arch(res: dict) -> str:
    m = res.get("model") or {}
    if not m:
        return "?"
    return (f"{m['n_layers']} x {m['n_heads']} heads, d_model {m['d_model']}, "
            + (f"MLPs (d_mlp {m['d_mlp']})" if m.get("mlps") else "attention-only"))


def _rrt(res: dict) -> str:
    share = (res.get("model") or {}).get("rrt_frac")
    return "unknown" if share is None else f"{share:.0%} of rows" + (" (RRT out of distribution)" if share == 0 else "")


def _heads(res: dict, names) -> str:
    sc = res["scores"]
    out = []
    for h in names:
        lay, head = (int(x) for x in h.split("."))
        out.append(f"{h} ({sc['prefix_matching'][lay][head]:.2f}, {sc['copying'][lay][head]:.2f})")
    return ", ".join(out) or "none"


def _sensitive(res: dict) -> list[str]:
    return list(res["context_sensitivity"].get("sensitive", []))


def _increase(res: dict, head: str) -> tuple[float, float, float]:
    cs = res["context_sensitivity"]
    lay, h = (int(x) for x in head.split("."))
    inc, err = cs["increase"][lay][h], cs["stderr"][lay][h]
    return inc, inc - 1.96 * err, inc + 1.96 * err


def _full(res: dict, data: str, base: str = "induction_baseline", positions: str = "candidates") -> dict:
    """The full graph's row, which every run has."""
    row = _row(res, data, "full", base, positions)
    if row is None:
        raise KeyError(f"no full-graph row for {data}, {base}, {positions} in {res.get('command')}")
    return row


def _side_by_side(results: list[tuple[str, dict]]) -> list[str]:
    cols = [name for name, _ in results]
    L = ["| | " + " | ".join(f"[`{n}`]({n}/induction_study.md)" for n in cols) + " |", "|---|" + "---|" * len(cols)]

    def line(label: str, f) -> None:
        L.append(f"| {label} | " + " | ".join(f(res) for _, res in results) + " |")

    line("architecture", _arch)
    line("repeated random tokens in training", _rrt)
    line("run", lambda r: f"{'quick' if r['config']['quick'] else 'full'}, {r['elapsed_s']:.0f} s, "
                          f"{r.get('generated', '?')}")
    line("behavioral induction heads (prefix matching, copying)", lambda r: _heads(r, r["roles"]["behavioral"]))
    line("previous-token head of each induction head",
         lambda r: "; ".join(f"{a} <- {b}" for a, b in r["roles"].get("previous_of") or [])
         or r["roles"]["previous_token"])

    def embedding(r: dict) -> str:
        share = r["roles"].get("mlp0_token_share")
        return " + ".join(r["roles"].get("embedding") or ["embed"]) + (
            f" (mlp.0 token share {share:.2f})" if share is not None else "")

    line("\"token embedding\" of the mechanism", embedding)

    def kpath(r: dict) -> str:
        k = next((k for k in r.get("k_paths") or [] if k["data"] == "rrt"), None)
        if k is None:
            return "—"
        claimed = {tuple(x) for x in r["roles"].get("previous_of") or []}
        return "; ".join(f"{a} <- {b}{'*' if (a, b) in claimed else ''}: direct {d['value']:.3f} "
                         f"[{d['low']:.3f}, {d['high']:.3f}]"
                         + (", also via " + ", ".join(f"{x['route']} {x['value']:.3f}" for x in found[:3])
                            if found else "")
                         for a, b, d, found in k_path_summary(k))

    line("K path on RRT, previous-token(-like) head -> induction head K -> logits (nats; * = the head the mechanism "
         "claims; indirect routes whose interval excludes 0)", kpath)
    line("roles by fallback", lambda r: "; ".join(r["roles"]["fallbacks"]) or "none")
    line("clean loss, natural text (candidates / all)", lambda r: " / ".join(
        f"{_full(r, 'natural', 'empty', p)['loss_clean']:.3f}" for p in ("candidates", "all")))
    line("clean loss, RRT (candidates)", lambda r: f"{_full(r, 'rrt', 'empty')['loss_clean']:.3f}")
    line("induction heads' inputs resampled: loss increase at candidates, natural / RRT (nats)", lambda r: " / ".join(
        f"{_full(r, d)['loss_baseline'] - _full(r, d)['loss_clean']:.3f}" for d in ("natural", "rrt")))
    for name in ("induction_minimal", "induction_refined"):
        for data in ("natural", "rrt"):
            line(f"{_label(results[0][1], name)} vs induction baseline, {data} (candidates)",
                 lambda r, n=name, d=data: _fmt(_row(r, d, n)))
    for data in ("natural", "rrt"):
        line(f"behavioral heads only vs empty, {data} (candidates)",
             lambda r, d=data: _fmt(_row(r, d, "induction_behavioral", "empty")))
    line("context-sensitive heads", lambda r: ", ".join(_sensitive(r)) or "none")
    line("discovery of each behavioral head's inputs: edges kept, held-out KL recovered (discovered vs the "
         "mechanism's edges)", lambda r: discovery_cell(r.get("discovery")))
    return L


def _q1(results: list[tuple[str, dict]], root: Path) -> tuple[list[str], list[str]]:
    names = [n for n in LADDER + (OTHER_EMBEDDING, K_VIA_MLP0) if any(_row(r, "natural", n) for _, r in results)]
    header = "| hypothesis | " + " | ".join(f"`{m}` natural | `{m}` RRT" for m, _ in results) + " |"
    L = ["Loss recovered against Redwood's induction baseline (every input of the induction heads resampled) at "
         "induction-candidate positions, 95% bootstrap intervals; gain = change against the minimal mechanism. "
         "The refinements (marked *ours*) are this project's own, not Redwood's (Redwood's rung-by-rung ladder is in "
         "section 5). \"All refinements\" is `hypotheses/induction_refined.py`; the rows after it are claims the study "
         "builds for models with MLPs only (the other choice of token embedding; the previous token reaching K through "
         "mlp.0), not part of it.", "",
         header, "|---|" + "---|---|" * len(results)]
    for n in names:
        cells = []
        for _, r in results:
            for d in ("natural", "rrt"):
                row, base = _row(r, d, n), _row(r, d, "induction_minimal")
                gain = f" ({row['value'] - base['value']:+.3f})" if row and base and n != "induction_minimal" else ""
                cells.append(_fmt(row) + gain)
        label = next((_label(r, n) for _, r in results if _row(r, "natural", n)), n)
        L.append(f"| {label} | " + " | ".join(cells) + " |")
    series = [f"{m}, {'natural' if d == 'natural' else 'RRT'}" for m, _ in results for d in ("natural", "rrt")]
    nan = (float("nan"),) * 3
    values = [[(lambda row: (row["value"], row["ci_low"], row["ci_high"]) if row else nan)(_row(r, d, n))
               for _, r in results for d in ("natural", "rrt")] for n in names]
    labels = [next((_label(r, n) for _, r in results if _row(r, "natural", n)), n) for n in names]
    fig = grouped_intervals(labels, series, values, root / "cross_ladder.png", xlabel="loss recovered vs the induction "
                            "baseline, candidate positions (95% interval)", title="minimal mechanism and refinements, "
                            "by model", reference=(0.0, 1.0), clip=(-1.0, 2.0))
    L += ["", f"![ladder across models]({fig.name})"]
    return L, [fig.name]


def _q2(results: list[tuple[str, dict]], root: Path) -> tuple[list[str], list[str]]:
    L = ["Behavioral: prefix matching >= 0.4 and copying > 0 on RRT (`scrub.heads.scores.Thresholds`). "
         "Context-sensitive: resampling the keys more than W tokens back raises the late-position loss on natural "
         "text by >= "
         f"{results[0][1]['context_sensitivity'].get('threshold_nats', 0.01)} nats and by more than 2 s.e. "
         "(increase [95% interval], nats).", "",
         "| model | behavioral induction heads | context-sensitive heads | context-sensitive, not behavioral "
         "| behavioral, not context-sensitive |",
         "|---|---|---|---|---|"]
    groups, values = [], []
    for m, r in results:
        beh, sens = r["roles"]["behavioral"], _sensitive(r)
        def show(hs: list[str], r: dict = r) -> str:
            return ", ".join("{} {:.4f} [{:.4f}, {:.4f}]".format(h, *_increase(r, h)) for h in hs) or "none"

        L.append(f"| `{m}` | {show(beh)} | {show(sens)} | {show([h for h in sens if h not in beh])} | "
                 f"{show([h for h in beh if h not in sens])} |")
        for h in dict.fromkeys([*beh, *sens]):
            groups.append(f"{m} {h}" + (" (behavioral)" if h in beh else ""))
            values.append([_increase(r, h)])
    figs = []
    if groups:
        fig = grouped_intervals(groups, ["loss increase, far keys resampled"], values, root / "cross_context.png",
                                xlabel="nats (95% interval)", title="context sensitivity of the behavioral and the "
                                "context-sensitive heads")
        L += ["", f"![context sensitivity across models]({fig.name})"]
        figs.append(fig.name)
    return L, figs


def _q3(results: list[tuple[str, dict]]) -> list[str]:
    L = ["Path patching from each induction head into every later head's Q/K/V and every MLP that reads it "
         "(`scrub.patching.paths.patch_matrix(..., include_mlps=True)`); effect = patched - clean loss, nats; "
         f"t intervals over chunks. A path *composes* when its interval excludes 0 and it is >= {COMPOSES:.0%} of "
         "the head's direct effect.", "",
         "| model | data | induction head: direct effect | paths that compose (largest first) | figure |",
         "|---|---|---|---|---|"]
    for m, r in results:
        for c in r.get("composition") or []:
            direct = "; ".join(f"{s}: {d['value']:.4f} [{d['low']:.4f}, {d['high']:.4f}]"
                               for s, d in c["direct"].items())
            if not c["receivers"]:
                comp = "no later head or MLP: nothing can compose"
            else:
                found = composers(c)
                comp = "; ".join(f"{p['sender']} -> {p['receiver']}"
                                 f"{':' + p['channel'] if p['channel'] != 'in' else ''} "
                                 f"{p['value']:.4f} [{p['low']:.4f}, {p['high']:.4f}]" for p in found[:6]) or \
                    f"none of {len(c['paths'])} paths"
                if not any(not x.startswith("mlp.") for x in c["receivers"]):
                    comp = ("no later head (the induction heads are in the last layer); through "
                            f"{', '.join(c['receivers'])}: " + comp)
            fig = f"[composition]({m}/composition.png)" if "composition.png" in r.get("figures", []) else ""
            L.append(f"| `{m}` | {c['data']} | {direct} | {comp} | {fig} |")
    for m, r in results:
        if any(c["receivers"] for c in r.get("composition") or []) and "composition.png" in r.get("figures", []):
            L += ["", f"![composition in {m}]({m}/composition.png)"]
    return L


def _q4(results: list[tuple[str, dict]], root: Path) -> tuple[list[str], list[str]]:
    L = ["Each behavioral induction head resampled alone (its inputs all from another sequence) on natural text: the "
         "loss increase per token at induction-candidate positions and elsewhere, and the share of the head's summed "
         "effect that falls at candidates; the last column is how much of that head's effect at the other positions "
         "its two-head mechanism recovers (95% bootstrap intervals). A head that did nothing but induction would put "
         "all of its effect at candidates; one that acted the same everywhere would put there the candidates' share "
         "of the tokens.", "",
         "| model | head | per token, candidates | per token, other positions | share of the effect at candidates "
         "| share of tokens that are candidates | mechanism, other positions |",
         "|---|---|---|---|---|---:|---|"]
    groups, values = [], []
    for m, r in results:
        for sp in r.get("effect_split") or []:
            c, o = sp["per_token"]
            other = next((x for x in r["per_head"] if x["hypothesis"] == sp["name"] and x["positions"] == "other"),
                         None)
            note = "" if sp["name"] in r["roles"]["behavioral"] else " (fallback: not behavioral)"
            L.append(f"| `{m}` | {sp['name']}{note} | {c[0]:.4f} [{c[1]:.4f}, {c[2]:.4f}] | "
                     f"{o[0]:.4f} [{o[1]:.4f}, {o[2]:.4f}] | "
                     f"{sp['share'][0]:.2f} [{sp['share'][1]:.2f}, {sp['share'][2]:.2f}] | {sp['token_share']:.2f} | "
                     f"{_fmt(other)} |")
            groups.append(f"{m} {sp['name']}" + ("" if sp["name"] in r["roles"]["behavioral"] else " (fallback)"))
            values.append([tuple(c), tuple(o)])
    figs = []
    if groups:
        fig = grouped_intervals(groups, ["induction candidates", "other positions"], values,
                                root / "cross_effect_by_position.png",
                                xlabel="loss increase per token when the head is resampled (nats, natural text, 95% "
                                "interval)", title="where each behavioral induction head's effect falls")
        L += ["", f"![effect by position across models]({fig.name})"]
        figs.append(fig.name)
    return L, figs


def _pct(r: dict | None) -> str:
    return "—" if r is None else f"{r['value']:.0%} (95% interval {r['ci_low']:.0%} to {r['ci_high']:.0%})"


def _verb(items: list[str], one: str, many: str) -> str:
    return one if len(items) == 1 else many


def _k_routes(r: dict, k: dict) -> list[str]:
    """The K-path routes of one model's RRT measurement worth a sentence: the claimed direct route, and every
    route of at least 10% of the claimed direct route's effect (a direct one only if its interval excludes 0)."""
    claimed = dict(tuple(x) for x in r["roles"].get("previous_of") or [])
    summary = k_path_summary(k)
    scale = {a: abs(d["value"]) for a, b, d, _ in summary if claimed.get(a) == b}
    parts = []
    for a, b, d, found in summary:
        limit = 0.1 * scale.get(a, 0.0)
        if claimed.get(a) == b or (abs(d["value"]) >= limit and (d["low"] > 0 or d["high"] < 0)):
            parts.append(f"{b} -> {a} K directly {d['value']:.2f}"
                         + (" (claimed)" if claimed.get(a) == b else " (not claimed)"))
        parts += [f"{b} -> {x['route']} -> {a} K {x['value']:.2f} (not claimed)"
                  for x in found if abs(x["value"]) >= limit]
    return parts


def _conclusion(results: list[tuple[str, dict]]) -> list[str]:
    L = []
    for m, r in results:
        nat, rrt = _row(r, "natural", "induction_minimal"), _row(r, "rrt", "induction_minimal")
        ref_n, ref_r = _row(r, "natural", "induction_refined"), _row(r, "rrt", "induction_refined")
        beh, sens = r["roles"]["behavioral"], _sensitive(r)
        extra, idle = [h for h in sens if h not in beh], [h for h in beh if h not in sens]
        text = f"- **`{m}`** ({_arch(r)}; RRT in training: {_rrt(r)}). "
        if not beh:
            text += ("It has no behavioral induction heads, so there is no behavioral definition to fall short of: "
                     f"the study's numbers describe the fallback heads {', '.join(r['roles']['induction'])} "
                     f"(minimal mechanism {_pct(nat)} on natural text, {_pct(rrt)} on RRT).")
            L.append(text)
            continue
        text += (f"The two-head mechanism, claimed for the behavioral induction heads {', '.join(beh)}, accounts for "
                 f"{_pct(nat)} of what their inputs contribute at induction-candidate positions on natural text and "
                 f"{_pct(rrt)} on repeated random tokens; with every refinement together: {_pct(ref_n)} and "
                 f"{_pct(ref_r)}. ")
        if extra:
            text += (f"{_verb(extra, 'Head', 'Heads')} {', '.join(extra)} {_verb(extra, 'uses', 'use')} "
                     "distant context on natural text without being "
                     f"{_verb(extra, 'a behavioral induction head', 'behavioral induction heads')}. ")
        if idle:
            text += (f"Behavioral head{'s' if len(idle) > 1 else ''} {', '.join(idle)} "
                     f"{_verb(idle, 'does', 'do')} not pass the context-sensitivity test on natural text. ")
        k = next((k for k in r.get("k_paths") or [] if k["data"] == "rrt"), None)
        if k is not None:
            text += ("On RRT, the previous-token information reaches K through (path patching, nats): "
                     + "; ".join(_k_routes(r, k)) + ". ")
        splits = r.get("effect_split") or []
        if splits:
            text += ("Outside induction candidates falls " + ", ".join(
                f"{1 - sp['share'][0]:.0%} of {sp['name']}'s natural-text effect" for sp in splits) + ". ")
        comps = [c for c in r.get("composition") or [] if c["receivers"]]
        if not comps:
            text += "No component comes after its induction heads, so nothing can read them but the logits. "
        else:
            found = {c["data"]: composers(c) for c in comps}
            text += "Later components that read the induction heads (composition): " + "; ".join(
                f"{d}: " + (", ".join(f"{p['receiver']}{':' + p['channel'] if p['channel'] != 'in' else ''}"
                                      for p in ps[:4]) or "none") for d, ps in found.items()) + ". "
        text += remix_sentence(r.get("remix"))
        if nat and rrt:
            short = lambda x: ("most" if x >= 0.75 else "about half" if x >= 0.4 else "a minority"  # noqa: E731
                               if x >= 0.1 else "almost none")
            text += (f"In plain words: in this model the textbook two-head circuit accounts for {short(nat['value'])} "
                     f"of what the heads the behavioral test picks out do on natural text, and for "
                     f"{short(rrt['value'])} of it on repeated random tokens; the rest runs through paths the "
                     f"mechanistic definition does not name. ")
        text += discovery_sentence(r.get("discovery"))
        L.append(text.rstrip())
    return L


def _clear_old_layout(root: Path) -> list[str]:
    """Remove the single-model outputs the study used to write straight into ``root`` (now in per-model folders)."""
    removed = []
    for pattern in OLD_LAYOUT:
        for path in root.glob(pattern):
            if path.is_file():
                path.unlink()
                removed.append(path.name)
    return removed


def write_cross_report(root: Path, folders: list[Path], *, command: str) -> Path:
    """``root/induction_study.md`` from ``folder/results.json`` of each folder (models ordered by depth, then name)."""
    results = [(f.name, json.loads((f / "results.json").read_text()))
               for f in folders if (f / "results.json").is_file()]
    results.sort(key=lambda mr: ((mr[1].get("model") or {}).get("n_layers", 0), mr[0]))  # shallow to deep
    root.mkdir(parents=True, exist_ok=True)
    _clear_old_layout(root)
    for stale in root.glob("cross_*.png"):
        stale.unlink()
    L = ["# Induction heads across models: the mechanistic definition against the behavioral one", "",
         f"Written by `{command}` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC from the per-model results "
         "(`experiments/_cross.py`; every number is read from a `results.json`): "
         + ", ".join(f"[`{m}`]({m}/induction_study.md) (`{r['command']}`, {r.get('generated', '?')})"
                     for m, r in results)
         + ". Each model's report has the full tables, figures and method notes.", "",
         "\"Induction head\" has two definitions. **Mechanistic** (Elhage et al. 2021): a previous-token head writes "
         "\"the token before me was A\", and an induction head reads it through its K, attends to the token after an "
         "earlier A and copies it. **Behavioral** (Olsson et al. 2022): any head with high prefix matching and "
         "positive copying on repeated random tokens. The study scrubs the mechanism (causal scrubbing, Chan et al. "
         "2022) and compares it with the behavior.", "",
         "## Models side by side", ""] + (_side_by_side(results) if results else ["No per-model results."])
    if len(results) >= 2:
        (q1, _), (q2, _), (q4, _) = _q1(results, root), _q2(results, root), _q4(results, root)  # (figures: linked)
        L += ["", "## Across models", "",
              "### 1. How much of the in-context loss does the minimal two-head mechanism explain, and what do the "
              "refinements add?", ""] + q1
        L += ["", "### 2. Behavioral induction heads and context-sensitive heads", ""] + q2
        L += ["", "### 3. Do later heads compose with the induction heads?", ""] + _q3(results)
        L += ["", "### 4. Where each behavioral induction head's effect falls on natural text", ""] + q4
        L += ["", "### 5. Redwood's REMIX ladder, rung by rung", ""] + cross_remix_lines(results)
        L += ["", "## Conclusion", ""] + _conclusion(results)
    elif results:
        L += ["", "Only one model: the cross-model section needs two (`scrub study` runs every shipped model)."]
    path = root / "induction_study.md"
    path.write_text("\n".join(L) + "\n")
    return path

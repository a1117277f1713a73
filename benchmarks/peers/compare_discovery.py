"""scrub's circuit discovery beside auto-circuit 1.0.1's on the shipped 2-layer model (issue #17, peers).

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/peers/compare_discovery.py [--json OUT.json]

Same data for both: 16 RRT rows (20 tokens repeated twice after BOS) paired with 16 other random rows,
scored at the second-repeat prediction positions 21..39 (a contiguous slice, auto-circuit's ``out_slice``).
auto-circuit runs in the side virtualenv (``autocircuit_discovery_peer.py``; ``AUTOCIRCUIT_PYTHON``, default
/work/venv-autocircuit/bin/python). Edge names: auto-circuit's ``Resid Start`` is scrub's ``embed``, ``A0.3``
head 0.3, ``A1.2.K`` head 1.2's k input, ``Resid End`` the logits; scrub's 32 ``pos -> head:q/k`` edges
(shortformer) have no auto-circuit counterpart: positions are the same in both rows, so patching them
changes nothing (score 0, effect 0; they are left out of every comparison).

1. EAP: auto-circuit's ``mask_gradient_prune_scores(mask_val=0)`` of −mean log p(answer) against
   ``scrub.discover(method="eap", metric="loss")``: both the first-order estimate of loss(edge patched) −
   loss(clean), the mean over the scored tokens; max |difference| and relative difference over all edges.
   Also with both models in float64, to tell rounding from a difference of definition.
2. ACDC at τ = 0.02, KL(clean ‖ patched) averaged over the scored tokens in both: auto-circuit's visiting
   order (a set's: on the side venv's Python 3.11 hash(None) is an address, so it changes from run to run
   whatever PYTHONHASHSEED; ``--native-runs`` of them, each order kept in the JSON) and scrub's (logits
   first, then receivers latest first, each receiver's inputs latest sender first) against
   ``scrub.discover(method="acdc")``; every difference with its reason (``reason``). Diagnostic: scrub's own
   search rerun with its decision rule replaced by auto-circuit's point rule (step < τ drops), which must
   give auto-circuit's set in scrub's order.
3. Time and forward passes of auto-circuit's ACDC, scrub's ``acdc`` and ``eap-ig+verify``.
4. ROC AUC of each ranking (EAP scores, EAP-IG scores, the searches' exact effects and auto-circuit's steps)
   for the label |KL change when the edge alone is removed from the full model| > τ (scrub's exact paired
   patching of every single edge, as ``benchmarks/discovery.py`` does).
Results print as tables; ``--json`` also writes every number.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import torch  # noqa: E402
from discovery import auc  # noqa: E402  (benchmarks/discovery.py)

import scrub  # noqa: E402
from scrub.claims.structure import Structure  # noqa: E402
from scrub.data.batches import repeated_random_tokens  # noqa: E402
from scrub.discovery.edges import Edge, all_edges  # noqa: E402
from scrub.discovery.exact import ExactEvaluator  # noqa: E402
from scrub.discovery.result import EdgeRecord  # noqa: E402
from scrub.discovery.search import Interval  # noqa: E402
from scrub.discovery.setup import paired  # noqa: E402
from scrub.engine.compute import clean_run  # noqa: E402
from scrub.model.loading import SHIPPED_DIR  # noqa: E402

PEER_PYTHON = os.environ.get("AUTOCIRCUIT_PYTHON", "/work/venv-autocircuit/bin/python")
N, LENGTH, TAU, TAU_PARTS = 16, 20, 0.02, (2, -2)  # τ = 2 x 10^-2, as auto-circuit takes it
LO, HI = LENGTH + 1, 2 * LENGTH  # scored logit positions LO..HI-1: the next token is a second-repeat token


def ac_name(sender: str, receiver: str, channel: str) -> str | None:
    """auto-circuit's name of scrub's edge; None for ``pos`` edges (no counterpart)."""
    if sender == "pos":
        return None
    src = "Resid Start" if sender == "embed" else f"A{sender}"
    return f"{src}->{'Resid End' if receiver == 'logits' else f'A{receiver}.{channel.upper()}'}"


def edge_name(e: Edge) -> str | None:
    return ac_name(str(e.sender), str(e.receiver), e.channel.value)


def scrub_order(structure: Structure) -> list[str]:
    """scrub's ACDC visiting order (``search.greedy`` with no scores) in auto-circuit's names, pos left out."""
    edges = all_edges(structure)
    receivers = list(dict.fromkeys(e.receiver for e in edges))
    order = [e for r in reversed(receivers) for e in reversed([x for x in edges if x.receiver == r])]
    return [n for n in map(edge_name, order) if n is not None]


def second_repeat(tokens: torch.Tensor) -> torch.Tensor:
    mask = torch.zeros_like(tokens, dtype=torch.bool)  # [n, seq]
    mask[:, LO:HI] = True
    return mask


def peer(data: Path, order: list[str] | None, *flags: str) -> dict:
    """One run of autocircuit_discovery_peer.py in the side virtualenv (``order``: ACDC's visiting order)."""
    cmd = [PEER_PYTHON, str(Path(__file__).with_name("autocircuit_discovery_peer.py")), str(SHIPPED_DIR), str(data),
           "--tau", *map(str, TAU_PARTS), *flags] + ([] if order is None else ["--order", json.dumps(order)])
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def records(d) -> dict[str, EdgeRecord]:
    """A discovery's records by auto-circuit name (pos edges left out)."""
    return {n: r for r in d.edges if (n := ac_name(r.sender, r.receiver, r.input)) is not None}


def kept(d) -> set[str]:
    return {n for n, r in records(d).items() if r.verdict != "dropped"}


def eap_table(model, tokens, corrupted, theirs: dict) -> dict:
    d = scrub.discover(model, tokens, corrupted=corrupted, heldout=tokens, method="eap", metric="loss",
                       positions=second_repeat, threshold=TAU, curve=False)
    ours = {n: r.score for n, r in records(d).items() if r.score is not None}
    pos = [abs(r.score) for r in d.edges if r.sender == "pos" and r.score is not None]
    diffs = {n: abs(ours[n] - theirs["scores"][n]) for n in ours}
    top = max(abs(v) for v in ours.values())
    rel = {n: diffs[n] / max(abs(ours[n]), abs(theirs["scores"][n])) for n in ours if diffs[n] > 0}
    big = [n for n in ours if abs(ours[n]) > 1e-3 * top]
    return {"edges": len(ours), "same_names": sorted(ours) == sorted(theirs["scores"]),
            "max_abs_diff": max(diffs.values()), "max_abs_score": top,
            "max_rel_diff": max(rel.values(), default=0.0),
            "worst_rel_edge": max(rel, key=lambda n: rel[n], default=None),
            "max_rel_diff_above_1e-3_of_max": max((rel.get(n, 0.0) for n in big), default=0.0),
            "n_above_1e-3_of_max": len(big), "pos_edges_max_abs_score": max(pos, default=0.0),
            "scrub_seconds": d.seconds, "scrub_passes": [d.passes.forward, d.passes.backward],
            "ac_seconds": theirs["seconds"], "ac_forwards": theirs["forwards"]["full"] + theirs["forwards"]["partial"],
            "scores": ours}


def reason(name: str, rec: EdgeRecord, ac_step: float, order: list[str], ours: set[str], theirs: set[str]) -> str:
    """Why scrub's acdc and auto-circuit's ACDC (same order) decide ``name`` differently, tagged ``rule``
    (auto-circuit's point rule, step < τ drops, would decide scrub's own effect the other way), ``state`` (it
    would not: auto-circuit tried the edge against another claim, after earlier differences) or ``float``."""
    earlier = [n for n in order[: order.index(name)] if (n in ours) != (n in theirs)]
    lo, hi = rec.ci if rec.ci is not None else (float("nan"),) * 2
    effect = float("nan") if rec.effect is None else rec.effect  # acdc evaluates every edge
    step = f"scrub effect {effect:+.4f} [{lo:+.4f}, {hi:+.4f}] {rec.verdict}; auto-circuit step {ac_step:+.4f}"
    after = f" ({len(earlier)} earlier differences)" if earlier else ""
    if (rec.verdict != "dropped") != (effect >= TAU):
        if rec.verdict == "dropped":
            return f"rule{after}: the 95% interval lies inside ±τ though the effect is ≥ τ; {step}"
        if rec.verdict == "kept" and effect < -TAU:
            return f"rule{after}: removing it lowers KL by more than τ, scrub keeps it; {step}"
        return f"rule{after}: the 95% interval reaches past ±τ, scrub keeps it as uncertain; {step}"
    if earlier:
        return f"state: tried against another claim ({len(earlier)} earlier differences, first {earlier[0]}); {step}"
    return f"float: {step}"


def point_rule(self: Interval, diffs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """auto-circuit's decision as scrub's interval: low = high = max(effect, −τ), so dropped iff effect ≤ τ."""
    effect, _, _ = ORIGINAL_CALL(self, diffs)  # [k] x3
    v = effect.clamp(min=-TAU)  # [k]
    return effect, v, v


ORIGINAL_CALL = Interval.__call__


def acdc_tables(model, tokens, corrupted, native: dict[int, dict], same_order: dict) -> dict:
    runs = {}
    for method in ("acdc", "eap-ig+verify"):
        runs[method] = scrub.discover(model, tokens, corrupted=corrupted, heldout=tokens, method=method, metric="kl",
                                      positions=second_repeat, threshold=TAU, curve=False)
    with mock.patch.object(Interval, "__call__", point_rule):
        diag = scrub.discover(model, tokens, corrupted=corrupted, heldout=tokens, method="acdc", metric="kl",
                              positions=second_repeat, threshold=TAU, curve=False)
    ours, theirs, order = kept(runs["acdc"]), set(same_order["kept"]), same_order["order"]
    recs = records(runs["acdc"])
    differences = {n: reason(n, recs[n], same_order["steps"][n], order, ours, theirs)
                   for n in order if (n in ours) != (n in theirs)}
    kinds = Counter(why.split(" ")[0].split(":")[0] for why in differences.values())
    diag_recs = records(diag)
    step_gap = max(abs((diag_recs[n].effect or 0.0) - same_order["steps"][n]) for n in order)
    ac_forwards = same_order["forwards"]["full"] + same_order["forwards"]["partial"]
    out = {
        "scrub_acdc": {"kept": len(ours), "uncertain": sum(r.verdict == "uncertain" for r in recs.values()),
                       "seconds": runs["acdc"].seconds, "forward": runs["acdc"].passes.forward},
        "ac_scrub_order": {"kept": len(theirs), "seconds": same_order["seconds"], "forward": ac_forwards,
                           "forwards": same_order["forwards"], "final_kl": same_order["final_kl"]},
        "scrub_vs_ac_same_order": {"only_scrub": sorted(ours - theirs), "only_ac": sorted(theirs - ours),
                                   "by_kind": dict(kinds), "reasons": differences},
        "diagnostic_point_rule": {"kept": len(kept(diag)), "same_as_ac_scrub_order": kept(diag) == theirs,
                                  "symmetric_difference": sorted(kept(diag) ^ theirs),
                                  "max_abs_effect_minus_ac_step": step_gap},
        "ac_native": {str(s): {"kept": len(r["kept"]), "vs_ac_scrub_order": len(set(r["kept"]) ^ theirs),
                               "vs_scrub_acdc": len(set(r["kept"]) ^ ours), "seconds": r["seconds"],
                               "forward": r["forwards"]["full"] + r["forwards"]["partial"],
                               "order": r["order"]}
                      for s, r in native.items()},
    }
    v = runs["eap-ig+verify"]
    fast = kept(v)
    out["rankings"] = {
        "scrub EAP-IG scores (KL)": {n: r.score or 0.0 for n, r in records(v).items()},
        "scrub acdc effects": {n: r.effect or 0.0 for n, r in recs.items()},
        "auto-circuit ACDC steps (scrub's order)": same_order["steps"],
        "scrub eap-ig+verify effects (skipped: 0)": {n: r.effect or 0.0 for n, r in records(v).items()}}
    out["eap_ig_verify"] = {
        "kept": len(fast), "seconds": v.seconds, "forward": v.passes.forward, "backward": v.passes.backward,
        "skipped": v.skipped, "spot_checked": v.spot_checked, "spot_violations": v.spot_violations,
        "vs_scrub_acdc": sorted(fast ^ ours), "vs_ac_scrub_order": len(fast ^ theirs),
        "speedup_time_vs_ac": same_order["seconds"] / v.seconds,
        "speedup_time_vs_fastest_ac": min([same_order["seconds"]] + [r["seconds"] for r in native.values()])
        / v.seconds,
        "ac_forwards_over_ours": ac_forwards / v.passes.forward,
        "ac_forwards_over_ours_fwd_plus_bwd": ac_forwards / (v.passes.forward + v.passes.backward)}
    return out


def oracle(model, tokens: torch.Tensor, corrupted: torch.Tensor) -> dict:
    """Exact KL change when each edge alone is removed from the full model (paired, the scored positions), all
    in one batched call: the truth the rankings' ROC AUC is taken against; pos edges left out."""
    structure = Structure.of(model)
    cf = paired(tokens, corrupted, structure)
    mask = second_repeat(tokens)[:, :-1]  # [n, seq-1] as score_mask cuts it
    start = time.perf_counter()
    ev = ExactEvaluator(model, cf, clean_run(model, cf.data), mask, "kl")
    edges = all_edges(structure)
    full = frozenset(edges)
    totals = ev.totals([full] + [full - {e} for e in edges])  # [1 + edges, n]
    effects = ((totals[1:] - totals[0]).sum(1) / mask.sum()).tolist()
    named = {n: x for e, x in zip(edges, effects, strict=True) if (n := edge_name(e)) is not None}
    return {"effects": named, "seconds": time.perf_counter() - start, "forward": 2 + ev.trees}


def auc_table(truth: dict[str, float], rankings: dict[str, dict[str, float]]) -> dict:
    """ROC AUC of each ranking (|value|) for the label |exact single-edge effect| > τ."""
    names = sorted(truth)
    labels = [abs(truth[n]) > TAU for n in names]
    return {"edges": len(names), "positives": sum(labels),
            "auc": {label: auc([abs(r.get(n, 0.0)) for n in names], labels) for label, r in rankings.items()}}


def show(out: dict) -> None:
    e = out["eap"]
    print(f"\n1. EAP, loss at positions {LO}..{HI - 1}, {N} pairs: {e['edges']} edges (names match: "
          f"{e['same_names']}); scrub's {32} pos edges score at most {e['pos_edges_max_abs_score']:.1e}")
    print(f"   max |scrub - auto-circuit| {e['max_abs_diff']:.2e} (max |score| {e['max_abs_score']:.3f}); max relative "
          f"{e['max_rel_diff']:.2e} ({e['worst_rel_edge']}); over the {e['n_above_1e-3_of_max']} edges above 1e-3 x "
          f"max: {e['max_rel_diff_above_1e-3_of_max']:.2e}")
    print(f"   time: scrub {e['scrub_seconds']:.2f} s ({e['scrub_passes'][0]} fwd, {e['scrub_passes'][1]} bwd), "
          f"auto-circuit {e['ac_seconds']:.2f} s ({e['ac_forwards']} fwd, 1 bwd)")
    e = out["eap_float64"]
    print(f"   both in float64 (rounding check): max |difference| {e['max_abs_diff']:.2e}, max relative "
          f"{e['max_rel_diff']:.2e}")
    a = out["acdc"]
    print(f"\n2. ACDC, τ = {TAU}, KL at the same positions; kept edges (of 257, pos left out)")
    print(f"   {'run':<44} {'kept':>5} {'sec':>7} {'forward':>8}")
    rows = [("scrub acdc (interval rule)", a["scrub_acdc"]), ("auto-circuit ACDC, scrub's order", a["ac_scrub_order"])]
    rows += [(f"auto-circuit ACDC, own order (run {s})", r) for s, r in a["ac_native"].items()]
    rows += [("scrub eap-ig+verify", a["eap_ig_verify"])]
    for label, r in rows:
        print(f"   {label:<44} {r['kept']:>5} {r['seconds']:>7.2f} {r['forward']:>8}")
    f = a["ac_scrub_order"]["forwards"]
    print(f"   (scrub acdc keeps {a['scrub_acdc']['uncertain']} of its edges as uncertain; auto-circuit's forwards: "
          f"{f['full']} full, then {f['partial']} from a middle layer, by start layer {f['partial_by_start_layer']})")
    d = a["scrub_vs_ac_same_order"]
    print(f"   scrub acdc vs auto-circuit (same order): {len(d['only_scrub'])} only scrub, {len(d['only_ac'])} only "
          f"auto-circuit; by reason: {', '.join(f'{k} {v}' for k, v in d['by_kind'].items())}")
    for name, why in d["reasons"].items():
        print(f"     {name:<22} {why}")
    g = a["diagnostic_point_rule"]
    print(f"   scrub's search with auto-circuit's point rule: {g['kept']} kept, same set as auto-circuit: "
          f"{g['same_as_ac_scrub_order']}, max |scrub effect - auto-circuit step| "
          f"{g['max_abs_effect_minus_ac_step']:.1e}")
    for s, r in a["ac_native"].items():
        print(f"   auto-circuit own order (run {s}) vs its scrub-order run: {r['vs_ac_scrub_order']} edges "
              f"differ; "
              f"vs scrub acdc: {r['vs_scrub_acdc']}")
    v = a["eap_ig_verify"]
    print(f"\n3. eap-ig+verify: {v['forward']} fwd + {v['backward']} bwd, {v['seconds']:.2f} s, {v['skipped']} skipped "
          f"({v['spot_checked']} spot-checked, {v['spot_violations']} violations); differs from scrub acdc on "
          f"{len(v['vs_scrub_acdc'])} edges, from auto-circuit (scrub order) on {v['vs_ac_scrub_order']}")
    print(f"   vs auto-circuit ACDC: {v['speedup_time_vs_ac']:.1f}x faster "
          f"({v['speedup_time_vs_fastest_ac']:.1f}x vs its fastest run; target >= 10x), "
          f"auto-circuit's forwards / ours {v['ac_forwards_over_ours']:.2f} "
          f"({v['ac_forwards_over_ours_fwd_plus_bwd']:.2f} counting backwards as forwards; target >= 10)")
    r = out["roc"]
    o = out["oracle"]
    print(f"\n4. ROC AUC against exact single-edge removal ({o['forward']} forwards, {o['seconds']:.1f} s): "
          f"{r['positives']} of {r['edges']} edges move KL by more than τ")
    for label, value in r["auc"].items():
        print(f"   {label:<44} {value:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None, help="also write every number here")
    parser.add_argument("--native-runs", type=int, default=3,
                        help="auto-circuit ACDC runs in its own (set, run-dependent) visiting order")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = scrub.load_model()
    tokens = repeated_random_tokens(N, LENGTH, 2, seed=0, vocab_size=model.cfg.d_vocab)  # [16, 41]
    corrupted = repeated_random_tokens(N, LENGTH, 2, seed=1, vocab_size=model.cfg.d_vocab)  # other random rows
    tmp = Path(tempfile.mkdtemp(prefix="scrub-discovery-peer-"))
    torch.save({"reference": tokens, "corrupted": corrupted, "lo": LO, "hi": HI}, tmp / "data.pt")
    order = scrub_order(Structure.of(model))
    same_order = peer(tmp / "data.pt", order)
    native = {k: peer(tmp / "data.pt", None, "--no-eap")["acdc"] for k in range(1, args.native_runs + 1)}
    eap64 = peer(tmp / "data.pt", None, "--no-acdc", "--float64")["eap"]
    out = {"when": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "n": N, "length": LENGTH, "tau": TAU,
           "eap": eap_table(model, tokens, corrupted, same_order["eap"]),
           "eap_float64": eap_table(copy.deepcopy(model).to(torch.float64), tokens, corrupted, eap64),
           "acdc": acdc_tables(model, tokens, corrupted, native, same_order["acdc"]),
           "oracle": oracle(model, tokens, corrupted)}
    rankings = {"auto-circuit EAP scores (loss)": same_order["eap"]["scores"],
                "scrub EAP scores (loss)": out["eap"]["scores"], **out["acdc"]["rankings"]}
    out["roc"] = auc_table(out["oracle"]["effects"], rankings)
    show(out)
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""Circuit discovery: passes and time of each method, and how well each ranks edges against exhaustive exact
patching (issue #17).

Part A, the shipped 2-layer model, paired mode (RRT rows against other random rows, KL at the second-repeat
positions): the exact effect of removing every single edge from the full model (the oracle), EAP and
EAP-IG scores, ``acdc`` and ``eap-ig+verify`` at one τ; ROC AUC of each ranking (|score|) against the label
"|oracle effect| > τ"; whether the two greedy searches keep the same edges. Part B, a GPT-2-small-shaped
random model (``--layers`` x 12 heads, d_model 768, vocab 2048, 8 x 64 tokens, paired, KL): EAP-IG (5 steps)
of every edge, clean run included, against one plain forward (median of 3 after a warm-up, in the same
process), and its peak RSS above the model and data against a ``run_with_cache``'s, each measured in its own
subprocess as in benchmarks/scale.py.

    python benchmarks/discovery.py [--quick] [--threads 1] [--layers 12] [--only-deep]

Ratios are in one run; results print as one JSON object. Torch runs on ``--threads`` threads (default 1: on a
shared 2-core machine two threads make small ops far slower).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]

import torch  # noqa: E402
from bench import rss_mb, timed  # noqa: E402
from transformer_lens import HookedTransformer, HookedTransformerConfig  # noqa: E402

import scrub  # noqa: E402
from scrub.claims.structure import Structure  # noqa: E402
from scrub.data.batches import repeated_random_tokens  # noqa: E402
from scrub.discovery.attribution import attribute  # noqa: E402
from scrub.discovery.edges import all_edges  # noqa: E402
from scrub.discovery.exact import ExactEvaluator  # noqa: E402
from scrub.discovery.result import Method  # noqa: E402
from scrub.discovery.setup import paired  # noqa: E402
from scrub.engine.compute import clean_run  # noqa: E402


def auc(scores: list[float], labels: list[bool]) -> float:
    """ROC AUC of ``scores`` for ``labels`` (Mann-Whitney, ties counted half)."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    if not pos or not neg:
        return float("nan")
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def shipped(n: int, length: int, tau: float) -> dict:
    model = scrub.load_model()
    tokens = repeated_random_tokens(n, length, 2, seed=0, vocab_size=model.cfg.d_vocab)
    corrupted = repeated_random_tokens(n, length, 2, seed=1, vocab_size=model.cfg.d_vocab)
    mask = torch.zeros(n, tokens.shape[1] - 1, dtype=torch.bool)  # [n, seq-1]
    mask[:, length + 1 : 2 * length] = True  # second repeat, predictable by induction
    cf = paired(tokens, corrupted, Structure.of(model))
    clean = clean_run(model, cf.data)
    edges = all_edges(model)
    ev = ExactEvaluator(model, cf, clean, mask, "kl")
    t = time.perf_counter()
    full = frozenset(edges)
    totals = ev.totals([full] + [full - {e} for e in edges])  # [1 + edges, n]
    oracle = ((totals[1:] - totals[0]).sum(1) / mask.sum()).tolist()
    out: dict = {"edges": len(edges), "tau": tau, "exhaustive": {"seconds": time.perf_counter() - t,
                                                                  "forward": 2 + ev.trees}}
    labels = [abs(x) > tau for x in oracle]
    out["oracle_edges_above_tau"] = sum(labels)
    for method in ("eap", "eap-ig"):
        t = time.perf_counter()
        a = attribute(model, cf, clean, mask, "kl" if method == "eap-ig" else "loss", method)
        out[method] = {"seconds": time.perf_counter() - t, "forward": a.forward, "backward": a.backward,
                       "auc": auc([abs(a.scores[e]) for e in edges], labels),
                       "metric": "kl" if method == "eap-ig" else "loss (KL's gradient at clean is 0)"}
    found = {}
    searches: tuple[Method, ...] = ("acdc", "eap-ig+verify")
    for method in searches:
        d = scrub.discover(model, tokens, corrupted=corrupted, heldout=tokens, method=method, metric="kl",
                           positions=lambda x: _second_repeat(x, length), threshold=tau, curve=False)
        found[method] = set(d.claim_edges)
        out[method] = {"seconds": d.seconds, "forward": d.passes.forward, "backward": d.passes.backward,
                       "claim_edges": len(d.claim_edges), "skipped": d.skipped, "spot_checked": d.spot_checked,
                       "spot_violations": d.spot_violations,
                       "auc_of_effects": auc([abs(r.effect or 0.0) for r in d.edges], labels)}
    out["same_claim"] = found["acdc"] == found["eap-ig+verify"]
    out["claim_difference"] = sorted(found["acdc"] ^ found["eap-ig+verify"])
    out["speedup_time"] = out["acdc"]["seconds"] / out["eap-ig+verify"]["seconds"]
    out["speedup_forward"] = out["acdc"]["forward"] / out["eap-ig+verify"]["forward"]
    return out


def _second_repeat(tokens: torch.Tensor, length: int) -> torch.Tensor:
    mask = torch.zeros_like(tokens, dtype=torch.bool)  # [n, seq]
    mask[:, length + 1 : 2 * length] = True
    return mask


DEEP_STAGES = ("deep-cache", "deep-eap-ig")


def deep_stage(name: str, layers: int, n: int = 8, seq: int = 64) -> dict:
    """One part-B measurement in this process: peak RSS above the model and data, and its seconds."""
    cfg = HookedTransformerConfig(n_layers=layers, n_heads=12, d_model=768, d_head=64, d_mlp=3072, d_vocab=2048,
                                  n_ctx=seq, act_fn="gelu", normalization_type="LN", seed=0)
    model = HookedTransformer(cfg).eval()
    tokens = torch.randint(0, 2048, (n, seq), generator=torch.Generator().manual_seed(0))  # [n, seq]
    corrupted = torch.randint(0, 2048, (n, seq), generator=torch.Generator().manual_seed(1))  # [n, seq]
    cf = paired(tokens, corrupted, Structure.of(model))
    base = rss_mb()
    if name == "deep-cache":
        with torch.no_grad():
            seconds = timed(lambda: model.run_with_cache(tokens))
        return {"seconds": seconds, "peak_extra_mb": rss_mb() - base}
    with torch.no_grad():
        forward = timed(lambda: model(tokens), repeats=3)  # median of 3 after a warm-up
    t = time.perf_counter()
    clean = clean_run(model, cf.data)
    a = attribute(model, cf, clean, torch.ones(n, seq - 1, dtype=torch.bool), "kl", "eap-ig", batch_size=n)
    seconds = time.perf_counter() - t
    return {"layers": layers, "edges": len(a.scores), "seconds": seconds, "plain_forward_seconds": forward,
            "forward_equivalents_by_time": seconds / forward, "forward": a.forward, "backward": a.backward,
            "peak_extra_mb": rss_mb() - base}


def deep(layers: int, threads: int) -> dict:
    """Part B, each stage in its own subprocess so its peak RSS is its own."""
    out = {}
    for name in DEEP_STAGES:
        cmd = [sys.executable, __file__, "--stage", name, "--layers", str(layers), "--threads", str(threads)]
        done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": str(threads)})
        if done.returncode:
            raise RuntimeError(f"stage {name} failed:\n{done.stderr[-2000:]}")
        out[name] = json.loads(done.stdout.splitlines()[-1])
    result = out["deep-eap-ig"]
    result["run_with_cache_peak_extra_mb"] = out["deep-cache"]["peak_extra_mb"]
    result["peak_memory_vs_run_with_cache"] = result["peak_extra_mb"] / out["deep-cache"]["peak_extra_mb"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller data, skip the 12 x 12 model")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tau", type=float, default=0.02)
    parser.add_argument("--layers", type=int, default=12, help="layers of the GPT-2-shaped model of part B")
    parser.add_argument("--only-deep", action="store_true", help="part B only")
    parser.add_argument("--stage", choices=DEEP_STAGES, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.stage:
        print(json.dumps(deep_stage(args.stage, args.layers)))
        return
    out = {} if args.only_deep else {"shipped": shipped(8 if args.quick else 16, 20, args.tau)}
    if not args.quick:
        out["gpt2_shaped_random"] = deep(args.layers, args.threads)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

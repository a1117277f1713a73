"""Speed and peak memory of the engine, measured in one run on one machine, printed as a table of ratios.

Each measurement runs in its own subprocess (``--stage NAME``) so its peak RSS is its own; the parent
prints the table. Stages: a plain forward, an engine scrub of the minimal induction hypothesis, the naive
reference on the same tree, the path-patching matrix (engine), the same matrix with one TransformerLens
hooked forward per path, the same matrix in auto-circuit (side virtualenv, if present), and a scaling
study (engine vs naive, random-init 2/4/6-layer models, 1/4/8 claimed paths). Usage (see README.md):
    .venv/bin/python benchmarks/bench.py [--model DIR] [--n 16] [--length 40] [--threads 1,all]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import networkx as nx  # noqa: E402
import torch  # noqa: E402
from transformer_lens import HookedTransformer  # noqa: E402

from scrub.claims.hypothesis import add_path, validate  # noqa: E402
from scrub.claims.sites import HEAD_CHANNELS, Head, all_heads, hook_name, parse_component  # noqa: E402
from scrub.data.batches import repeated_random_tokens  # noqa: E402
from scrub.engine.compute import clean_run  # noqa: E402
from scrub.engine.evaluator import evaluate  # noqa: E402
from scrub.engine.treeify import assign_data, treeify  # noqa: E402
from scrub.model.loading import SHIPPED_DIR, ArchSpec, load_model, save_checkpoint  # noqa: E402
from scrub.patching.paths import PatchPath, make_metric, patch_matrix, second_repeat_positions  # noqa: E402
from scrub.testing.oracles import hooked_patch_logits, split_qkv_copy  # noqa: E402
from scrub.testing.reference import naive_logits  # noqa: E402

PEER_PYTHON = Path(os.environ.get("AUTOCIRCUIT_PYTHON", "/work/venv-autocircuit/bin/python"))


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn, repeats: int = 1) -> float:
    """Median wall seconds of ``repeats`` calls (after one warm-up call when repeating)."""
    times = timed_all(fn, repeats)
    return times[len(times) // 2]


def timed_all(fn, repeats: int = 1) -> list[float]:
    """Wall seconds of ``repeats`` calls, sorted (after one warm-up call when repeating): the spread of a median."""
    if repeats > 1:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)


def spread(times: list[float]) -> dict[str, float]:
    """The median of sorted ``times`` with the fastest and slowest."""
    return {"seconds": times[len(times) // 2], "fastest": times[0], "slowest": times[-1]}


def thread_counts(spec: str) -> list[int]:
    """``--threads``: comma-separated counts, ``all`` for every core this process may use; 1 and all by default."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    out = [cores if part.strip() == "all" else int(part) for part in spec.split(",") if part.strip()]
    if not out or any(t < 1 for t in out):
        raise SystemExit(f"--threads {spec!r}: give thread counts >= 1 or 'all', e.g. --threads 1,all")
    return list(dict.fromkeys(out))


def batch(model: HookedTransformer, n: int, length: int, seed: int = 0):
    cfg = model.cfg
    ref = repeated_random_tokens(n, length, 2, seed=seed, vocab_size=cfg.d_vocab)  # [n, 1 + 2L]
    cor = repeated_random_tokens(n, length, 2, seed=seed + 1, vocab_size=cfg.d_vocab)  # fresh random sequences
    return ref, cor


def induction_roles(model: HookedTransformer) -> tuple[list[Head], list[Head]]:
    """(induction heads, previous-token heads) from behavioral scores; 1.0 / 0.0 if none pass (random init)."""
    from scrub.heads.scores import behavioral_induction_heads, head_scores, previous_token_heads

    scores = head_scores(model, data="rrt", n=16, seed=0)
    ind = [h for h in behavioral_induction_heads(scores) if h.layer == 1] or [Head(1, 0)]
    prev = [h for h in previous_token_heads(scores) if h.layer == 0] or [Head(0, 0)]
    return ind, prev


def minimal_graph(induction: list[Head], previous: list[Head], n_paths: int | None = None) -> nx.DiGraph:
    g = nx.DiGraph()
    for h in induction:
        add_path(g, "embed", (str(h), "v"), "logits")
        add_path(g, "embed", (str(h), "q"), "logits")
        for p in previous:
            add_path(g, "embed", (str(p), "v"), (str(h), "k"), "logits")
    return g


def k_paths_graph(model: HookedTransformer, k: int) -> nx.DiGraph:
    """``k`` claimed paths embed -> (head, channel) [-> later head:k] -> logits, spread over layers."""
    g = nx.DiGraph()
    heads = all_heads(model.cfg)
    channels = "vqk"
    for i in range(k):
        h = heads[(i * 5) % len(heads)]
        later = [x for x in heads if x.layer > h.layer]
        if later and i % 2:
            add_path(g, "embed", (str(h), channels[i % 3]), (str(later[i % len(later)]), "k"), "logits")
        else:
            add_path(g, "embed", (str(h), channels[i % 3]), "logits")
    return g


def random_model(n_layers: int) -> HookedTransformer:
    cfg = ArchSpec(n_layers=n_layers).to_config()
    return HookedTransformer(cfg).eval()


# --- stages (each in its own process) ----------------------------------------------------------------

def stage(name: str, args) -> dict:
    torch.set_grad_enabled(False)
    model = load_model(args.model)
    ref, cor = batch(model, args.n, args.length)
    metric = make_metric("loss", ref, cor, second_repeat_positions(args.length))
    out: dict = {}
    if name in ("scrub", "naive"):
        ind, prev = (tuple(parse_component(s, model.cfg) for s in x.split(",")) for x in args.roles.split(";"))
        claim = validate(minimal_graph(list(ind), list(prev)), model)
        tree = treeify(claim)
    base = rss_mb()
    if name == "forward":
        out |= spread(timed_all(lambda: model(ref), repeats=5))
    elif name == "scrub":
        def scrub():
            clean = clean_run(model, ref)
            evaluate(model, tree, assign_data(tree, ref, seed=0), clean)
        out |= spread(timed_all(scrub, repeats=5))
        out["copies"] = sum(1 for _ in tree.walk()) - 1
    elif name == "naive":
        data = assign_data(tree, ref, seed=0)
        out["seconds"] = timed(lambda: naive_logits(model, tree, data, ref))
    elif name == "matrix":
        result = {}
        out |= spread(timed_all(lambda: result.update(m=patch_matrix(model, ref, cor, metric)), repeats=3))
        out["effects"] = result["m"].to_dict()
    elif name == "hooked":
        out["seconds"], out["effects"] = hooked_matrix(model, ref, cor, metric)
    elif name == "scaling":
        out["rows"] = scaling(args)
    out["peak_extra_mb"] = rss_mb() - base
    return out


def hooked_matrix(model, ref, cor, metric) -> tuple[float, dict]:
    """One hooked TransformerLens forward per path (caches of both runs computed once, included)."""
    hooked = split_qkv_copy(model)
    heads = all_heads(model.cfg)
    hooked_patch_logits(hooked, ref, cor, PatchPath(heads[0]))  # warm-up (the engine's matrix is timed warm too)
    start = time.perf_counter()
    names = [hook_name(Head(layer, 0)) for layer in range(model.cfg.n_layers)]
    _, clean_cache = hooked.run_with_cache(ref, names_filter=lambda n: n in names)
    _, cor_cache = hooked.run_with_cache(cor, names_filter=lambda n: n in names)
    paths = [PatchPath(s, ((r, c),)) for s in heads for r in heads if r.layer > s.layer for c in HEAD_CHANNELS]
    paths += [PatchPath(s) for s in heads]
    effects = {}
    clean = float(metric(hooked(ref)[:, metric.positions]))
    for p in paths:
        logits = hooked_patch_logits(hooked, ref, cor, p, clean_cache, cor_cache)
        name = str(p).replace(" -> logits", "") if p.via else str(p)
        effects[name] = float(metric(logits[:, metric.positions])) - clean
    return time.perf_counter() - start, effects


def scaling(args) -> list[dict]:
    """Engine vs naive reference on random-init models: seconds for k claimed paths and n layers."""
    rows = []
    for n_layers in (2, 4, 6):
        model = random_model(n_layers)
        tokens = repeated_random_tokens(args.scaling_n, 16, 2, seed=0, vocab_size=model.cfg.d_vocab)  # [n, 33]
        for k in (1, 4, 8):
            tree = treeify(validate(k_paths_graph(model, k), model))
            data = assign_data(tree, tokens, seed=0)
            engine = timed(lambda m=model, t=tree, d=data, x=tokens: evaluate(m, t, d, clean_run(m, x)), repeats=3)
            naive = timed(lambda m=model, t=tree, d=data, x=tokens: naive_logits(m, t, d, x))
            rows.append({"layers": n_layers, "paths": k, "copies": sum(1 for _ in tree.walk()) - 1,
                         "engine_s": engine, "naive_s": naive})
    return rows


# --- orchestration ------------------------------------------------------------------------------------

def threads_env(threads: int) -> dict[str, str]:
    return os.environ | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def run_stage(name: str, args, threads: int = 1, extra: list[str] = ()) -> dict:
    cmd = [sys.executable, __file__, "--stage", name, "--model", str(args.model), "--n", str(args.n),
           "--length", str(args.length), "--roles", args.roles, "--scaling-n", str(args.scaling_n), *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, env=threads_env(threads))
    if done.returncode:
        raise RuntimeError(f"stage {name} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def peer(args, tmp: Path, threads: int = 1) -> dict | None:
    if not PEER_PYTHON.exists():
        return None
    model = load_model(args.model)
    ref, cor = batch(model, args.n, args.length)
    torch.save({"reference": ref, "corrupted": cor, "positions": second_repeat_positions(args.length)}, tmp / "data.pt")
    script = ROOT / "benchmarks" / "peers" / "autocircuit_peer.py"
    done = subprocess.run([str(PEER_PYTHON), str(script), str(args.model), str(tmp / "data.pt"), "--matrix"],
                          capture_output=True, text=True, env=threads_env(threads))
    if done.returncode:
        raise RuntimeError(f"auto-circuit peer failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def max_diff(ours: dict, theirs: dict) -> float:
    return max(abs(ours[k] - theirs[k]) for k in ours)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None, help="checkpoint directory (default: shipped model if trained, "
                                                       "else a random-init model of the same shape)")
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--length", type=int, default=40)
    parser.add_argument("--scaling-n", type=int, default=4)
    parser.add_argument("--stage", default=None)
    parser.add_argument("--roles", default=None)
    parser.add_argument("--skip", default="", help="comma-separated stages to skip")
    parser.add_argument("--threads", default="1,all", help="thread counts, comma-separated ('all': every core); each "
                                                          "stage runs at each, in this one run (default 1,all)")
    args = parser.parse_args()
    if args.stage:
        print(json.dumps(stage(args.stage, args)))
        return
    tmp = Path(tempfile.mkdtemp(prefix="scrub-bench-"))
    if args.model is None:
        if SHIPPED_DIR.exists():
            args.model = SHIPPED_DIR
        else:
            save_checkpoint(random_model(2), tmp / "random-2l")
            args.model = tmp / "random-2l"
    model = load_model(args.model)
    ind, prev = induction_roles(model)
    args.roles = ",".join(map(str, ind)) + ";" + ",".join(map(str, prev))
    skip = set(args.skip.split(","))
    for threads in thread_counts(args.threads):
        r = {name: run_stage(name, args, threads) for name in ("forward", "scrub", "naive", "matrix", "hooked",
                                                                "scaling") if name not in skip}
        ac = None if "autocircuit" in skip else peer(args, tmp, threads)
        report(args, r, ac, ind, prev, threads)
        print()


def report(args, r: dict, ac: dict | None, ind, prev, threads: int) -> None:
    print(f"model {args.model}; batch {args.n} x {1 + 2 * args.length} repeated random tokens; {threads} thread(s) "
          f"(OMP_NUM_THREADS); induction {','.join(map(str, ind))}, previous-token {','.join(map(str, prev))}")
    print(f"{'measurement':<58} {'seconds':>9} {'peak+MB':>8}  ratio [fastest-slowest s of the repeats]")
    def row(label: str, x: dict, ratio: str = "") -> None:
        between = f" [{x['fastest']:.4f}-{x['slowest']:.4f}]" if "fastest" in x else ""
        print(f"{label:<58} {x['seconds']:>9.4f} {x['peak_extra_mb']:>8.0f}  {ratio}{between}")
    if "forward" in r:
        row("plain forward (model(tokens))", r["forward"])
    if "scrub" in r:
        row(f"engine scrub, minimal induction ({r['scrub']['copies']} copies, incl. clean run)", r["scrub"],
            f"{r['scrub']['seconds'] / r['forward']['seconds']:.2f}x forward (goal <= 3x)")
    if "naive" in r:
        speedup = r["naive"]["seconds"] / r["scrub"]["seconds"]
        row("naive reference, same tree and data", r["naive"], f"engine {speedup:.0f}x faster (goal >= 10x)")
    if "matrix" in r:
        n_paths = len(r["matrix"]["effects"]["paths"]) + len(r["matrix"]["effects"]["to_logits"])
        row(f"path-patching matrix, engine ({n_paths} paths)", r["matrix"],
            f"{r['matrix']['seconds'] / r['forward']['seconds']:.1f}x forward")
    if "hooked" in r:
        row("same matrix, one TL hooked forward per path", r["hooked"],
            f"engine {r['hooked']['seconds'] / r['matrix']['seconds']:.1f}x faster (goal >= 10x)")
        ours = r["matrix"]["effects"]["paths"] | r["matrix"]["effects"]["to_logits"]
        print(f"  max |engine - hooked| effect: {max_diff(ours, r['hooked']['effects']):.2e}")
    if ac is not None and "matrix" in r:
        x = {"seconds": ac["seconds"], "peak_extra_mb": ac["peak_rss_mb"] - ac["rss_before_mb"]}
        row(f"same matrix, auto-circuit 1.0.1 ({ac['n_sets']} edges, one forward each)", x,
            f"engine {ac['seconds'] / r['matrix']['seconds']:.1f}x faster")
        ours = {k.replace(" -> logits", "->Resid End"): v
                for k, v in (r["matrix"]["effects"]["paths"] | r["matrix"]["effects"]["to_logits"]).items()}
        theirs = {_ours_name(k): v for k, v in ac["effects"].items()}
        common = [k for k in ours if k in theirs]
        print(f"  auto-circuit agreement on {len(common)} shared edges: max |diff| "
              f"{max(abs(ours[k] - theirs[k]) for k in common):.2e}")
    if "scaling" in r:
        print("\nscaling (random init, batch %d x 33): engine vs naive reference" % args.scaling_n)
        print(f"{'layers':>6} {'paths':>5} {'copies':>6} {'engine s':>9} {'naive s':>9} {'speed-up':>8}")
        for x in r["scaling"]["rows"]:
            print(f"{x['layers']:>6} {x['paths']:>5} {x['copies']:>6} {x['engine_s']:>9.4f} {x['naive_s']:>9.3f} "
                  f"{x['naive_s'] / x['engine_s']:>7.0f}x")


def _ours_name(edge: str) -> str:
    """auto-circuit ``A0.1->A1.4.V`` / ``A1.5->Resid End`` -> our ``0.1 -> 1.4:v`` / ``1.5->Resid End``."""
    src, dst = edge.split("->")
    if dst == "Resid End":
        return f"{src[1:]}->Resid End"
    layer_head, chan = dst[1:].rsplit(".", 1)
    return f"{src[1:]} -> {layer_head}:{chan.lower()}"


if __name__ == "__main__":
    main()

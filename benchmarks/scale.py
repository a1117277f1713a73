"""Scrubbing at real-model scale, as ratios measured in one run: a whole ``scrub.run`` of ``full_graph`` and of
the IOI-shaped claim against one plain forward, and their peak memory against a ``run_with_cache``.

Model: a random-init GPT-2-small-shaped HookedTransformer (12 layers x 12 heads, d_model 768, d_mlp 3072,
LayerNorm, GELU, learned positions) with a 2,048-token vocabulary; batch 8 x 64 random tokens. Each stage runs
in its own subprocess so its peak RSS is its own. ``--device cuda`` (or ``cuda:N``) puts the model and data on
a GPU: each timed call is bracketed by ``torch.cuda.synchronize()`` and peak memory is
``torch.cuda.max_memory_allocated`` above what the model and data hold. On the CPU every stage runs at each
``--threads`` count (default: 1 and every core), so the ratios at both come from one run. Seconds are the median
of ``--repeats`` calls after a warm-up, with the fastest and slowest in brackets. Usage (see benchmarks/README.md):
    .venv/bin/python benchmarks/scale.py                 # 1 thread and every core
    .venv/bin/python benchmarks/scale.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import torch  # noqa: E402
from bench import rss_mb, thread_counts, timed_all  # noqa: E402
from transformer_lens import HookedTransformer, HookedTransformerConfig  # noqa: E402

from scrub.claims.hypothesis import full_graph  # noqa: E402
from scrub.experiment.runner import run  # noqa: E402

STAGES = ("forward", "cache", "full", "ioi")


def run_device(name: str) -> torch.device:
    """The device ``--device`` names; a CUDA device this machine lacks exits with one line."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SystemExit(f"scale.py: --device {name!r} is not a device: use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"scale.py: --device {name} asks for CUDA but torch {torch.__version__} sees no CUDA device "
                         f"here; run with --device cpu or on a machine with a GPU")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise SystemExit(f"scale.py: --device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type not in ("cpu", "cuda"):
        raise SystemExit(f"scale.py: --device {name}: only cpu and cuda[:N] are measured")
    return device


def synced(fn, device: torch.device):
    """``fn`` with the GPU's queue drained before and after each call, so wall time covers the kernels."""
    if device.type != "cuda":
        return fn

    def call():
        torch.cuda.synchronize(device)
        out = fn()
        torch.cuda.synchronize(device)
        return out
    return call


def gpt2_shaped(n_layers: int = 12) -> HookedTransformer:
    cfg = HookedTransformerConfig(n_layers=n_layers, n_heads=12, d_model=768, d_head=64, d_mlp=3072, d_vocab=2048,
                                  n_ctx=128, act_fn="gelu", normalization_type="LN",
                                  positional_embedding_type="standard", seed=0)
    return HookedTransformer(cfg).eval()


def stage(name: str, args) -> dict:
    torch.set_grad_enabled(False)
    device = run_device(args.device)
    model = gpt2_shaped(args.layers).to(device, print_details=False)  # initialised on the CPU: same weights anywhere
    tokens = torch.randint(0, 2048, (args.n, args.seq), generator=torch.Generator().manual_seed(0))  # [n, seq]
    tokens = tokens.to(device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device) / 2**20 if cuda else rss_mb()
    scrub = lambda hypothesis: run(model, hypothesis, tokens, batch_size=args.n, progress=False)  # noqa: E731
    calls = {"forward": lambda: model(tokens), "cache": lambda: model.run_with_cache(tokens),
             "full": lambda: scrub(full_graph(model)),  # the graph is built and validated inside the timed call
             "ioi": lambda: scrub(ROOT / "hypotheses" / "ioi_shape.py")}  # the file is loaded and validated inside
    times = timed_all(synced(calls[name], device), repeats=args.repeats)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else rss_mb()
    return {"seconds": times[len(times) // 2], "fastest": times[0], "slowest": times[-1], "peak_extra_mb": peak - base,
            "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stage", choices=STAGES, default=None)
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N: where the model and data live")
    parser.add_argument("--threads", default="1,all", help="CPU thread counts, comma-separated ('all': every core); "
                                                          "default 1,all")
    args = parser.parse_args()
    run_device(args.device)  # a missing GPU is one line here, not four failed stages
    if args.stage:
        print(json.dumps(stage(args.stage, args)))
        return
    counts = thread_counts(args.threads)
    r: dict[int, dict] = {}
    for threads in counts:
        r[threads] = {}
        for name in STAGES:
            cmd = [sys.executable, __file__, "--stage", name, "--layers", str(args.layers), "--n", str(args.n),
                   "--seq", str(args.seq), "--repeats", str(args.repeats), "--device", args.device]
            env = os.environ | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
            done = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if done.returncode:
                raise RuntimeError(f"stage {name} at {threads} thread(s) failed:\n{done.stderr[-2000:]}")
            r[threads][name] = json.loads(done.stdout.strip().splitlines()[-1])
    where = (f"on {args.device} ({torch.cuda.get_device_name(torch.device(args.device))}), synchronised timing, "
             f"peak+MB = torch.cuda.max_memory_allocated above the model and data" if args.device != "cpu"
             else "on the CPU, peak+MB = peak RSS above the model and data")
    print(f"GPT-2-small-shaped random model ({args.layers} x 12, d_model 768, d_mlp 3072, vocab 2048); "
          f"batch {args.n} x {args.seq}; median of {args.repeats}{' after a warm-up' if args.repeats > 1 else ''} "
          f"[fastest-slowest]; torch threads {', '.join(str(r[t]['forward']['threads']) for t in counts)}; {where}")
    print("| measurement | " + " | ".join(f"{t} thread{'s' * (t > 1)}: seconds | ratio" for t in counts)
          + " | peak+MB (1st) | memory ratio |")
    print("|---|" + "---:|---|" * len(counts) + "---:|---|")
    rows = [("forward", "plain forward `model(tokens)`", None), ("cache", "`run_with_cache` (every hook)", None),
            ("full", "`scrub.run` of `full_graph` (graph built + validated)", 2),
            ("ioi", "`scrub.run` of `hypotheses/ioi_shape.py` (file loaded + validated)", 3)]
    first = r[counts[0]]
    for key, label, goal in rows:
        cells = []
        for t in counts:
            x, fwd = r[t][key], r[t]["forward"]
            ratio = "" if key == "forward" else (f"**{x['seconds'] / fwd['seconds']:.2f}x** forward"
                                                 + (f" (goal <= {goal}x)" if goal else ""))
            cells.append(f"{x['seconds']:.3f} [{x['fastest']:.3f}-{x['slowest']:.3f}] | {ratio}")
        memory = ("" if key in ("forward", "cache")
                  else f"**{first[key]['peak_extra_mb'] / first['cache']['peak_extra_mb']:.2f}x** run_with_cache "
                       f"(goal <= 3x)")
        print(f"| {label} | " + " | ".join(cells) + f" | {first[key]['peak_extra_mb']:.0f} | {memory} |")


if __name__ == "__main__":
    main()

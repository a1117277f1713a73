"""Where the time of ``scrub.run`` of the IOI-shaped claim goes (issue #20): torch.profiler's self time per op
and the share left to Python between ops, on the GPT-2-small-shaped random model of benchmarks/scale.py, at
each thread count given.

    python benchmarks/profile_ioi.py [--threads 1 2] [--n 8] [--seq 64] [--top 12]

Prints, per thread count: the run's wall time and a plain forward's (one warm-up each), the ops' summed self
time, and the top ops by self time with their call counts. "Python between ops" is wall time minus the ops'
summed self time (a lower bound: ops that overlap on threads count once each).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import ROOT, gpt2_shaped  # noqa: E402

from scrub.experiment.runner import run  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, torch.get_num_threads()])
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model = gpt2_shaped()
    tokens = torch.randint(0, 2048, (args.n, args.seq), generator=torch.Generator().manual_seed(0))  # [n, seq]
    claim = ROOT / "hypotheses" / "ioi_shape.py"
    for threads in dict.fromkeys(args.threads):
        torch.set_num_threads(threads)
        model(tokens)  # warm-up
        t = time.perf_counter()
        model(tokens)
        forward = time.perf_counter() - t
        run(model, claim, tokens, batch_size=args.n, progress=False)  # warm-up
        with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
            t = time.perf_counter()
            run(model, claim, tokens, batch_size=args.n, progress=False)
            wall = time.perf_counter() - t
        events = prof.key_averages()
        ops = sum(e.self_cpu_time_total for e in events) / 1e6
        print(f"\n## {threads} thread(s): scrub.run {wall:.2f} s = {wall / forward:.2f}x a forward ({forward:.3f} s); "
              f"ops' self time {ops:.2f} s; Python between ops >= {max(0.0, wall - ops):.2f} s "
              f"({max(0.0, wall - ops) / wall:.0%})")
        print("| op | self s | share of wall | calls |\n|---|---|---|---|")
        for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[: args.top]:
            print(f"| `{e.key}` | {e.self_cpu_time_total / 1e6:.3f} | {e.self_cpu_time_total / 1e6 / wall:.0%} | "
                  f"{e.count} |")


if __name__ == "__main__":
    main()

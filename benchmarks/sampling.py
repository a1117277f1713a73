"""What dataset-wide draws cost: a whole ``scrub.run`` on the shipped model against plain forward passes over
the same examples, with draws from the whole dataset (the default), from a pool, and with a per-position
feature that splits the induction heads by position. Usage (see benchmarks/README.md):
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sampling.py [--n 256] [--seq 128]
"""

from __future__ import annotations

import argparse
import json
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import torch  # noqa: E402
from bench import timed  # noqa: E402

import scrub  # noqa: E402
from scrub.claims.features import is_repeat  # noqa: E402
from scrub.engine.treeify import SamplingOptions  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model = scrub.load_model()
    data = scrub.natural_batch(args.n, args.seq, seed=0)
    minimal = ROOT / "hypotheses" / "induction_minimal.py"
    baseline = ROOT / "hypotheses" / "induction_baseline.py"
    graph = runpy.run_path(str(minimal))["hypothesis"](model)  # the same claim, heads split by position below
    for head in ("1.0", "1.3"):
        graph.nodes[head]["feature"] = is_repeat(per_position=True)

    def scrub_run(hypothesis, **options):
        return scrub.run(model, hypothesis, data, baseline=baseline, batch_size=args.batch_size, progress=False,
                         n_bootstrap=200, options=SamplingOptions(**options))

    forward = timed(lambda: [model(data[i : i + args.batch_size]) for i in range(0, args.n, args.batch_size)],
                    repeats=3)
    rows = {"forward over every batch": (forward, None)}
    for name, fn in (("scrub.run, draws from the whole dataset", lambda: scrub_run(minimal)),
                     ("scrub.run, draws from a pool of 32", lambda: scrub_run(minimal, pool=32)),
                     ("scrub.run, induction heads split by position (is_repeat per position)",
                      lambda: scrub_run(graph))):
        result = {}
        seconds = timed(lambda fn=fn, result=result: result.update(r=fn()), repeats=1)
        rows[name] = (seconds, result["r"])
    print(json.dumps({"n": args.n, "seq": args.seq, "batch_size": args.batch_size,
                      "rows": {k: {"seconds": s, "ratio_to_forward": s / forward,
                                   "loss_recovered": None if r is None else r.loss_recovered,
                                   "self_draws": None if r is None else {k2: v for k2, v in r.self_draws.items() if v}}
                               for k, (s, r) in rows.items()}}, indent=1))


if __name__ == "__main__":
    main()

"""`scrub discover --receivers` of a few heads on a GPT-2-small-shaped random model, from the command line
(issue #17: "finishes on 2 cores in at most 10 minutes"; "runs from the CLI on a deep random model").

    python benchmarks/discover_deep.py [--layers 12] [--receivers 11.0,11.1,11.2,11.3] [--threads all]

Saves a random-init checkpoint (``--layers`` x 12 heads, d_model 768, d_mlp 3072, vocabulary 2048, LN, GELU,
learned positions) into a temporary folder and runs ``scrub discover --data rrt --method eap-ig+verify`` on it
as a user would (8 discovery and 8 held-out RRT rows of 1 + 2 x 32 tokens, KL, τ 0.01, 3 draws). The last
layer's heads are the worst case: every earlier component sends into each of their q, k and v. Prints one JSON
object: wall seconds of the command, its peak RSS, the passes, and how many edges were searched, skipped and
kept.
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


def checkpoint(layers: int, directory: Path) -> Path:
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from scrub.model.loading import save_checkpoint

    cfg = HookedTransformerConfig(n_layers=layers, n_heads=12, d_model=768, d_head=64, d_mlp=3072, d_vocab=2048,
                                  n_ctx=128, act_fn="gelu", normalization_type="LN", seed=0)
    return save_checkpoint(HookedTransformer(cfg).eval(), directory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--receivers", default=None, help="default: the first 4 heads of the last layer")
    parser.add_argument("--threads", default="all", help="torch threads of the command (a number, or all)")
    args = parser.parse_args()
    receivers = args.receivers or ",".join(f"{args.layers - 1}.{h}" for h in range(4))
    threads = str(os.cpu_count() or 1) if args.threads == "all" else args.threads
    with tempfile.TemporaryDirectory() as tmp:
        model = checkpoint(args.layers, Path(tmp) / "ckpt")
        cmd = [sys.executable, "-m", "scrub", "discover", "--model", str(model), "--data", "rrt", "--n", "8",
               "--n-discover", "8", "--seq-len", "64", "--receivers", receivers, "--threshold", "0.01",
               "--out", str(Path(tmp) / "found"), "--json"]
        env = os.environ | {"OMP_NUM_THREADS": threads}
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
        seconds = time.perf_counter() - start
        if done.returncode:
            raise SystemExit(f"scrub discover failed ({done.returncode}):\n{done.stderr[-3000:]}")
        d = json.loads(done.stdout)
    searched = [e for e in d["edges"] if e["receiver"] in receivers.split(",")]
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"layers": args.layers, "receivers": receivers, "threads": int(threads),
                      "command": " ".join(cmd[1:]), "seconds": seconds, "peak_rss_mb": peak_mb,
                      "passes": d["passes"], "edges": len(d["edges"]), "searched": len(searched),
                      "skipped": d["skipped"], "spot_checked": d["spot_checked"],
                      "spot_violations": d["spot_violations"],
                      "kept_of_searched": sum(e["verdict"] != "dropped" for e in searched),
                      "loss_recovered": d["loss_recovered"], "ci": d["ci"]}, indent=1))


if __name__ == "__main__":
    main()

"""``scrub check``: property-test a hypothesis file on small data, one line per check.

Checks (``scrub.testing.check.run_checks``): the model's full and empty claims; the file's features and
positions masks are functions of each row's tokens and its query-key masks of the positions; every draw agrees
with its parent; every feature resamples (FAIL when a node's feature draws all return the datum itself, WARN
above ``run``'s self-draw warning share); the engine equals the naive reference for this claim on a few
examples; draws and logits do not depend on the batching. Exit 0 when nothing fails, 1 with the reproducer of
every failure, 2 on bad input (a file that does not load, bad options).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scrub.cli.common import UsageError, check_number, check_seed, quiet_load
from scrub.model import SHIPPED_NAME


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("hypothesis", type=Path,
                        help="a hypothesis file defining hypothesis(model) -> networkx.DiGraph")
    parser.add_argument("--model", default=SHIPPED_NAME,
                        help=f"{SHIPPED_NAME!r} (default), a checkpoint directory, or a TransformerLens name")
    parser.add_argument("--examples", "--n", dest="n", type=int, default=16,
                        help="examples the checks draw among (default 16; the naive reference uses the first 4)")
    parser.add_argument("--seq-len", type=int, default=24, help="tokens per example (default 24)")
    parser.add_argument("--data", choices=("natural", "rrt"), default="natural",
                        help="natural text from the validation split, or repeated random tokens")
    parser.add_argument("--unit", choices=("node", "copy"), default="node", help="sampling unit, as in scrub run")
    parser.add_argument("--independent", action="store_true", help="one random draw per unclaimed input, not per node")
    parser.add_argument("--seed", type=int, default=0)


def _rerun(args: argparse.Namespace) -> str:
    flags = [f"--model {args.model}", f"--examples {args.n}", f"--seq-len {args.seq_len}", f"--data {args.data}",
             f"--unit {args.unit}", f"--seed {args.seed}"] + (["--independent"] if args.independent else [])
    return f"scrub check {args.hypothesis} {' '.join(flags)}"


def command(args: argparse.Namespace) -> int:
    """Load the model, the data and the file, run every check that applies and print one line per check; then
    each failure's reproducer. Returns 1 when a check fails."""
    from scrub.claims.files import load_hypothesis
    from scrub.claims.hypothesis import check_on
    from scrub.cli.run import scrub_data
    from scrub.engine.treeify import SamplingOptions, Unit
    from scrub.testing.check import Status, run_checks

    check_number(args.n, "--examples", 2, "resampling draws inputs from the other examples")
    check_number(args.seq_len, "--seq-len", 3, "position 0 is BOS in every example, so at least two tokens must follow")
    check_seed(args.seed)
    if not args.hypothesis.is_file():
        raise UsageError(f"hypothesis file {args.hypothesis} does not exist; give the path of a .py file that defines "
                         f"hypothesis(model)")
    model = quiet_load(args.model)
    tokens = scrub_data(model, args.data, args.n, args.seq_len, args.seed)  # [n, seq]
    claim = load_hypothesis(args.hypothesis, model)
    check_on(claim, tokens)
    options = SamplingOptions(independent=args.independent, unit=Unit(args.unit))
    results = run_checks(model, claim, tokens, seed=args.seed, options=options)
    for result in results:
        print(result.line())
    failed = [r for r in results if r.status == Status.FAIL]
    for result in failed:
        print(f"\n{result.name}: {result.detail}\n    rerun: {_rerun(args)}")
    passed = sum(r.status == Status.PASS for r in results)
    print(f"\n{args.hypothesis}: {len(failed)} failed, {passed} passed, "
          f"{sum(r.status == Status.WARN for r in results)} warned, {sum(r.status == Status.SKIP for r in results)} "
          f"skipped", file=sys.stderr)
    return 1 if failed else 0

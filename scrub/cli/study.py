"""``scrub study``: the induction-head study (``experiments/``), handed the command's arguments."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scrub.cli.common import check_number, check_seed


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="test-sized run (< 2 min per model) into experiments/results/quick/")
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    parser.add_argument("--model", action="append", default=None,
                        help="a shipped model, a checkpoint directory, or a TransformerLens name; repeat for several "
                             "(--model scrub-attn-2l --model scrub-3l-mlp); default: every shipped model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--window", type=int, default=None, help="context sensitivity: keys more than W tokens back")
    parser.add_argument("--out", default=None, help="output folder (default experiments/results[/quick]): one "
                                                    "folder per model and the cross-model induction_study.md")
    parser.add_argument("--report-only", action="store_true",
                        help="only rewrite <out>/induction_study.md from the per-model results already in <out>")


def command(args: argparse.Namespace) -> int:
    """The induction study lives in the repository's experiments/ (it imports scrub, never the reverse):
    load it by path, like a hypothesis file, and hand it the arguments."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "experiments" / "induction_study.py"
    if not path.is_file():
        raise OSError(f"no study at {path}: `scrub study` runs from a source checkout of scrub (experiments/)")
    spec = importlib.util.spec_from_file_location("scrub_induction_study", path)
    if spec is None or spec.loader is None:
        raise OSError(f"cannot load the study from {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    check_seed(args.seed)
    if args.window is not None:  # far keys are more than W back, and scored queries lie beyond W + 1
        config = getattr(module, "StudyConfig", None)
        seq_len = getattr((config.quick_config() if args.quick else config()) if config else None, "seq_len", None)
        check_number(args.window, "--window", 1, "" if seq_len is None else (
            f"the study's sequences are at most {seq_len} tokens and need scored positions more than W + 1 tokens in"),
            high=None if seq_len is None else seq_len - 3)
    argv = [flag for flag, on in (("--quick", args.quick), ("--json", args.json),
                                  ("--report-only", getattr(args, "report_only", False))) if on]
    argv += ["--seed", str(args.seed)] + [a for m in (args.model or []) for a in ("--model", str(m))]
    for flag, value in (("--window", args.window), ("--out", args.out)):
        if value is not None:
            argv += [flag, str(value)]
    return module.main(argv)

"""``scrub study``: the induction-head study (the ``experiments`` package), handed the command's arguments."""

from __future__ import annotations

import argparse
import importlib

from scrub.cli.common import check_number, check_seed
from scrub.errors import ScrubError

STUDY = "experiments.induction_study"  # shipped beside scrub in the wheel (``experiments``, ``hypotheses``)


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="test-sized run (< 2 min per model) into the quick/ subfolder of the default --out")
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    parser.add_argument("--model", action="append", default=None,
                        help="a shipped model, a checkpoint directory, or a TransformerLens name; repeat for several "
                             "(--model scrub-attn-2l --model scrub-3l-mlp); default: every shipped model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--window", type=int, default=None, help="context sensitivity: keys more than W tokens back")
    parser.add_argument("--out", default=None, help="output folder (default: experiments/results[/quick] in a source "
                                                    "checkout, ./scrub-output/study[/quick] from an installed "
                                                    "package): one folder per model and the cross-model "
                                                    "induction_study.md")
    parser.add_argument("--report-only", action="store_true",
                        help="only rewrite <out>/induction_study.md from the per-model results already in <out>")
    parser.add_argument("--resume", action="store_true",
                        help="reuse the models an interrupted or failed run of the same command finished (kept in "
                             ".<out>.scrub-resume beside --out) and compute the rest; an error if none were kept "
                             "or the other flags differ")


def command(args: argparse.Namespace) -> int:
    """The induction study is the ``experiments`` package (it imports scrub; scrub imports it only here, when the
    command runs): import it and hand it the arguments."""
    module = study_module()
    check_seed(args.seed)
    if args.window is not None:  # far keys are more than W back, and scored queries lie beyond W + 1
        config = getattr(module, "StudyConfig", None)
        seq_len = getattr((config.quick_config() if args.quick else config()) if config else None, "seq_len", None)
        check_number(args.window, "--window", 1, "" if seq_len is None else (
            f"the study's sequences are at most {seq_len} tokens and need scored positions more than W + 1 tokens in"),
            high=None if seq_len is None else seq_len - 3)
    argv = [flag for flag, on in (("--quick", args.quick), ("--json", args.json),
                                  ("--report-only", getattr(args, "report_only", False)),
                                  ("--resume", getattr(args, "resume", False))) if on]
    argv += ["--seed", str(args.seed)] + [a for m in (args.model or []) for a in ("--model", str(m))]
    for flag, value in (("--window", args.window), ("--out", args.out)):
        if value is not None:
            argv += [flag, str(value)]
    return module.main(argv)


def study_module():
    """``experiments.induction_study``, from the source checkout or the installed wheel; a ``ScrubError``
    naming the fix when neither has it."""
    try:
        return importlib.import_module(STUDY)
    except ModuleNotFoundError as err:
        if err.name not in ("experiments", STUDY):
            raise  # the study is there but one of its imports is not: a broken install, shown as a bug
        raise ScrubError(f"`scrub study` needs the {STUDY} module, which is not importable here "
                         f"({err}); install scrub from its wheel or a source checkout "
                         "(pip install -e .), which ship the experiments and hypotheses packages") from None

"""``scrub discover``: find the edges that matter under scrubbing semantics (``scrub.discovery``) and write
the claim as a hypothesis file that ``scrub run`` re-runs to the reported held-out number.

Data: the held-out examples are exactly those ``scrub run FILE --data D --n N --seq-len L --seed S`` scores;
the discovery examples (``--n-discover``) are disjoint from them (natural text: the next windows of the same
seeded tiling; RRT: another seed). ``--out DIR`` receives ``discovered.py``, ``edges.csv`` and ``curve.png``,
written through ``OutputFolder`` (locked before any work, staged in a sibling, renamed into place when
complete), so an interrupted run leaves no half-written output; its progress (the scores, the search after each
receiver) is kept in ``.<out>.scrub-discover-resume.pt`` beside the folder, from which ``--resume`` continues
it to the result the whole run would have had (the file is removed when a run finishes). ``--html FILE``
also writes the result's interactive views as one page (``scrub.views.discovery``), its path checked before
any work.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from scrub.cli.common import (
    UsageError,
    add_html_argument,
    check_data_memory,
    check_html,
    check_number,
    check_seed,
    dump_json,
    quiet_load,
)
from scrub.cli.output import OutputFolder, PartlyKept, beside
from scrub.model import SHIPPED_NAME
from scrub.progress import bar as progress_bar

FILES = ("discovered.py", "edges.csv", "curve.png")
RESUME = ".scrub-discover-resume.pt"  # the progress file: .<out>.scrub-discover-resume.pt beside --out


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=SHIPPED_NAME,
                        help=f"{SHIPPED_NAME!r} (default), a checkpoint directory, or a TransformerLens name")
    parser.add_argument("--data", choices=("natural", "rrt"), default="natural")
    parser.add_argument("--positions", choices=("all", "candidates", "good-candidates"), default="all")
    parser.add_argument("--n", type=int, default=32, help="held-out examples (default 32), as `scrub run --n`")
    parser.add_argument("--n-discover", type=int, default=32, help="discovery examples (default 32)")
    parser.add_argument("--seq-len", type=int, default=64, help="natural-text length; RRT is 1 + 2 x (seq-len // 2)")
    parser.add_argument("--metric", choices=("kl", "loss"), default="kl")
    parser.add_argument("--method", choices=("eap-ig+verify", "eap", "eap-ig", "acdc"), default="eap-ig+verify")
    parser.add_argument("--corruption", choices=("resample", "paired"), default="resample",
                        help="resample (draws from the discovery data, causal scrubbing's) or paired (each example "
                             "against one corrupted example: other text, or other random tokens)")
    parser.add_argument("--threshold", type=float, default=0.01, help="τ, in the metric's units (default 0.01)")
    parser.add_argument("--receivers", default=None, help="search only the inputs of these, e.g. 1.0,1.3")
    parser.add_argument("--draws", type=int, default=3, help="resampled draws per example (default 3)")
    parser.add_argument("--steps", type=int, default=5, help="EAP-IG steps (default 5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="folder for discovered.py, edges.csv, curve.png")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into an --out folder that holds other files (they stay)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted or failed run of the same command from the progress it kept "
                             "(.<out>.scrub-discover-resume.pt beside --out); needs --out")
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    add_html_argument(parser)


def _check(args: argparse.Namespace) -> None:
    check_number(args.n, "--n", 2, "the held-out run resamples from the other examples")
    check_number(args.n_discover, "--n-discover", 2, "draws come from the other discovery examples")
    check_number(args.seq_len, "--seq-len", 3, "position 0 is BOS in every example, so at least two tokens must follow")
    check_number(args.draws, "--draws", 1)
    check_number(args.steps, "--steps", 1)
    check_seed(args.seed)
    if args.threshold < 0:
        raise UsageError(f"--threshold must be ≥ 0 (got {args.threshold}): it is an effect size in the metric's units")
    check_data_memory(args.n + 2 * args.n_discover, args.seq_len)
    check_html(args.html)
    if args.resume and args.out is None:
        raise UsageError("--resume needs --out: the progress of a run is kept beside its output folder")
    if args.resume and not resume_path(args.out).is_file():
        raise UsageError(f"--resume: no progress of an earlier run is kept for {args.out} ({resume_path(args.out)} "
                         f"does not exist); run without --resume")


def resume_path(out: Path) -> Path:
    """Where the progress of a run writing ``out`` is kept: beside the folder (the real one, not a link)."""
    return beside(out, RESUME)


def _data(model, args: argparse.Namespace):
    """(held-out, discovery, corrupted or None): held-out exactly as `scrub run` builds it."""
    from scrub.cli.run import scrub_data

    held = scrub_data(model, args.data, args.n, args.seq_len, args.seed)
    m, paired = args.n_discover, args.corruption == "paired"
    if args.data == "natural":
        every = scrub_data(model, "natural", args.n + 2 * m, args.seq_len, args.seed)  # the same tiling, continued
        return held, every[args.n : args.n + m], every[args.n + m :] if paired else None
    found = scrub_data(model, "rrt", m, args.seq_len, args.seed + 1)
    return held, found, scrub_data(model, "rrt", m, args.seq_len, args.seed + 2) if paired else None


def _commands(args: argparse.Namespace, argv: list[str]) -> str:
    rerun = ["scrub", "run", "discovered.py", "--model", str(args.model), "--data", args.data, "--n", str(args.n),
             "--seq-len", str(args.seq_len), "--seed", str(args.seed), "--metric", args.metric,
             "--positions", args.positions]
    argv = [a for a in argv if a != "--resume"]  # a resumed run writes what the whole run would have
    return f"{shlex.join(['scrub', 'discover', *argv])}\nRe-run held out: {shlex.join(rerun)}"


def command(args: argparse.Namespace) -> int:
    """Discover, then print the summary (or one JSON object) and write --out (locked before any work)."""
    _check(args)
    if args.out is None:
        return _discover(args, None)
    with OutputFolder(args.out, "discover", FILES, overwrite=args.overwrite) as folder:
        progress = resume_path(args.out)
        if not args.resume:
            progress.unlink(missing_ok=True)  # an earlier run's progress: this run starts over
        try:
            return _discover(args, folder, progress)
        except BaseException as stop:  # Ctrl-C, SIGTERM or a failure: the progress stays for --resume
            if not progress.is_file() or isinstance(stop, SystemExit):
                raise
            what = f"progress kept for --resume ({progress})"
            if not isinstance(stop, Exception):
                raise PartlyKept(what) from stop
            print(f"scrub discover: {what}", file=sys.stderr)
            raise


def _discover(args: argparse.Namespace, folder: OutputFolder | None, resume: Path | None = None) -> int:
    from scrub.discovery import discover

    model = quiet_load(args.model)
    held, found, corrupted = _data(model, args)
    receivers = None if args.receivers is None else [r for r in args.receivers.split(",") if r.strip()]
    bar = progress_bar(0, "scrub discover", unit="edge")

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        d = discover(model, found, corrupted=corrupted, method=args.method, metric=args.metric,
                     positions=args.positions.replace("-", "_"), threshold=args.threshold, receivers=receivers,
                     seed=args.seed, heldout=held, draws=args.draws, steps=args.steps,
                     command=_commands(args, sys.argv[2:] if len(sys.argv) > 2 else []), progress=progress,
                     resume=resume)
    finally:
        bar.close()
    if folder is not None:
        _write(d, folder.work)
    hypothesis = None if folder is None else str(folder.final(FILES[0]))
    page = {} if args.html is None else {"html": str(d.to_html(args.html))}
    if args.json:
        dump_json(d.to_dict() | {"hypothesis_file": hypothesis, "model": str(args.model), "data": args.data,
                                 "n": args.n, "n_discover": args.n_discover, "seq_len": args.seq_len,
                                 "positions": args.positions, **page})
        return 0
    print(d.summary())
    for r in sorted(d.kept, key=lambda r: -abs(r.effect or 0.0))[:15]:
        ci = "" if r.ci is None else f" [{r.ci[0]:+.4f}, {r.ci[1]:+.4f}]"
        effect = "" if r.effect is None else f"effect {r.effect:+.4f}{ci}"
        print(f"  {r.edge:<22} {r.verdict:<9} {effect}")
    if folder is not None:
        print(f"wrote {', '.join(str(folder.final(name)) for name in FILES)}")
    if page:
        print(f"html: {page['html']}")
    return 0


def _write(d, work: Path) -> None:
    """The hypothesis file, the edge table and the curve, into the folder's staging copy."""
    from scrub.discovery.figure import curve_png

    d.write(work / FILES[0])
    d.write_csv(work / FILES[1])
    if d.curve is not None:
        curve_png(d.curve, work / FILES[2], title=f"{d.method} ({d.counterfactual}, {d.metric}, τ={d.threshold:g})")

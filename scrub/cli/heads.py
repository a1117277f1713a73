"""``scrub heads``: every behavioral head score, the thresholds, the heads that pass, the ICL score and heatmaps."""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict

from scrub.cli.common import (
    UsageError,
    add_common_arguments,
    add_html_argument,
    check_data_memory,
    check_html,
    check_number,
    check_seed,
    dump_json,
    quiet_load,
)
from scrub.cli.output import OutputFolder
from scrub.progress import bar as progress_bar


def arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, out="scrub-output/heads", locked=True)
    parser.add_argument("--data", choices=("natural", "rrt"), default="natural",
                        help="batch for previous-token and duplicate-token scores (prefix matching always uses "
                             "repeated random tokens)")
    parser.add_argument("--n", type=int, default=32, help="sequences per batch (default 32)")
    parser.add_argument("--seq-len", type=int, default=None, help="natural-text length (default min(128, n_ctx))")
    parser.add_argument("--exclude-common", type=int, default=None,
                        help="drop this many most and least frequent tokens from random sequences "
                             "(default d_vocab // 20 for scrub-tokenizer models, else 0)")
    parser.add_argument("--prev-threshold", type=float, default=None)
    parser.add_argument("--prefix-threshold", type=float, default=None)
    parser.add_argument("--copying-threshold", type=float, default=None)
    add_html_argument(parser)


HEATMAP_RANGES = {  # score -> (vmin, vmax, colormap); copying colours saturate above 1 (values are printed)
    "previous_token": (0.0, 1.0, "viridis"),
    "prefix_matching": (0.0, 1.0, "viridis"),
    "duplicate_token": (0.0, 1.0, "viridis"),
    "copying": (-1.0, 1.0, "coolwarm"),
    "ov_eigenvalue": (-1.0, 1.0, "coolwarm"),
}


def command(args: argparse.Namespace) -> int:
    """Every behavioral head score, the thresholds, the heads that pass, the ICL score and heatmaps. The
    numbers and the --out folder are checked before the model loads."""
    from scrub.heads.scores import SCORE_NAMES

    check_number(args.n, "--n", 1)
    if args.seq_len is not None:
        if args.data != "natural":
            raise UsageError("--seq-len sets the natural-text length; --data rrt scores repeated random tokens of a "
                             "fixed length (1 + 4 x min(25, (n_ctx - 1) // 4)): drop --seq-len or use --data natural")
        check_number(args.seq_len, "--seq-len", 3, "previous-token and duplicate scores need positions after BOS")
    check_seed(args.seed)
    if args.exclude_common is not None:
        check_number(args.exclude_common, "--exclude-common", 0)
    for flag, value in (("--prev-threshold", args.prev_threshold), ("--prefix-threshold", args.prefix_threshold),
                        ("--copying-threshold", args.copying_threshold)):
        if value is not None and not math.isfinite(value):
            raise UsageError(f"{flag} must be a finite number (got {value})")
    check_data_memory(args.n, max(args.seq_len or 128, 101))  # the natural and the repeated-random batches
    check_html(args.html)
    with OutputFolder(args.out, "heads", [f"{name}.png" for name in SCORE_NAMES], overwrite=args.overwrite,
                      files=[args.html]) as folder:
        return _heads(args, folder)


def _heads(args: argparse.Namespace, folder: OutputFolder) -> int:
    from scrub.data.batches import check_length, default_exclude_common, natural_batch
    from scrub.heads.scores import (
        SCORE_NAMES,
        Thresholds,
        behavioral_induction_heads,
        head_scores,
        in_context_learning,
        previous_token_heads,
    )
    from scrub.memory import check_memory, head_scores_bytes
    from scrub.model.tokenizer import check_compatible, load_tokenizer
    from scrub.views.plots import head_heatmap

    model = quiet_load(args.model)
    tokenizer = load_tokenizer()
    compatible = tokenizer.vocab_size == model.cfg.d_vocab
    if args.data == "natural":
        check_compatible(tokenizer, model)
    seq_len = min(128, model.cfg.n_ctx) if args.seq_len is None else args.seq_len
    check_length(seq_len, model)
    check_memory(head_scores_bytes(model.cfg, args.n, max(seq_len, min(101, model.cfg.n_ctx))),
                 f"head scores on --n {args.n} sequences", "use a smaller --n or --seq-len")
    exclude = args.exclude_common if args.exclude_common is not None else default_exclude_common(model)
    defaults = Thresholds()
    thresholds = Thresholds(
        previous_token=defaults.previous_token if args.prev_threshold is None else args.prev_threshold,
        prefix_matching=defaults.prefix_matching if args.prefix_threshold is None else args.prefix_threshold,
        copying=defaults.copying if args.copying_threshold is None else args.copying_threshold,
    )
    bar = progress_bar(6, "scrub heads")  # 4 score steps, ICL, figures

    def steps(names):
        for name in names:
            bar.set_postfix_str(name)
            yield name
            bar.update(1)

    scores = head_scores(model, data=args.data, n=args.n, seq_len=seq_len, seed=args.seed,
                         exclude_common=exclude, progress=steps)
    bar.set_postfix_str("in-context learning")
    icl = in_context_learning(model, natural_batch(args.n, model.cfg.n_ctx, seed=args.seed)) if compatible else None
    bar.update(1)
    prev_heads = [str(h) for h in previous_token_heads(scores, thresholds)]
    induction = [str(h) for h in behavioral_induction_heads(scores, thresholds)]
    bar.set_postfix_str("figures")
    figures = []
    for name in SCORE_NAMES:
        vmin, vmax, cmap = HEATMAP_RANGES[name]
        head_heatmap(scores.score(name), folder.work / f"{name}.png", vmin=vmin, vmax=vmax, cmap=cmap,
                     title=f"{name.replace('_', '-')} score ({args.model})")
        figures.append(str(folder.final(f"{name}.png")))
    bar.update(1)
    bar.close()
    if args.html is not None:
        scores.to_html(folder.staged(args.html))  # in place with the figures, once the run is complete
    page = {} if args.html is None else {"html": str(args.html)}
    if args.json:
        dump_json({
            "model": str(args.model), "data": args.data, "n": args.n,
            "seq_len": seq_len if args.data == "natural" else None,  # natural text; RRT rows are 1 + 4 x repeat_length
            "repeat_length": min(25, (model.cfg.n_ctx - 1) // 4), "icl_seq_len": model.cfg.n_ctx, "seed": args.seed,
            "exclude_common": exclude, "scores": scores.per_head(), "thresholds": asdict(thresholds),
            "previous_token_heads": prev_heads, "induction_heads": induction,
            "in_context_learning": None if icl is None else asdict(icl) | {"score": icl.score},
            "figures": figures, **page,
        })
        return 0
    print(f"model {args.model}: {model.cfg.n_layers} layers x {model.cfg.n_heads} heads; previous-token and "
          f"duplicate scores on {args.data} data, n={args.n}"
          f"{f', seq_len={seq_len}' if args.data == 'natural' else ''}, seed={args.seed}")
    print("head  " + "  ".join(f"{name:>15}" for name in SCORE_NAMES) + "  roles")
    for head in scores.heads():
        roles = [role for role, members in (("previous-token", prev_heads), ("induction", induction))
                 if str(head) in members]
        values = "  ".join(f"{float(scores.score(name)[head.layer, head.head]):>15.3f}" for name in SCORE_NAMES)
        print(f"{str(head):<4}  {values}  {', '.join(roles)}")
    print(f"thresholds: previous_token ≥ {thresholds.previous_token}, prefix_matching ≥ "
          f"{thresholds.prefix_matching}, copying > {thresholds.copying}")
    print(f"previous-token heads: {', '.join(prev_heads) or 'none'}")
    print(f"induction heads (prefix-matching and copying): {', '.join(induction) or 'none'}")
    if icl is not None:
        print(f"in-context learning score: loss at {icl.late} - loss at {icl.early} = "
              f"{icl.loss_late:.3f} - {icl.loss_early:.3f} = {icl.score:.3f}")
    else:
        print("in-context learning score: skipped (the model does not use the scrub tokenizer)")
    print(f"figures: {args.out}/" + (f"\nhtml: {page['html']}" if page else ""))
    return 0

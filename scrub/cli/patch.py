"""``scrub patch``: path patching of every sender -> receiver:channel -> logits path, table and heatmap."""

from __future__ import annotations

import argparse
import json

from scrub.cli.common import UsageError, add_common_arguments, add_html_argument, check_html, quiet_load
from scrub.cli.output import OutputFolder

FIGURE = "path_patching.png"


def arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, out="scrub-output/patch", locked=True)
    parser.add_argument("--senders", nargs="+", default=None, metavar="COMPONENT",
                        help="sender heads (e.g. 0.0 0.3) or MLPs (mlp.0) (default all heads, and MLPs with --mlps)")
    parser.add_argument("--receivers", nargs="+", default=None, metavar="COMPONENT",
                        help="receiver heads (e.g. 1.6) or MLPs (mlp.1) (default all heads, and MLPs with --mlps; "
                             "only those a sender feeds are patched)")
    parser.add_argument("--input", nargs="+", default=["q", "k", "v"], metavar="q|k|v",
                        help="receiver head input channel(s) (default q k v; an MLP has one input)")
    parser.add_argument("--mlps", action="store_true", help="include MLPs as senders and receivers")
    parser.add_argument("--metric", default="loss", help="'loss' (default) or 'logit_diff', at second-repeat positions")
    parser.add_argument("--n", type=int, default=16, help="repeated-random-token sequences (default 16)")
    parser.add_argument("--length", type=int, default=40, help="length of each repeat (default 40: 1 + 2x40 tokens)")
    add_html_argument(parser)


def command(args: argparse.Namespace) -> int:
    """Effects of every sender -> receiver:channel -> logits and sender -> logits path, table and heatmap."""
    from scrub.patching.paths import head_channels

    if args.n < 1 or args.length < 2:
        raise UsageError(f"--n must be ≥ 1 and --length ≥ 2 (got {args.n}, {args.length})")
    channels = head_channels(args.input)  # checked before the model loads
    check_html(args.html)
    with OutputFolder(args.out, "patch", [FIGURE], overwrite=args.overwrite, files=[args.html]) as folder:
        return _patch(args, channels, folder)


def _patch(args: argparse.Namespace, channels, folder: OutputFolder) -> int:
    """The matrix, its table and heatmap (written under ``folder.work``), once --out is locked."""
    from scrub.claims.sites import Head, Mlp
    from scrub.data.batches import check_length, default_exclude_common, repeated_random_tokens
    from scrub.patching.checks import check_connects
    from scrub.patching.paths import make_metric, matrix_components, patch_matrix, second_repeat_positions
    from scrub.views.plots import patch_heatmap

    model = quiet_load(args.model)
    cfg = model.cfg
    senders = matrix_components(model, args.senders, args.mlps, "senders")
    receivers = matrix_components(model, args.receivers, args.mlps, "receivers")
    connected = check_connects(model, senders, receivers, receivers_given=args.receivers is not None)
    check_length(1 + 2 * args.length, model)
    exclude = default_exclude_common(model)
    reference = repeated_random_tokens(args.n, args.length, 2, seed=args.seed, vocab_size=cfg.d_vocab,
                                       exclude_common=exclude)
    corrupted = repeated_random_tokens(args.n, args.length, 2, seed=args.seed + 1, vocab_size=cfg.d_vocab,
                                       exclude_common=exclude)  # a fresh random sequence, same shape
    metric = make_metric(args.metric, reference, corrupted, second_repeat_positions(args.length))
    matrix = patch_matrix(model, reference, corrupted, metric, senders=senders, channels=channels,
                          receivers=receivers if args.receivers is not None else None, include_mlps=args.mlps)
    patch_heatmap(matrix, folder.work / FIGURE, title=f"path patching ({args.model}, {args.metric}, n={args.n})")
    figure = folder.final(FIGURE)
    if args.html is not None:
        matrix.to_html(folder.staged(args.html))  # in place with the figure, once the run is complete
    page = {} if args.html is None else {"html": str(args.html)}
    if args.json:
        print(json.dumps({"model": str(args.model), "n": args.n, "length": args.length, "seed": args.seed,
                          **matrix.to_dict(), "figure": str(figure), **page}))
        return 0
    print(f"model {args.model}: path patching on {args.n} repeated random sequences (1 + 2x{args.length}); corrupted: "
          f"fresh random sequences; {args.metric} at second-repeat positions: clean {matrix.clean:.4f}, "
          f"corrupted {matrix.corrupted:.4f}; cells are patched - clean")

    def table(title: str, kind: type, k: int) -> None:
        cols = [j for j, r in enumerate(matrix.receivers)
                if isinstance(r, kind) and not bool(matrix.effects[:, j, k].isnan().all())]
        if not cols:
            return
        print(f"\n{title}")
        print("      " + " ".join(f"{str(matrix.receivers[j]):>7}" for j in cols))
        for i, s in enumerate(matrix.senders):
            cells = [matrix.effects[i, j, k] for j in cols]
            if not all(v.isnan() for v in cells):
                print(f"{str(s):<5} " + " ".join("      ." if v.isnan() else f"{float(v):>7.3f}" for v in cells))

    if not connected:
        print(f"\nno receiver comes after {', '.join(map(str, senders))}: only the paths straight to the logits")
    for k, channel in enumerate(matrix.channels):
        table(f"sender -> receiver:{channel.value} -> logits", Head, k)
    table("sender -> mlp -> logits", Mlp, 0)
    print("\nsender -> logits")
    for s, v in zip(matrix.senders, matrix.to_logits, strict=True):
        print(f"{str(s):<5} {float(v):>7.3f}")
    print("\nlargest effects: " + "; ".join(f"{p} {v:+.3f}" for p, v in matrix.top(5)))
    print(f"figure: {figure}" + (f"\nhtml: {page['html']}" if page else ""))
    return 0

"""``scrub run``: scrub one hypothesis file and print loss recovered with its interval and spread."""

from __future__ import annotations

import argparse
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
from scrub.model import SHIPPED_NAME


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("hypothesis", type=Path,
                        help="a hypothesis file defining hypothesis(model) -> networkx.DiGraph")
    parser.add_argument("--model", default=SHIPPED_NAME,
                        help=f"{SHIPPED_NAME!r} (default), a checkpoint directory, or a TransformerLens name")
    parser.add_argument("--data", choices=("natural", "rrt"), default="natural",
                        help="natural text from the validation split, or repeated random tokens")
    parser.add_argument("--baseline", type=Path, default=None, help="baseline hypothesis file (default: the empty one)")
    parser.add_argument("--n", "--examples", dest="n", type=int, default=64,
                        help="number of examples (default 64); --examples is the same option, for torchrun "
                             "command lines, whose own parser takes --n for --nnodes")
    parser.add_argument("--seq-len", type=int, default=128, help="natural-text length; RRT is 1 + 2 x (seq-len // 2)")
    parser.add_argument("--positions", choices=("all", "candidates", "good-candidates"), default="all",
                        help="score all positions, induction candidates (current token seen before), or REMIX-like "
                             "good induction candidates (current token in a list chosen on the shipped text, "
                             "scrub.data.candidates)")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="examples per batch (default 32); draws never depend on it: they come from the whole "
                             "dataset, or the --pool")
    parser.add_argument("--pool", type=int, default=None,
                        help="draw resampled inputs from this many examples, chosen by the seed (default: all --n); "
                             "a small pool bounds how many extra sequences each batch must run")
    parser.add_argument("--independent", action="store_true", help="one random draw per unclaimed input, not per node")
    parser.add_argument("--allow-self", action="store_true", help="let a draw return the datum it is drawn for")
    parser.add_argument("--unit", choices=("node", "copy"), default="node",
                        help="one draw per hypothesis node per datum (default, any depth) or per tree copy "
                             "(strict treeification, small claims only)")
    parser.add_argument("--metric", choices=("loss", "kl"), default="loss",
                        help="per-token quantity: next-token loss (default), or KL divergence from the clean run's "
                             "next-token distribution (KL recovered = (KL_baseline - KL_scrubbed) / KL_baseline)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    add_html_argument(parser)


def scrub_data(model, kind: str, n: int, seq_len: int, seed: int):
    """The examples a scrubbing run scores: validation text or repeated random tokens."""
    from scrub.data.batches import check_length, natural_batch, repeated_random_tokens
    from scrub.model.tokenizer import check_compatible, load_tokenizer

    check_number(n, "--n", 2, "resampling draws inputs from the other examples")
    check_number(seq_len, "--seq-len", 3, "position 0 is BOS in every example, so at least two tokens must follow")
    if kind == "natural":
        check_compatible(load_tokenizer(), model)
        check_length(seq_len, model)
        return natural_batch(n, seq_len, seed=seed)
    half = seq_len // 2
    if 1 + 2 * half > model.cfg.n_ctx:
        raise UsageError(f"--data rrt uses 1 + 2 x (seq-len // 2) = {1 + 2 * half} tokens, more than the model's n_ctx "
                         f"{model.cfg.n_ctx}; use --seq-len ≤ {model.cfg.n_ctx - 1 + model.cfg.n_ctx % 2}")
    return repeated_random_tokens(n, half, 2, seed=seed, vocab_size=model.cfg.d_vocab,
                                  exclude_common=model.cfg.d_vocab // 20)


def check_run_arguments(args: argparse.Namespace) -> None:
    """Everything about ``scrub run``'s arguments that can be told before the model loads."""
    from scrub.experiment.inputs import check_batch_size

    check_number(args.n, "--n", 2, "resampling draws inputs from the other examples")
    check_number(args.seq_len, "--seq-len", 3, "position 0 is BOS in every example, so at least two tokens must follow")
    check_batch_size(args.batch_size, "--batch-size")
    if args.pool is not None:
        check_number(args.pool, "--pool", 2, "a draw needs at least one other example to come from")
    check_seed(args.seed)
    for flag, path in (("hypothesis", args.hypothesis), ("--baseline", args.baseline)):
        if path is not None and not path.is_file():
            raise UsageError(f"{flag} file {path} does not exist" + (" (it is a folder)" if path.is_dir() else "")
                             + "; give the path of a .py file that defines hypothesis(model)")
    if args.baseline is not None and args.baseline.resolve() == args.hypothesis.resolve():
        raise UsageError(f"--baseline {args.baseline} is the hypothesis itself: scrubbed and baseline losses would be "
                         f"equal and loss recovered 0 (or 0/0); give another baseline, or none for the empty one")
    check_data_memory(args.n, args.seq_len)
    check_html(args.html)


def command(args: argparse.Namespace) -> int:
    """Scrub one hypothesis and print loss recovered with its interval, the per-example spread and warnings.

    Under torchrun every rank loads the model onto its device (``cuda:LOCAL_RANK`` on GPUs), scrubs its share
    of the batches, and rank 0 alone prints the result, which equals the one-process result."""
    import torch

    from scrub.engine.treeify import SamplingOptions, Unit
    from scrub.experiment import distributed
    from scrub.experiment.runner import run

    check_run_arguments(args)
    model = quiet_load(args.model, device=distributed.device())  # the CLI owns its model: it may place it
    data = scrub_data(model, args.data, args.n, args.seq_len, args.seed)
    n_bootstrap = 1000
    options = SamplingOptions(args.independent, args.allow_self, Unit(args.unit), args.pool)
    positions = args.positions.replace("-", "_")
    result = run(model, args.hypothesis, data, baseline=args.baseline, positions=positions,
                 seed=args.seed, batch_size=args.batch_size, options=options,
                 n_bootstrap=n_bootstrap, progress=sys.stderr.isatty() and distributed.is_main(), metric=args.metric)
    if not distributed.is_main():
        return 0
    page = {} if args.html is None else {"html": str(_write_html(args, model, data, result, positions, options))}
    per = result.per_example_recovered()
    per = per[torch.isfinite(per)]
    levels = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9], dtype=torch.float64)
    quantiles = torch.quantile(per.double(), levels).tolist() if per.numel() else []
    worse = float((torch.tensor(result.per_example_scrubbed) > torch.tensor(result.per_example_baseline))
                  .float().mean())
    if args.json:
        dump_json(result.to_dict() | {
            "hypothesis_file": str(args.hypothesis),
            "baseline_file": None if args.baseline is None else str(args.baseline),
            "data": args.data, "positions": args.positions, "seed": args.seed, "model": str(args.model),
            "n": args.n, "seq_len": args.seq_len, "tokens_per_example": int(data.shape[1]),
            "exclude_common": model.cfg.d_vocab // 20 if args.data == "rrt" else None,
            "unit": args.unit, "batch_size": args.batch_size, "independent": args.independent,
            "allow_self": args.allow_self, "pool": args.pool, "n_bootstrap": n_bootstrap,
            "pool_used": args.n if args.pool is None else min(args.pool, args.n),  # draws come from this many
            "per_example_recovered_quantiles": dict(zip(("p10", "p25", "p50", "p75", "p90"), quantiles, strict=False)),
            "share_examples_worse_than_baseline": worse, **page,
        })
        return 0
    print(result.summary())  # the headline, the "token-level" line, then one "warning: ..." line per warning
    if quantiles:
        print(f"per-example {'KL' if args.metric == 'kl' else 'loss'} recovered: " +
              ", ".join(f"p{q}={v:.2f}" for q, v in zip((10, 25, 50, 75, 90), quantiles, strict=True)) +
              f"; {worse:.0%} of examples do worse than the baseline")
    print(f"draws equal to the datum they were drawn for: {result.self_sample_rate:.1%}")
    fed = {node: rate for node, rate in result.self_draws.items() if rate > 0}
    if fed:
        print("feature draws that returned the datum itself, per node: "
              + ", ".join(f"{node} {rate:.1%}" for node, rate in fed.items()))
    if page:
        print(f"html: {page['html']}")
    return 0


def _write_html(args: argparse.Namespace, model, data, result, positions: str, options):
    """The run's page: its numbers, claim graph, token view and attention patterns (``scrub.views``)."""
    from scrub.model.tokenizer import load_tokenizer
    from scrub.views.report import explain

    shipped = load_tokenizer()
    tokenizer = shipped if shipped.vocab_size == model.cfg.d_vocab else None  # else tokens show as ids
    report = explain(model, args.hypothesis, data, result, tokenizer=tokenizer, baseline=args.baseline,
                     positions=positions, seed=args.seed, options=options)
    return report.to_html(args.html)

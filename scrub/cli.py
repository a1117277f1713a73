"""The ``scrub`` command line: one function pair (arguments, run) per subcommand, registered in ``COMMANDS``.

Owns argument parsing, human-readable tables, ``--json`` output and the error policy: bad input
(``ModelLoadError``, ``SiteError``, ``ValueError``, ``OSError``, and argparse's own errors) prints one line
to stderr and exits 2; numbers are checked before the model loads wherever they can be. Progress bars go
to stderr only, so ``--json`` stdout is exactly one JSON object (non-finite numbers as ``null``). A reader
that closes the pipe early (``scrub heads | head``) ends the command quietly.

Output folders (``--out``) are prepared before any work by ``OutputFolder`` (its policy is in its docstring).

To add a subcommand, write ``<name>_arguments(parser)`` and ``<name>_command(args) -> int`` and add a
``Command`` to ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Self

from scrub.model import SHIPPED_NAME, ModelLoadError
from scrub.sites import SiteError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def progress(items, desc: str):
    """A tqdm bar on stderr (hidden when stderr is not a terminal)."""
    from tqdm import tqdm

    return tqdm(items, desc=desc, file=sys.stderr, disable=None, leave=False)


def quiet_load(name: str, device: str | torch.device = "cpu"):
    """``load_model`` onto ``device`` with TransformerLens' "Moving model to device" print sent to stderr."""
    from scrub.model import load_model

    with contextlib.redirect_stdout(sys.stderr):
        return load_model(name, device=str(device))


def add_common_arguments(parser: argparse.ArgumentParser, *, out: str, locked: bool = False) -> None:
    """--model, --seed, --out and --json; ``locked``: the command writes --out through ``OutputFolder``
    (and takes --overwrite)."""
    parser.add_argument("--model", default=SHIPPED_NAME,
                        help=f"{SHIPPED_NAME!r} (default), a checkpoint directory, or a TransformerLens name")
    parser.add_argument("--seed", type=int, default=0, help="random seed, 0 to 2**63 - 1 (default 0)")
    if locked:
        command = parser.prog.split()[-1]
        parser.add_argument("--out", type=Path, default=Path(out), help=(
            f"figure folder (default {out}). Created if missing and checked for writing before any work; locked "
            f"while the run writes ({OutputFolder.LOCK}); the files an earlier `scrub {command}` wrote there are "
            f"replaced; a folder holding any other file (e.g. another command's figures) is refused unless "
            f"--overwrite"))
        parser.add_argument("--overwrite", action="store_true",
                            help="write into an --out folder that holds other files (they stay; scrub replaces only "
                                 "files of the names it writes)")
    else:
        parser.add_argument("--out", type=Path, default=Path(out), help=f"figure directory (default {out})")
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")


def dump_json(obj: dict) -> None:
    """Print ``obj`` as one line of strict JSON: NaN and infinities become null."""
    def plain(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    print(json.dumps(plain(obj), allow_nan=False))


def check_number(value: int, name: str, low: int, why: str = "", high: int | None = None) -> int:
    """``value`` if ``low`` ≤ value (≤ ``high``), else ``ValueError`` naming the option and the range."""
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ValueError(f"{name} must be {bound} (got {value}){': ' + why if why else ''}")
    return value


def check_seed(seed: int) -> int:
    from scrub.experiment import MAX_SEED

    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"--seed must be between 0 and 2**63 - 1 (got {seed})")
    return seed


def check_data_memory(n: int, seq_len: int) -> None:
    """Refuse, before the model loads, ``n`` examples of ``seq_len`` tokens that cannot fit in memory (the
    batch is built in a few int64 copies)."""
    from scrub.data import check_memory

    check_memory(n * seq_len * 8 * 4 + n * 256, f"--n {n} examples of {seq_len} tokens",
                 "use a smaller --n or --seq-len")


class OutputFolder:
    """The --out folder of one command's run, prepared before any work.

    Policy: the folder is created if missing and checked for writing at once, by creating a lock file in it
    (``.scrub-lock``, holding the process id; removed at the end), so two runs never write one folder at the
    same time (a lock left by a process that no longer runs is taken over). The folder may already hold
    files the run is about to write (an earlier run of the same command): they are deleted first, so figures
    of two runs never mix. A folder holding any other file is refused, unless ``overwrite``: then the run's
    files replace those of the same names and other files stay (scrub deletes only what it writes)."""

    LOCK = ".scrub-lock"

    def __init__(self, path: Path, command: str, names: Iterable[str], *, overwrite: bool = False):
        self.path, self.command, self.names, self.overwrite = Path(path), command, set(names), overwrite
        self._created = False

    def __enter__(self) -> Self:
        path, lock = self.path, self.path / self.LOCK
        if path.exists() and not path.is_dir():
            raise ValueError(f"--out {path} is a file, not a folder; choose a folder")
        if lock.exists() and self._lock_is_live(lock):
            raise ValueError(f"--out {path} is in use by another scrub run ({lock} exists); wait for it to finish, "
                             f"or delete {lock} if no run is writing there")
        others = (sorted(p.name for p in path.iterdir() if p.name not in self.names | {self.LOCK})
                  if path.is_dir() else [])
        if others and not self.overwrite:
            raise ValueError(f"--out {path} already holds {len(others)} file(s) that `scrub {self.command}` does not "
                             f"write (e.g. {others[0]!r}: another run's outputs?); choose a new or empty folder, or "
                             f"pass --overwrite to write there anyway")
        try:
            self._created = not path.exists()
            path.mkdir(parents=True, exist_ok=True)
            lock.unlink(missing_ok=True)  # a stale lock (its process is gone)
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            os.write(fd, f"{os.getpid()}\n".encode())
            os.close(fd)
        except FileExistsError:
            raise ValueError(f"--out {path} is in use by another scrub run ({lock} exists)") from None
        except OSError as err:
            raise OSError(f"cannot write to --out {path}: {err.strerror or err}; "
                          f"choose a folder you can write") from None
        for name in self.names:  # an earlier run's outputs: replaced, never mixed with this run's
            (path / name).unlink(missing_ok=True)
        return self

    @staticmethod
    def _lock_is_live(lock: Path) -> bool:
        """Whether the process that wrote ``lock`` still runs (an unreadable lock counts as live)."""
        try:
            pid = int(lock.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return True
        try:
            os.kill(pid, 0)  # signal 0: only asks whether the process exists
        except ProcessLookupError:
            return False
        except OSError:  # e.g. another user's process
            return True
        return True

    def __exit__(self, kind, err, tb) -> None:
        (self.path / self.LOCK).unlink(missing_ok=True)
        if kind is not None and self._created and not any(self.path.iterdir()):
            self.path.rmdir()  # a folder this run created and left empty


# --- scrub heads ----------------------------------------------------------------------------------------

def heads_arguments(parser: argparse.ArgumentParser) -> None:
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


HEATMAP_RANGES = {  # score -> (vmin, vmax, colormap); copying colours saturate above 1 (values are printed)
    "previous_token": (0.0, 1.0, "viridis"),
    "prefix_matching": (0.0, 1.0, "viridis"),
    "duplicate_token": (0.0, 1.0, "viridis"),
    "copying": (-1.0, 1.0, "coolwarm"),
    "ov_eigenvalue": (-1.0, 1.0, "coolwarm"),
}


def heads_command(args: argparse.Namespace) -> int:
    """Every behavioral head score, the thresholds, the heads that pass, the ICL score and heatmaps. The
    numbers and the --out folder are checked before the model loads."""
    from scrub.scores import SCORE_NAMES

    check_number(args.n, "--n", 1)
    if args.seq_len is not None:
        if args.data != "natural":
            raise ValueError("--seq-len sets the natural-text length; --data rrt scores repeated random tokens of a "
                             "fixed length (1 + 4 x min(25, (n_ctx - 1) // 4)): drop --seq-len or use --data natural")
        check_number(args.seq_len, "--seq-len", 3, "previous-token and duplicate scores need positions after BOS")
    check_seed(args.seed)
    if args.exclude_common is not None:
        check_number(args.exclude_common, "--exclude-common", 0)
    for flag, value in (("--prev-threshold", args.prev_threshold), ("--prefix-threshold", args.prefix_threshold),
                        ("--copying-threshold", args.copying_threshold)):
        if value is not None and not math.isfinite(value):
            raise ValueError(f"{flag} must be a finite number (got {value})")
    check_data_memory(args.n, max(args.seq_len or 128, 101))  # the natural and the repeated-random batches
    with OutputFolder(args.out, "heads", [f"{name}.png" for name in SCORE_NAMES], overwrite=args.overwrite):
        return _heads(args)


def head_memory(cfg, n: int, seq_len: int) -> int:
    """About how many bytes the head scores need at their peak: the attention patterns of every head on the
    largest batch, held twice (the cache and the stacked copy), and the ICL logits."""
    import torch

    itemsize = max(4, torch.empty((), dtype=cfg.dtype).element_size())  # scores are computed in at least float32
    patterns = 2 * n * cfg.n_layers * cfg.n_heads * seq_len * seq_len * itemsize
    return patterns + 2 * n * cfg.n_ctx * cfg.d_vocab * itemsize


def _heads(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from scrub.data import check_length, check_memory, default_exclude_common, natural_batch
    from scrub.plots import head_heatmap
    from scrub.scores import (
        SCORE_NAMES,
        Thresholds,
        behavioral_induction_heads,
        head_scores,
        in_context_learning,
        previous_token_heads,
    )
    from scrub.tokenizer import check_compatible, load_tokenizer

    model = quiet_load(args.model)
    tokenizer = load_tokenizer()
    compatible = tokenizer.vocab_size == model.cfg.d_vocab
    if args.data == "natural":
        check_compatible(tokenizer, model)
    seq_len = min(128, model.cfg.n_ctx) if args.seq_len is None else args.seq_len
    check_length(seq_len, model)
    check_memory(head_memory(model.cfg, args.n, max(seq_len, min(101, model.cfg.n_ctx))),
                 f"head scores on --n {args.n} sequences", "use a smaller --n or --seq-len")
    exclude = args.exclude_common if args.exclude_common is not None else default_exclude_common(model)
    defaults = Thresholds()
    thresholds = Thresholds(
        previous_token=defaults.previous_token if args.prev_threshold is None else args.prev_threshold,
        prefix_matching=defaults.prefix_matching if args.prefix_threshold is None else args.prefix_threshold,
        copying=defaults.copying if args.copying_threshold is None else args.copying_threshold,
    )
    bar = tqdm(total=6, desc="scrub heads", file=sys.stderr, disable=None, leave=False)  # 4 score steps, ICL, figures

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
        figures.append(str(head_heatmap(scores.score(name), args.out / f"{name}.png", vmin=vmin, vmax=vmax,
                                        cmap=cmap, title=f"{name.replace('_', '-')} score ({args.model})")))
    bar.update(1)
    bar.close()
    if args.json:
        dump_json({
            "model": str(args.model), "data": args.data, "n": args.n,
            "seq_len": seq_len if args.data == "natural" else None,  # natural text; RRT rows are 1 + 4 x repeat_length
            "repeat_length": min(25, (model.cfg.n_ctx - 1) // 4), "icl_seq_len": model.cfg.n_ctx, "seed": args.seed,
            "exclude_common": exclude, "scores": scores.per_head(), "thresholds": asdict(thresholds),
            "previous_token_heads": prev_heads, "induction_heads": induction,
            "in_context_learning": None if icl is None else asdict(icl) | {"score": icl.score},
            "figures": figures,
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
    print(f"figures: {args.out}/")
    return 0


# --- scrub run -----------------------------------------------------------------------------------------

def run_arguments(parser: argparse.ArgumentParser) -> None:
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
                             "scrub.candidates)")
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


def scrub_data(model, kind: str, n: int, seq_len: int, seed: int):
    """The examples a scrubbing run scores: validation text or repeated random tokens."""
    from scrub.data import check_length, natural_batch, repeated_random_tokens
    from scrub.tokenizer import check_compatible, load_tokenizer

    check_number(n, "--n", 2, "resampling draws inputs from the other examples")
    check_number(seq_len, "--seq-len", 3, "position 0 is BOS in every example, so at least two tokens must follow")
    if kind == "natural":
        check_compatible(load_tokenizer(), model)
        check_length(seq_len, model)
        return natural_batch(n, seq_len, seed=seed)
    half = seq_len // 2
    if 1 + 2 * half > model.cfg.n_ctx:
        raise ValueError(f"--data rrt uses 1 + 2 x (seq-len // 2) = {1 + 2 * half} tokens, more than the model's n_ctx "
                         f"{model.cfg.n_ctx}; use --seq-len ≤ {model.cfg.n_ctx - 1 + model.cfg.n_ctx % 2}")
    return repeated_random_tokens(n, half, 2, seed=seed, vocab_size=model.cfg.d_vocab,
                                  exclude_common=model.cfg.d_vocab // 20)


def check_run_arguments(args: argparse.Namespace) -> None:
    """Everything about ``scrub run``'s arguments that can be told before the model loads."""
    from scrub.experiment import check_batch_size

    check_number(args.n, "--n", 2, "resampling draws inputs from the other examples")
    check_number(args.seq_len, "--seq-len", 3, "position 0 is BOS in every example, so at least two tokens must follow")
    check_batch_size(args.batch_size, "--batch-size")
    if args.pool is not None:
        check_number(args.pool, "--pool", 2, "a draw needs at least one other example to come from")
    check_seed(args.seed)
    for flag, path in (("hypothesis", args.hypothesis), ("--baseline", args.baseline)):
        if path is not None and not path.is_file():
            raise ValueError(f"{flag} file {path} does not exist" + (" (it is a folder)" if path.is_dir() else "")
                             + "; give the path of a .py file that defines hypothesis(model)")
    if args.baseline is not None and args.baseline.resolve() == args.hypothesis.resolve():
        raise ValueError(f"--baseline {args.baseline} is the hypothesis itself: scrubbed and baseline losses would be "
                         f"equal and loss recovered 0 (or 0/0); give another baseline, or none for the empty one")
    check_data_memory(args.n, args.seq_len)


def run_command(args: argparse.Namespace) -> int:
    """Scrub one hypothesis and print loss recovered with its interval, the per-example spread and warnings.

    Under torchrun every rank loads the model onto its device (``cuda:LOCAL_RANK`` on GPUs), scrubs its share
    of the batches, and rank 0 alone prints the result, which equals the one-process result."""
    import torch

    from scrub import distributed
    from scrub.experiment import run
    from scrub.treeify import SamplingOptions, Unit

    check_run_arguments(args)
    model = quiet_load(args.model, device=distributed.device())  # the CLI owns its model: it may place it
    data = scrub_data(model, args.data, args.n, args.seq_len, args.seed)
    n_bootstrap = 1000
    result = run(model, args.hypothesis, data, baseline=args.baseline, positions=args.positions.replace("-", "_"),
                 seed=args.seed, batch_size=args.batch_size,
                 options=SamplingOptions(args.independent, args.allow_self, Unit(args.unit), args.pool),
                 n_bootstrap=n_bootstrap, progress=sys.stderr.isatty() and distributed.is_main(), metric=args.metric)
    if not distributed.is_main():
        return 0
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
            "per_example_recovered_quantiles": dict(zip(("p10", "p25", "p50", "p75", "p90"), quantiles, strict=False)),
            "share_examples_worse_than_baseline": worse,
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
    return 0


# --- scrub patch ----------------------------------------------------------------------------------------

def patch_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, out="scrub-output/patch")
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


def patch_command(args: argparse.Namespace) -> int:
    """Effects of every sender -> receiver:channel -> logits and sender -> logits path, table and heatmap."""
    from scrub.data import check_length, default_exclude_common, repeated_random_tokens
    from scrub.patching import head_channels, make_metric, matrix_components, patch_matrix, second_repeat_positions
    from scrub.plots import patch_heatmap
    from scrub.sites import Head, Mlp

    if args.n < 1 or args.length < 2:
        raise ValueError(f"--n must be ≥ 1 and --length ≥ 2 (got {args.n}, {args.length})")
    channels = head_channels(args.input)  # checked before the model loads
    model = quiet_load(args.model)
    cfg = model.cfg
    senders = matrix_components(model, args.senders, args.mlps, "senders")
    receivers = matrix_components(model, args.receivers, args.mlps, "receivers")
    check_length(1 + 2 * args.length, model)
    exclude = default_exclude_common(model)
    reference = repeated_random_tokens(args.n, args.length, 2, seed=args.seed, vocab_size=cfg.d_vocab,
                                       exclude_common=exclude)
    corrupted = repeated_random_tokens(args.n, args.length, 2, seed=args.seed + 1, vocab_size=cfg.d_vocab,
                                       exclude_common=exclude)  # a fresh random sequence, same shape
    metric = make_metric(args.metric, reference, corrupted, second_repeat_positions(args.length))
    matrix = patch_matrix(model, reference, corrupted, metric, senders=senders, receivers=receivers, channels=channels)
    figure = patch_heatmap(matrix, args.out / "path_patching.png",
                           title=f"path patching ({args.model}, {args.metric}, n={args.n})")
    if args.json:
        print(json.dumps({"model": str(args.model), "n": args.n, "length": args.length, "seed": args.seed,
                          **matrix.to_dict(), "figure": str(figure)}))
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

    for k, channel in enumerate(matrix.channels):
        table(f"sender -> receiver:{channel.value} -> logits", Head, k)
    table("sender -> mlp -> logits", Mlp, 0)
    print("\nsender -> logits")
    for s, v in zip(matrix.senders, matrix.to_logits, strict=True):
        print(f"{str(s):<5} {float(v):>7.3f}")
    print("\nlargest effects: " + "; ".join(f"{p} {v:+.3f}" for p, v in matrix.top(5)))
    print(f"figure: {figure}")
    return 0


# --- scrub study -----------------------------------------------------------------------------------------

def study_arguments(parser: argparse.ArgumentParser) -> None:
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


def study_command(args: argparse.Namespace) -> int:
    """The induction study lives in the repository's experiments/ (it imports scrub, never the reverse):
    load it by path, like a hypothesis file, and hand it the arguments."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "experiments" / "induction_study.py"
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


COMMANDS: tuple[Command, ...] = (
    Command("heads", "behavioral head scores (previous-token, prefix-matching, copying, ...)",
            heads_arguments, heads_command),
    Command("run", "scrub a hypothesis file: loss recovered with a bootstrap interval", run_arguments, run_command),
    Command("patch", "path patching: effect of every sender -> receiver (q/k/v) and head -> logits path",
            patch_arguments, patch_command),
    Command("study", "the induction-head study: hypotheses, loss recovered, context sensitivity, report",
            study_arguments, study_command),
)


SHARDED = ("run",)  # the subcommands that may run under torchrun (several processes share the batches)


def build_parser(commands: tuple[Command, ...] = COMMANDS) -> argparse.ArgumentParser:
    parser = _Parser(prog="scrub", description="Causal scrubbing and path patching.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for command in commands:
        command.add_arguments(sub.add_parser(command.name, help=command.help, description=command.help))
    return parser


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``scrub run: error: argument --n: invalid int value: 'x' (see scrub run
    --help)`` on stderr, exit code 2, no usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _stdout_closed() -> int:
    """The reader of stdout went away (``scrub heads | head``): stop quietly, like a program ended by SIGPIPE."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that the flush at exit does not raise again
    except (OSError, ValueError, AttributeError):
        pass
    return 141


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse ``argv``, run the subcommand, turn bad input into one stderr line and exit code 2.

    Under torchrun (``torchrun --nproc-per-node=N -m scrub run ...``) each process runs this; the process
    group a run starts is ended here, and an error line names the rank that hit it. A closed stdout (piping
    into ``head``) ends the command without a message (exit code 141, as for SIGPIPE)."""
    from scrub import distributed

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # argparse: --help (0) or a one-line usage error (2)
        return stop.code if isinstance(stop.code, int) else 2
    except BrokenPipeError:  # --help into a closed pipe
        return _stdout_closed()
    run = {command.name: command.run for command in COMMANDS}[args.command]
    several = distributed.launched()  # torchrun started this process as one of several
    where = f" [rank {os.environ.get('RANK', '?')}]" if several else ""
    try:
        if several and args.command not in SHARDED:
            raise ValueError(f"only {', '.join(f'`scrub {c}`' for c in SHARDED)} shares its work across processes; "
                             f"start `scrub {args.command}` as one process (python -m scrub {args.command} ...), "
                             f"not under torchrun")
        code = run(args)
        sys.stdout.flush()  # a closed pipe shows here, not as a traceback at interpreter exit
        return code
    except BrokenPipeError:
        return _stdout_closed()
    except (ModelLoadError, SiteError, ValueError, OSError) as err:
        print(f"scrub {args.command}{where}: error: {err}", file=sys.stderr)
        return 2
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    raise SystemExit(main())

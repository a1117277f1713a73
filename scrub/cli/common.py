"""What every subcommand shares: the ``Command`` record, argument helpers, checks of numbers before the
model loads, model loading with TransformerLens' prints sent to stderr, progress bars and the JSON writer."""

from __future__ import annotations

import argparse
import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from scrub.errors import ScrubError
from scrub.jsonable import dumps
from scrub.model import SHIPPED_NAME

LOCK = ".scrub-lock"  # the file that marks an --out folder in use (``output.OutputFolder``)

if TYPE_CHECKING:
    import torch


class UsageError(ScrubError):
    """A command-line value out of range or inconsistent with another: names the option and the fix."""


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def quiet_load(name: str, device: str | torch.device = "cpu"):
    """``load_model`` onto ``device`` with TransformerLens' "Moving model to device" print sent to stderr."""
    from scrub.model.loading import load_model

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
            f"while the run writes ({LOCK}); the files an earlier `scrub {command}` wrote there are "
            f"replaced; a folder holding any other file (e.g. another command's figures) is refused unless "
            f"--overwrite"))
        parser.add_argument("--overwrite", action="store_true",
                            help="write into an --out folder that holds other files (they stay; scrub replaces only "
                                 "files of the names it writes)")
    else:
        parser.add_argument("--out", type=Path, default=Path(out), help=f"figure directory (default {out})")
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")


def add_html_argument(parser: argparse.ArgumentParser) -> None:
    """--html FILE: the results' interactive views as one self-contained page (``scrub.views``)."""
    parser.add_argument("--html", type=Path, default=None, metavar="FILE",
                        help="also write the results' interactive views to FILE, one self-contained HTML page "
                             "that opens from disk with no network")


def check_html(path: Path | None) -> None:
    """Refuse an --html path that cannot be a file, before any work."""
    if path is not None and (path.is_dir() or path.suffix.lower() not in (".html", ".htm")):
        raise UsageError(f"--html {path} must name an .html file (got "
                         f"{'a folder' if path.is_dir() else 'no .html suffix'}), e.g. --html out.html")


def dump_json(obj: dict) -> None:
    """Print ``obj`` as one line of strict JSON: NaN and infinities become null."""
    print(dumps(obj))


def check_number(value: int, name: str, low: int, why: str = "", high: int | None = None) -> int:
    """``value`` if ``low`` ≤ value (≤ ``high``), else ``UsageError`` naming the option and the range."""
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise UsageError(f"{name} must be {bound} (got {value}){': ' + why if why else ''}")
    return value


def check_seed(seed: int) -> int:
    """``--seed`` checked as ``scrub.run`` checks a seed (one rule, named as the option)."""
    from scrub.experiment.inputs import check_seed as check

    return check(seed, "--seed")


def check_data_memory(n: int, seq_len: int) -> None:
    """Refuse, before the model loads, ``n`` examples of ``seq_len`` tokens that cannot fit in memory (the
    batch is built in a few int64 copies)."""
    from scrub.memory import check_memory, token_bytes

    check_memory(token_bytes(n, seq_len), f"--n {n} examples of {seq_len} tokens",
                 "use a smaller --n or --seq-len")

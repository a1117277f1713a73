"""The ``scrub`` command line: one module per subcommand (``heads``, ``run``, ``patch``, ``study``), each a
``Command`` record registered in ``COMMANDS``; shared helpers in ``common``, output folders in ``output``.

Owns the error policy: bad input (a ``ScrubError``, an ``OSError`` such as a missing file, and argparse's
own errors) prints one line to stderr and exits 2; numbers are checked before the model loads wherever
they can be. Anything else is a bug in scrub: its traceback is shown with a line asking to report it, and
the exit code is 1. Ctrl-C prints "interrupted; nothing written" (output folders are written whole or not at
all) and exits 130; SIGTERM (``kill``) prints "terminated; nothing written" and exits 143; a run that kept
part of its work for a later one (``scrub study --resume``) says what instead. Progress bars go to stderr
only, so ``--json`` stdout is exactly one JSON object (non-finite numbers as ``null``). A reader that closes
the pipe early (``scrub heads | head``) ends the command quietly.

To add a subcommand, write a module with ``arguments(parser)`` and ``command(args) -> int`` and add a
``Command`` to ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import traceback

from scrub.cli import check, discover, heads, patch, run, study
from scrub.cli.common import Command, UsageError
from scrub.cli.output import PartlyKept
from scrub.errors import ScrubError

ISSUES = "https://github.com/scrub-interp/scrub/issues"

COMMANDS: tuple[Command, ...] = (
    Command("heads", "behavioral head scores (previous-token, prefix-matching, copying, ...)",
            heads.arguments, heads.command),
    Command("run", "scrub a hypothesis file: loss recovered with a bootstrap interval", run.arguments, run.command),
    Command("patch", "path patching: effect of every sender -> receiver (q/k/v) and head -> logits path",
            patch.arguments, patch.command),
    Command("study", "the induction-head study: hypotheses, loss recovered, context sensitivity, report",
            study.arguments, study.command),
    Command("discover", "circuit discovery: EAP-IG scores, exact greedy verification, a hypothesis file",
            discover.arguments, discover.command),
    Command("check", "property-test a hypothesis file on small data: its features and masks, its resampling, the "
                     "engine against the naive reference, batch-size independence", check.arguments, check.command),
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


class _Terminated(BaseException):
    """SIGTERM arrived: unwind like Ctrl-C (output folders restored, locks released), then exit 143."""


def _terminate(signum, frame):
    raise _Terminated()


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
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # argparse: --help (0) or a one-line usage error (2)
        return stop.code if isinstance(stop.code, int) else 2
    except BrokenPipeError:  # --help into a closed pipe
        return _stdout_closed()
    try:  # the first import of torch (scrub and its CLI load without it): seconds in which Ctrl-C may come
        from scrub.experiment import distributed
    except KeyboardInterrupt:
        print(f"scrub {args.command}: interrupted; nothing written", file=sys.stderr)
        return 130
    handler = {command.name: command.run for command in COMMANDS}[args.command]
    several = distributed.launched()  # torchrun started this process as one of several
    where = f" [rank {os.environ.get('RANK', '?')}]" if several else ""
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        if several and args.command not in SHARDED:
            raise UsageError(f"only {', '.join(f'`scrub {c}`' for c in SHARDED)} shares its work across processes; "
                             f"start `scrub {args.command}` as one process (python -m scrub {args.command} ...), "
                             f"not under torchrun")
        code = handler(args)
        sys.stdout.flush()  # a closed pipe shows here, not as a traceback at interpreter exit
        return code
    except BrokenPipeError:
        return _stdout_closed()
    except (KeyboardInterrupt, _Terminated, PartlyKept) as stop:  # Ctrl-C, SIGTERM: every output folder is
        cause = stop.__cause__ if isinstance(stop, PartlyKept) else stop  # written whole or not at all
        word, code = ("terminated", 143) if isinstance(cause, _Terminated) else ("interrupted", 130)
        what = stop.what if isinstance(stop, PartlyKept) else "nothing written"  # (``OutputFolder``)
        print(f"scrub {args.command}{where}: {word}; {what}", file=sys.stderr)
        return code
    except (ScrubError, OSError) as err:
        print(f"scrub {args.command}{where}: error: {err}", file=sys.stderr)
        return 2
    except Exception:  # not bad input: a bug in scrub, shown as one
        traceback.print_exc()
        print(f"scrub {args.command}{where}: internal error: this is a bug in scrub, not in your input; please "
              f"report it with the command line and the traceback above at {ISSUES}", file=sys.stderr)
        return 1
    finally:
        if main_thread and previous is not None:
            signal.signal(signal.SIGTERM, previous)
        distributed.shutdown()


if __name__ == "__main__":
    raise SystemExit(main())

"""The study's resume store (issue #21): each model's finished folder, kept beside the output folder while a
study of several models runs, so that ``scrub study --resume`` after a Ctrl-C or a failure reuses the models
already done instead of recomputing them.

The store is the hidden sibling ``.<out>.scrub-resume/`` of the output folder: one folder per finished model
(its results.json, report and figures, byte for byte as the run wrote them) and ``manifest.json``, which
records the study's configuration (``fingerprint``), the models kept and the scrub version and commit. Every
change is a rename (a temporary sibling, then one step), made with Ctrl-C held off: the store is either
absent or complete. It exists only once a model has finished, and a successful run removes it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scrub.cli.common import UsageError
from scrub.cli.output import SIGNALS, beside

SUFFIX = ".scrub-resume"  # the store: .<out>.scrub-resume beside the output folder
MANIFEST = "manifest.json"
FORMAT = 1  # of the manifest
FLAGS = {"quick": "--quick", "seed": "--seed", "window": "--window", "models": "--model"}  # fingerprint key -> flag


def store_path(root: Path) -> Path:
    """Where the store of output folder ``root`` lies (beside the folder itself, not a link to it)."""
    return beside(root, SUFFIX)


@contextmanager
def _held() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait while the store changes: it is never left half-written or half-removed."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def provenance() -> dict[str, str | None]:
    """The scrub version and, in a source checkout, its git commit (None where either is not known)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        release: str | None = version("scrub")
    except PackageNotFoundError:
        release = None
    try:
        commit: str | None = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, text=True,
                                            capture_output=True, timeout=5, check=True).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"scrub": release, "commit": commit}


@dataclass(frozen=True)
class ResumeStore:
    """The models a study run kept: ``path`` (the store), the run's ``fingerprint`` (its configuration) and
    ``kept`` (model folder -> model name, in the order they finished)."""

    path: Path
    fingerprint: dict[str, Any]
    kept: dict[str, str]

    @staticmethod
    def load(root: Path) -> "ResumeStore | None":
        """The store of output folder ``root``, or None if there is none. Call it with the folder locked:
        temporary siblings left by a killed run are removed first."""
        path = store_path(root)
        for stale in path.parent.glob(f"{path.name}-*"):  # a killed run's half-made store
            shutil.rmtree(stale, ignore_errors=True)
        return ResumeStore.read(root)

    @staticmethod
    def read(root: Path) -> "ResumeStore | None":
        """The store of output folder ``root`` as it is, or None if there is none."""
        path = store_path(root)
        try:
            manifest = json.loads((path / MANIFEST).read_text())
            kept = {str(k): str(v) for k, v in manifest["kept"].items() if (path / k / "results.json").is_file()}
            return ResumeStore(path, dict(manifest["fingerprint"]), kept)
        except FileNotFoundError:
            return None if not path.exists() else ResumeStore(path, {}, {})
        except (OSError, KeyError, ValueError, TypeError, AttributeError):
            return ResumeStore(path, {}, {})  # unreadable: matches no run (refused by --resume, replaced otherwise)

    def models(self, fingerprint: dict[str, Any]) -> list[str]:
        """The model folders kept for a run of configuration ``fingerprint`` (none for another one)."""
        return list(self.kept) if self.fingerprint == fingerprint else []

    def check(self, fingerprint: dict[str, Any]) -> None:
        """Refuse to resume a run whose configuration differs from the kept one: a ``UsageError`` naming each
        difference and the fix."""
        if not self.fingerprint:
            raise UsageError(f"--resume: the resume store {self.path} has no readable manifest; rerun without "
                             f"--resume (the whole study is computed again and the store replaced)")
        keys = sorted(set(self.fingerprint) | set(fingerprint))
        differ = [k for k in keys if self.fingerprint.get(k) != fingerprint.get(k)]
        if not differ:
            return
        what = "; ".join(f"{FLAGS.get(k, k)}: kept {_show(self.fingerprint.get(k))}, now {_show(fingerprint.get(k))}"
                         for k in differ)
        flags = [FLAGS[k] for k in differ if k in FLAGS]
        fix = (f"rerun with the kept run's {', '.join(flags)}, or without --resume to start over" if flags
               and len(flags) == len(differ) else "rerun without --resume to start over (the study's sizes or "
                                                  "scrub itself changed since the models were kept)")
        raise UsageError(f"--resume: the models kept in {self.path} come from another configuration ({what}); {fix}")

    def keep(self, finished: Path, name: str, fingerprint: dict[str, Any]) -> "ResumeStore":
        """This store with the finished model folder ``finished`` (of model ``name``) copied in. A store of
        another configuration (an earlier run, not resumed) is replaced by one of this model alone."""
        folder = finished.name
        kept = {**self.kept, folder: name} if self.fingerprint == fingerprint else {folder: name}
        manifest = json.dumps({"format": FORMAT, "fingerprint": fingerprint, "kept": kept, **provenance()},
                              indent=2) + "\n"
        temp = self.path.parent / f"{self.path.name}-{os.getpid()}"  # removed by ``load`` if the run is killed
        with _held():
            try:
                if kept.keys() == {folder}:  # a new store: made whole beside it, then renamed into place
                    shutil.copytree(finished, temp / folder)
                    (temp / MANIFEST).write_text(manifest)
                    shutil.rmtree(self.path, ignore_errors=True)
                    os.rename(temp, self.path)
                else:  # one more model: its folder renamed in, then the manifest replaced
                    shutil.rmtree(self.path / folder, ignore_errors=True)
                    shutil.copytree(finished, temp)
                    os.rename(temp, self.path / folder)
                    (self.path / f".{MANIFEST}-{os.getpid()}").write_text(manifest)
                    os.replace(self.path / f".{MANIFEST}-{os.getpid()}", self.path / MANIFEST)
            finally:
                shutil.rmtree(temp, ignore_errors=True)
        return ResumeStore(self.path, fingerprint, kept)

    def resume(self, folder: str, work: Path) -> dict:
        """Copy the kept model folder ``folder`` into ``work`` (the staged output folder) instead of computing
        it again, replacing what an earlier run left there, and say so; returns its results."""
        target = work / folder
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(self.path / folder, target)
        print(f"{folder}: resumed from {self.path}", file=sys.stderr)
        return json.loads((target / "results.json").read_text())

    def remove(self) -> None:
        with _held():
            shutil.rmtree(self.path, ignore_errors=True)


def open_store(root: Path, fingerprint: dict[str, Any], *, resume: bool, report_only: bool) -> ResumeStore:
    """The resume store a run into ``root`` adds to (the folder locked): with ``resume`` the kept one (refused
    if missing or of another configuration), else an empty one (an earlier run's is replaced when this run
    keeps its first model, and said so now)."""
    store = ResumeStore.load(root)
    if resume:
        if store is None:
            raise UsageError(f"--resume: no models kept for --out {root} ({store_path(root)} does not exist: no run "
                             f"into it was stopped after a model finished, or one has finished since); rerun "
                             f"without --resume")
        store.check(fingerprint)
        return store
    if store is not None and not report_only:
        print(f"scrub study: not resuming (no --resume): the {len(store.kept)} model(s) kept in {store.path} by "
              f"an earlier run are replaced by this run's", file=sys.stderr)
    return ResumeStore(store_path(root), {}, {})


def resume_line(args: argparse.Namespace) -> str:
    """The command that resumes the run of ``args`` (the study's own arguments)."""
    words = ["scrub", "study"] + (["--quick"] if args.quick else []) + ["--seed", str(args.seed)]
    words += [w for m in args.model or [] for w in ("--model", m)]
    words += ["--window", str(args.window)] if args.window is not None else []
    words += (["--out", args.out] if args.out is not None else []) + ["--resume"]
    return shlex.join(words)


def _show(value: Any) -> str:
    if isinstance(value, list):
        return " ".join(str(v) for v in value) or "none"
    return "absent" if value is None else str(value)

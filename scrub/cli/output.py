"""``OutputFolder``: the --out folder of one command's run, locked before any work and replaced only when the
run is complete (the run writes into a temporary sibling; an interrupted or failed run leaves the folder as
it was). Reusable by any command that writes a folder (heads, patch, study, discovery, views)."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path
from typing import Iterable, Self

from scrub.cli.common import LOCK, UsageError

PARTIAL = ".scrub-partial"  # suffix of the temporary sibling a run writes into
PREVIOUS = ".scrub-previous"  # suffix of the old folder for the instant between the two renames


class OutputFolder:
    """The --out folder of one command's run: checked, locked, written in a sibling, renamed into place.

    ``with OutputFolder(out, "heads", names) as folder:`` creates ``out`` if missing, checks it can be
    written, and takes its lock (``out/.scrub-lock`` holding the process id; a lock whose process no longer
    runs is taken over), so two runs never write one folder. The run writes every file under ``folder.work``
    (a sibling ``.<name>.scrub-partial-<pid>`` that starts as a copy of what ``out`` holds, less the files
    of ``names``: an earlier run's outputs are replaced, never mixed with this run's); when the block ends
    without an error, ``out`` is replaced by it in two renames (Ctrl-C held off meanwhile). On any error or
    Ctrl-C the sibling is removed and ``out`` is as it was. ``names``: the files this command writes (a
    folder holding any other file is refused unless ``overwrite``: those files then stay); None: the
    command owns the whole folder and every other file stays (the study, which clears its own stale files).
    """

    LOCK = LOCK

    def __init__(self, path: Path | str, command: str, names: Iterable[str] | None = None, *,
                 overwrite: bool = False):
        self.path, self.command, self.overwrite = Path(path), command, overwrite
        self.names = None if names is None else frozenset(names)
        self._real = Path(os.path.abspath(self.path))  # what is renamed: never "." or a path ending in ".."
        self.work = self._real.parent / f".{self._real.name}{PARTIAL}-{os.getpid()}"
        self._created = False

    def final(self, name: str | Path) -> Path:
        """Where ``name`` (a path relative to the folder) lies once the run is complete."""
        return self.path / name

    def __enter__(self) -> Self:
        self._check()
        self._lock()
        try:
            self._stage()
        except BaseException:
            self._release()
            raise
        return self

    def _check(self) -> None:
        """Refuse a file, a live lock, or (with ``names``) other files without --overwrite."""
        path, lock = self.path, self.path / self.LOCK
        if path.exists() and not path.is_dir():
            raise UsageError(f"--out {path} is a file, not a folder; choose a folder")
        cwd = Path.cwd()
        if self._real == self._real.parent or self._real == cwd or self._real in cwd.parents:
            raise UsageError(f"--out {path} is the current folder or holds it, and a run replaces its --out folder "
                             f"whole; choose a folder of its own (e.g. --out {path}/figures)")
        if lock.exists() and self._lock_is_live(lock):
            raise UsageError(f"--out {path} is in use by another scrub run ({lock} exists); wait for it to finish, "
                             f"or delete {lock} if no run is writing there")
        if self.names is None or not path.is_dir():
            return
        others = sorted(p.name for p in path.iterdir() if p.name not in self.names | {self.LOCK})
        if others and not self.overwrite:
            raise UsageError(f"--out {path} already holds {len(others)} file(s) that `scrub {self.command}` does not "
                             f"write (e.g. {others[0]!r}: another run's outputs?); choose a new or empty folder, or "
                             f"pass --overwrite to write there anyway")

    def _lock(self) -> None:
        """Create the folder if missing and the lock file in it (O_EXCL: one winner)."""
        path, lock = self.path, self.path / self.LOCK
        try:
            self._created = not path.exists()
            path.mkdir(parents=True, exist_ok=True)
            lock.unlink(missing_ok=True)  # a stale lock (its process is gone): checked in _check
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            os.write(fd, f"{os.getpid()}\n".encode())
            os.close(fd)
        except FileExistsError:
            raise UsageError(f"--out {path} is in use by another scrub run ({lock} exists)") from None
        except OSError as err:
            self._remove_created()
            raise OSError(f"cannot write to --out {path}: {err.strerror or err}; "
                          f"choose a folder you can write") from None

    def _stage(self) -> None:
        """The sibling the run writes into: a copy of the folder's files less this command's own outputs."""
        shutil.rmtree(self.work, ignore_errors=True)  # left by an earlier process of this id
        skip = {self.LOCK} | (self.names or frozenset())
        try:
            shutil.copytree(self._real, self.work, ignore=lambda folder, entries: [
                e for e in entries if Path(folder) == self._real and e in skip])
        except OSError as err:
            shutil.rmtree(self.work, ignore_errors=True)
            raise OSError(f"cannot write next to --out {self.path} (a run writes into {self.work.name} first and "
                          f"renames it into place when complete): {err}; choose a folder you can write") from None

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

    def _commit(self) -> None:
        """Put the complete run in place: old folder aside, sibling in, old folder removed; Ctrl-C waits."""
        previous = self._real.parent / f".{self._real.name}{PREVIOUS}-{os.getpid()}"
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            os.rename(self._real, previous)
            try:
                os.rename(self.work, self._real)
            except OSError:
                os.rename(previous, self._real)
                raise
            shutil.rmtree(previous, ignore_errors=True)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    def __exit__(self, kind, err, tb) -> None:
        try:
            if kind is None:
                self._commit()
        finally:
            self._release()

    def _release(self) -> None:
        """Remove the sibling (if not renamed into place), the lock, and a folder this run made and left empty."""
        shutil.rmtree(self.work, ignore_errors=True)
        (self.path / self.LOCK).unlink(missing_ok=True)
        self._remove_created()

    def _remove_created(self) -> None:
        if self._created and self.path.is_dir() and not any(self.path.iterdir()):
            self.path.rmdir()

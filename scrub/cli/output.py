"""``OutputFolder``: the --out folder of one command's run, prepared and locked before any work."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Self

from scrub.cli.common import LOCK, UsageError


class OutputFolder:
    """The --out folder of one command's run, prepared before any work.

    Policy: the folder is created if missing and checked for writing at once, by creating a lock file in it
    (``.scrub-lock``, holding the process id; removed at the end), so two runs never write one folder at the
    same time (a lock left by a process that no longer runs is taken over). The folder may already hold
    files the run is about to write (an earlier run of the same command): they are deleted first, so figures
    of two runs never mix. A folder holding any other file is refused, unless ``overwrite``: then the run's
    files replace those of the same names and other files stay (scrub deletes only what it writes)."""

    LOCK = LOCK

    def __init__(self, path: Path, command: str, names: Iterable[str], *, overwrite: bool = False):
        self.path, self.command, self.names, self.overwrite = Path(path), command, set(names), overwrite
        self._created = False

    def __enter__(self) -> Self:
        path, lock = self.path, self.path / self.LOCK
        if path.exists() and not path.is_dir():
            raise UsageError(f"--out {path} is a file, not a folder; choose a folder")
        if lock.exists() and self._lock_is_live(lock):
            raise UsageError(f"--out {path} is in use by another scrub run ({lock} exists); wait for it to finish, "
                             f"or delete {lock} if no run is writing there")
        others = (sorted(p.name for p in path.iterdir() if p.name not in self.names | {self.LOCK})
                  if path.is_dir() else [])
        if others and not self.overwrite:
            raise UsageError(f"--out {path} already holds {len(others)} file(s) that `scrub {self.command}` does not "
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
            raise UsageError(f"--out {path} is in use by another scrub run ({lock} exists)") from None
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

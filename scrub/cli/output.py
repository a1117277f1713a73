"""``OutputFolder``: the --out folder of one command's run, locked before any work and replaced only when the
run is complete (the run writes into a temporary sibling; an interrupted or failed run leaves the folder as
it was). Reusable by any command that writes a folder (heads, patch, study, discovery, views)."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import shutil
import signal
from pathlib import Path
from typing import Iterable, Self

from scrub.cli.common import LOCK, UsageError

PARTIAL = ".scrub-partial"  # suffix of the temporary sibling a run writes into
PREVIOUS = ".scrub-previous"  # suffix of the old folder between two renames (where an atomic swap is missing)
SIGNALS = {signal.SIGINT, signal.SIGTERM}  # held off while the folder is swapped and the sibling removed


def beside(folder: Path | str, suffix: str) -> Path:
    """The hidden sibling ``.<name><suffix>`` of ``folder`` (of the real folder, not of a link to it): where a
    run keeps what belongs to the folder but must survive its replacement (staging copies, resume state)."""
    real = Path(os.path.realpath(folder))
    return real.parent / f".{real.name}{suffix}"


class PartlyKept(BaseException):
    """A run stopped (Ctrl-C, SIGTERM: its ``__cause__``) after part of its work was kept for a later run (the
    study's ``--resume``): ``what`` replaces "nothing written" in the command's one stderr line."""

    def __init__(self, what: str):
        super().__init__(what)
        self.what = what


class OutputFolder:
    """The --out folder of one command's run: checked, locked, written in a sibling, swapped into place.

    ``with OutputFolder(out, "heads", names) as folder:`` creates ``out`` if missing, checks it can be
    written, and takes its lock (``out/.scrub-lock``, flock-ed and holding the process id; a lock no running
    process holds is taken over), so two runs never write one folder. The run writes every file under
    ``folder.work`` (a sibling ``.<name>.scrub-partial-<pid>`` that starts as a copy of what ``out`` holds,
    less the files of ``names``: an earlier run's outputs are replaced, never mixed with this run's); when
    the block ends without an error, the sibling and ``out`` are swapped in one step (Ctrl-C held off). On
    any error or Ctrl-C the sibling is removed and ``out`` is as it was. ``names``: the files this command
    writes (a folder holding any other file is refused unless ``overwrite``: those files then stay); None:
    the command owns the whole folder and every other file stays (the study, which clears its own stale
    files). ``files``: single files written beside the folder (e.g. --html), checked before any work and
    written through ``folder.staged(path)``: renamed into place with the folder, never half-written.
    """

    LOCK = LOCK

    def __init__(self, path: Path | str, command: str, names: Iterable[str] | None = None, *,
                 overwrite: bool = False, files: Iterable[Path | str | None] = ()):
        self.path, self.command, self.overwrite = Path(path), command, overwrite
        self._real = Path(os.path.realpath(self.path))  # what is swapped: never ".", "..", or a symlink to it
        self.work = beside(self._real, f"{PARTIAL}-{os.getpid()}")
        self.files = tuple(Path(f) for f in files if f is not None)
        inside = [self._inside(f) for f in self.files]
        self.names = None if names is None else frozenset(names) | {r.parts[0] for r in inside if r is not None}
        self._created = False
        self._fd: int | None = None  # the lock file, flock-ed while the run holds it

    def final(self, name: str | Path) -> Path:
        """Where ``name`` (a path relative to the folder) lies once the run is complete."""
        return self.path / name

    def staged(self, file: Path | str) -> Path:
        """Where the run writes ``file`` (one of ``files``): inside ``work`` if it lies in the folder, else a
        temporary sibling of it; either is in place only once the run is complete."""
        file = Path(file)
        inside = self._inside(file)
        return self.work / inside if inside is not None else self._temp(file)

    def _inside(self, file: Path) -> Path | None:
        """``file`` relative to the folder, or None where it lies outside."""
        absolute = Path(os.path.realpath(file))
        return absolute.relative_to(self._real) if absolute.is_relative_to(self._real) else None

    @staticmethod
    def _temp(file: Path) -> Path:
        absolute = Path(os.path.abspath(file))
        return absolute.parent / f".{absolute.name}{PARTIAL}-{os.getpid()}"

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
        """Refuse a file, the current folder, files that cannot be written, or (with ``names``) other files
        without --overwrite."""
        path = self.path
        if path.exists() and not path.is_dir():
            raise UsageError(f"--out {path} is a file, not a folder; choose a folder")
        cwd = Path.cwd()
        if self._real == self._real.parent or self._real == cwd or self._real in cwd.parents:
            raise UsageError(f"--out {path} is the current folder or holds it, and a run replaces its --out folder "
                             f"whole; choose a folder of its own (e.g. --out {path}/figures)")
        for file in self.files:
            _check_writable_file(file)
        if _live(self._holder()):
            raise self._busy()
        if self.names is None or not path.is_dir():
            return
        others = sorted(p.name for p in path.iterdir() if p.name not in self.names | {self.LOCK})
        if others and not self.overwrite:
            raise UsageError(f"--out {path} already holds {len(others)} file(s) that `scrub {self.command}` does not "
                             f"write (e.g. {others[0]!r}: another run's outputs?); choose a new or empty folder, or "
                             f"pass --overwrite to write there anyway")

    def _busy(self) -> UsageError:
        lock = self.path / self.LOCK
        return UsageError(f"--out {self.path} is in use by another scrub run ({lock} exists); wait for it to finish, "
                          f"or delete {lock} if no run is writing there")

    def _lock(self) -> None:
        """Create the folder if missing and take its lock: an flock on the lock file (released by the kernel
        if the process dies), which then holds this process id."""
        path, lock = self.path, self.path / self.LOCK
        try:
            self._created = not path.exists()
            path.mkdir(parents=True, exist_ok=True)
            for _ in range(100):  # another run may unlink the file between our open and our flock: open again
                fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    raise self._busy() from None
                if _same_file(fd, lock):
                    break
                os.close(fd)
            else:
                raise self._busy()
            if _live(_pid(os.pread(fd, 64, 0))):  # written by a live process that does not flock (an older scrub)
                os.close(fd)
                raise self._busy()
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            self._fd = fd
        except UsageError:
            self._remove_created()
            raise
        except OSError as err:
            self._remove_created()
            raise OSError(f"cannot write to --out {path}: {err.strerror or err}; "
                          f"choose a folder you can write") from None

    def _stage(self) -> None:
        """The sibling the run writes into: a copy of the folder's files less this command's own outputs.
        Siblings left by runs that were killed (SIGKILL, power loss) are removed first: the lock is ours."""
        for stale in self._real.parent.iterdir():
            if stale.name.startswith(f".{self._real.name}{PARTIAL}-"):
                shutil.rmtree(stale, ignore_errors=True)
        skip = {self.LOCK} | (self.names or frozenset())
        try:
            shutil.copytree(self._real, self.work, ignore=lambda folder, entries: [
                e for e in entries if Path(folder) == self._real and e in skip])
            for file in self.files:
                self.staged(file).parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            shutil.rmtree(self.work, ignore_errors=True)
            raise OSError(f"cannot write next to --out {self.path} (a run writes into {self.work.name} first and "
                          f"renames it into place when complete): {err}; choose a folder you can write") from None

    def _holder(self) -> int | None:
        """The process id written in the lock file, if any (the flock in ``_lock`` is what decides)."""
        try:
            return _pid((self.path / self.LOCK).read_bytes()[:64])
        except OSError:
            return None

    def _commit(self) -> None:
        """Put the complete run in place: the sibling and the folder swapped in one step (two renames where
        the file system cannot), the old folder removed, the staged files renamed; Ctrl-C waits."""
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        try:
            try:  # the lock enters with the new folder, so the folder is never unlocked while swapped
                os.link(self.path / self.LOCK, self.work / self.LOCK)
            except OSError:
                pass
            if _exchange(self.work, self._real):
                old = self.work
            else:
                old = beside(self._real, f"{PREVIOUS}-{os.getpid()}")
                os.rename(self._real, old)
                try:
                    os.rename(self.work, self._real)
                except OSError:
                    os.rename(old, self._real)
                    raise
            shutil.rmtree(old, ignore_errors=True)
            for file in self.files:
                if self._inside(file) is None:
                    os.replace(self._temp(file), file)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    def __exit__(self, kind, err, tb) -> None:
        try:
            if kind is None:
                self._commit()
        finally:
            self._release()

    def _release(self) -> None:
        """Remove the sibling and staged files (if not renamed into place), this run's lock, and a folder this
        run made and left empty; Ctrl-C waits, so that nothing is left half-removed."""
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        try:
            shutil.rmtree(self.work, ignore_errors=True)
            for file in self.files:
                if self._inside(file) is None:
                    self._temp(file).unlink(missing_ok=True)
            if self._fd is not None:
                lock = self.path / self.LOCK
                if _same_file(self._fd, lock):  # never another run's lock
                    lock.unlink(missing_ok=True)
                os.close(self._fd)
                self._fd = None
            self._remove_created()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    def _remove_created(self) -> None:
        if self._created and self.path.is_dir() and not any(self.path.iterdir()):
            self.path.rmdir()


def _check_writable_file(file: Path) -> None:
    """Refuse a file path (e.g. --html) that cannot be written, before any work: a folder, or one whose
    nearest existing parent is a file or cannot be written."""
    if file.is_dir():
        raise UsageError(f"{file} is a folder; name a file")
    parent = Path(os.path.abspath(file)).parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OSError(f"cannot write {file}: {parent} is a file, not a folder; choose a path you can write")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OSError(f"cannot write {file}: {parent} is not writable; choose a path you can write")


def _same_file(fd: int, path: Path) -> bool:
    """Whether the open file ``fd`` is still the file at ``path`` (not unlinked or replaced meanwhile)."""
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _pid(text: bytes) -> int | None:
    try:
        return int(text.split()[0])
    except (ValueError, IndexError):
        return None


def _live(pid: int | None) -> bool:
    """Whether process ``pid`` runs (None: no process)."""
    if pid is None or pid <= 0:
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True


_RENAME_EXCHANGE, _AT_FDCWD = 2, -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap the paths ``a`` and ``b`` in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the
    system or file system has no such call (the caller then renames twice)."""
    try:
        call = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    call.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if call(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))

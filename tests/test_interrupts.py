"""Issue #21: an interrupted or failed run leaves every earlier output as it was. Real subprocesses get SIGINT
mid-run; the output folder is compared byte for byte with its state before; Ctrl-C prints one line and exits
130. Two runs never share a folder, and an unwritable --out is refused before any work."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scrub.cli import main
from tests.helpers import save_tiny_checkpoint

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("interrupts") / "ckpt")


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (names relative to it) with its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def at_a_terminal() -> None:
    """In the child: SIGINT as a terminal's Ctrl-C finds it. A suite started in the background (``pytest &``)
    ignores SIGINT, the child inherits that, and Python then never raises KeyboardInterrupt: the run would finish."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt(argv: list[str], out: Path, *, after: float, sig: int = signal.SIGINT) -> subprocess.CompletedProcess:
    """Start ``python -m scrub argv``, wait until it writes its partial sibling of ``out``, let it run ``after``
    seconds more, send ``sig`` (SIGINT: Ctrl-C) and return the finished process."""
    proc = subprocess.Popen([sys.executable, "-m", "scrub", *argv], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=at_a_terminal)
    deadline = time.time() + 240
    while not any(out.parent.glob(f".{out.name}.scrub-partial-*")):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "the run never started writing"
        time.sleep(0.05)
    time.sleep(after)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def assert_interrupted(done: subprocess.CompletedProcess, command: str, word: str = "interrupted",
                       code: int = 130) -> None:
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in re.split(r"[\r\n]", done.stderr) if word in line]
    assert len(lines) == 1, done.stderr  # after a progress bar's last update, or alone
    assert lines[0].endswith(f"scrub {command}: {word}; nothing written"), done.stderr


def assert_left_as_before(out: Path, before: dict[str, bytes]) -> None:
    assert snapshot(out) == before
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]  # no sibling left
    assert not (out / ".scrub-lock").exists()


def test_ctrl_c_during_heads_leaves_the_earlier_figures(ckpt, tmp_path, capsys):
    out = tmp_path / "figs"
    assert main(["heads", "--model", str(ckpt), "--n", "2", "--out", str(out), "--json"]) == 0
    capsys.readouterr()
    before = snapshot(out)
    assert len(before) == 5
    done = interrupt(["heads", "--model", str(ckpt), "--n", "512", "--seed", "1", "--out", str(out)], out, after=0.3)
    assert_interrupted(done, "heads")
    assert_left_as_before(out, before)


def test_ctrl_c_during_the_study_leaves_the_earlier_study(ckpt, tmp_path):
    out = tmp_path / "study"
    (out / "ckpt").mkdir(parents=True)
    for name in ("results.json", "induction_study.md", "heads_copying.png", "graph_induction_minimal.png"):
        (out / "ckpt" / name).write_bytes(os.urandom(64))  # an earlier study's outputs (their bytes are what count)
    (out / "induction_study.md").write_text("the earlier cross-model report\n")
    before = snapshot(out)
    done = interrupt(["study", "--quick", "--model", str(ckpt), "--out", str(out)], out, after=1)
    assert_interrupted(done, "study")
    assert_left_as_before(out, before)


def test_a_failure_mid_run_leaves_the_earlier_figures(ckpt, tmp_path, capsys, monkeypatch):
    import scrub.views.plots as plots

    out = tmp_path / "figs"
    assert main(["heads", "--model", str(ckpt), "--n", "2", "--out", str(out)]) == 0
    capsys.readouterr()
    before = snapshot(out)
    real, calls = plots.head_heatmap, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(plots, "head_heatmap", failing)
    assert main(["heads", "--model", str(ckpt), "--n", "2", "--seed", "1", "--out", str(out)]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert_left_as_before(out, before)


def no_model(monkeypatch):
    """Fail the test if the command loads a model (it should have refused before any work)."""
    import scrub.model.loading as loading

    def load(*args, **kwargs):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(loading, "load_model", load)


@pytest.mark.parametrize("command", [["study", "--quick"], ["heads", "--overwrite"], ["patch", "--overwrite"]])
def test_a_folder_in_use_is_refused_before_any_work(ckpt, tmp_path, capsys, monkeypatch, command):
    out = tmp_path / "busy"
    out.mkdir()
    (out / ".scrub-lock").write_text(f"{os.getpid()}\n")  # a live run holds it
    no_model(monkeypatch)
    code = main([*command, "--model", str(ckpt), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert re.search(r"--out .*busy is in use by another scrub run", err), err


@pytest.mark.parametrize("command", [["study", "--quick"], ["heads"], ["patch"]])
def test_an_unwritable_out_is_refused_before_any_work(ckpt, tmp_path, capsys, monkeypatch, command):
    (tmp_path / "afile").write_text("a file, not a folder\n")
    no_model(monkeypatch)
    code = main([*command, "--model", str(ckpt), "--out", str(tmp_path / "afile" / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert "cannot write to --out" in err, err


def test_the_current_folder_is_refused_as_out(ckpt, tmp_path, capsys, monkeypatch):
    (tmp_path / "keep.txt").write_text("mine\n")
    monkeypatch.chdir(tmp_path)
    no_model(monkeypatch)
    for out in (".", str(tmp_path), ".."):
        assert main(["heads", "--model", str(ckpt), "--out", out, "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert "is the current folder or holds it" in err and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


# --- round 2: kill, SIGTERM, killed runs' leftovers, locks held by flock, staged --html ------------------------

def test_sigterm_during_heads_leaves_the_earlier_figures_and_page(ckpt, tmp_path, capsys):
    out, page = tmp_path / "figs", tmp_path / "pages" / "heads.html"
    assert main(["heads", "--model", str(ckpt), "--n", "2", "--out", str(out), "--html", str(page)]) == 0
    capsys.readouterr()
    before, page_before = snapshot(out), page.read_bytes()
    done = interrupt(["heads", "--model", str(ckpt), "--n", "512", "--seed", "1", "--out", str(out), "--html",
                      str(page)], out, after=0.3, sig=signal.SIGTERM)
    assert_interrupted(done, "heads", "terminated", 143)
    assert_left_as_before(out, before)
    assert page.read_bytes() == page_before and sorted(p.name for p in page.parent.iterdir()) == ["heads.html"]


def _dead_pid() -> str:
    return subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout


def _killed_run(out: Path) -> None:
    """What a run killed by SIGKILL (or a power cut) leaves: its lock and its half-written sibling."""
    (out / ".scrub-lock").write_text(_dead_pid())
    partial = out.parent / f".{out.name}.scrub-partial-{_dead_pid().strip()}"
    partial.mkdir()
    (partial / "copying.png").write_bytes(b"half a figure")


def _flocked(out: Path) -> None:
    """A lock file held (flock) by a running process although its text names a process that has ended."""
    import fcntl

    fd = os.open(out / ".scrub-lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, _dead_pid().encode())  # (closed at the end of the test process)


HEADS = ["heads", "--n", "2"]
FOLDER_CASES = [  # (id, prepare(out), extra argv, exit code, regex of the error line or None)
    ("a killed run's lock and sibling are cleared", _killed_run, [], 0, None),
    ("a lock held by flock is in use, whatever its text", _flocked, [], 2,
     r"--out .*figs is in use by another scrub run"),
    ("--html under a file is refused before any work", lambda out: None, ["--html", "{tmp}/afile/page.html"], 2,
     r"cannot write .*afile/page.html: .*afile is a file, not a folder"),
    ("--html inside --out, twice", lambda out: None, ["--html", "{out}/page.html"], 0, None),
    ("--out a link to the folder", lambda out: None, ["--out", "{tmp}/link"], 0, None),
]


@pytest.mark.parametrize("prepare, extra, code, pattern", [c[1:] for c in FOLDER_CASES],
                         ids=[c[0] for c in FOLDER_CASES])
def test_output_folder_states(ckpt, tmp_path, capsys, monkeypatch, prepare, extra, code, pattern):
    out = tmp_path / "figs"
    out.mkdir()
    (tmp_path / "afile").write_text("a file, not a folder\n")
    (tmp_path / "link").symlink_to(out)  # written through: the link stays a link
    prepare(out)
    if code == 2:
        no_model(monkeypatch)
    argv = [*HEADS, "--model", str(ckpt), "--out", str(out), *[a.format(tmp=tmp_path, out=out) for a in extra]]
    for _ in range(2 if "{out}" in " ".join(extra) else 1):
        assert main(argv) == code
        err = capsys.readouterr().err
        assert "Traceback" not in err, err
        if pattern:
            assert re.search(pattern, err) and len([x for x in err.splitlines() if ": error: " in x]) == 1, err
    if code == 0:
        assert not [p.name for p in tmp_path.iterdir() if p.name.startswith((".figs.", ".link."))]  # no sibling
        assert not (out / ".scrub-lock").exists()
        assert snapshot(out)["copying.png"] != b"half a figure"
    if "{out}" in " ".join(extra):
        assert (out / "page.html").read_text().startswith("<!DOCTYPE html>")
    assert (tmp_path / "link").is_symlink()


def test_two_folders_swap_in_one_step(tmp_path):
    from scrub.cli.output import _exchange

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x").write_text("a")
    (tmp_path / "b" / "y").write_text("b")
    if not _exchange(tmp_path / "a", tmp_path / "b"):
        pytest.skip("no renameat2(RENAME_EXCHANGE) here: OutputFolder renames twice")
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["y"]
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["x"]


def test_a_folder_stays_locked_while_it_is_swapped(tmp_path):
    """The lock enters the new folder with it: another run is refused until this one has released it."""
    from scrub.cli.output import OutputFolder

    out = tmp_path / "figs"
    first = OutputFolder(out, "heads", ["a.png"])
    with first:
        (first.work / "a.png").write_bytes(b"new")
        real = first._commit

        def commit():
            real()
            with pytest.raises(Exception, match="in use by another scrub run"):
                OutputFolder(out, "heads", ["a.png"]).__enter__()
        first._commit = commit
    assert (out / "a.png").read_bytes() == b"new" and not (out / ".scrub-lock").exists()
    with OutputFolder(out, "heads", ["a.png"]):  # free again
        pass


def test_the_command_line_loads_without_torch():
    """``scrub`` and its CLI load in well under a second without torch (its names load on first use), so the
    seconds that torch takes to import fall inside the command, where Ctrl-C is reported in one line."""
    code = ("import sys, scrub, scrub.cli, scrub.model; "
            "print(sorted(m for m in ('torch', 'transformer_lens') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_ctrl_c_while_torch_loads_prints_one_line(monkeypatch, capsys):
    """Ctrl-C during the first import of the engine: one line and 130, no traceback."""
    import importlib.abc

    class CtrlC(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "scrub.experiment":
                raise KeyboardInterrupt
            return None

    for name in [m for m in sys.modules if m == "scrub.experiment" or m.startswith("scrub.experiment.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [CtrlC(), *sys.meta_path])
    assert main(["heads", "--n", "2"]) == 130
    err = capsys.readouterr().err
    assert err == "scrub heads: interrupted; nothing written\n"

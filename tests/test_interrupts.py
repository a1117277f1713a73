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


def interrupt(argv: list[str], out: Path, *, after: float) -> subprocess.CompletedProcess:
    """Start ``python -m scrub argv``, wait until it writes its partial sibling of ``out``, let it run ``after``
    seconds more, send SIGINT and return the finished process."""
    proc = subprocess.Popen([sys.executable, "-m", "scrub", *argv], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not any(out.parent.glob(f".{out.name}.scrub-partial-*")):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "the run never started writing"
        time.sleep(0.05)
    time.sleep(after)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def assert_interrupted(done: subprocess.CompletedProcess, command: str) -> None:
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in re.split(r"[\r\n]", done.stderr) if "interrupted" in line]
    assert len(lines) == 1, done.stderr  # after a progress bar's last update, or alone
    assert lines[0].endswith(f"scrub {command}: interrupted; nothing written"), done.stderr


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

"""``scrub study`` from a built wheel, not the checkout (issue #16): the wheel ships the ``experiments`` and
``hypotheses`` packages (without the committed results), and the command imports the study from there.

The sources are copied to a temporary folder first so that building leaves nothing (build/, egg-info) in the
checkout; the wheel is installed with ``pip install --target`` and put first on PYTHONPATH, and everything runs
from a folder outside the checkout. About 30 s (two Python processes that import torch)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "scrub", "experiments", "hypotheses")
SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", "results", "*.egg-info", "build")

CHECK = """
import sys
from pathlib import Path
import experiments.induction_study as study, hypotheses._build, scrub
site = Path(sys.argv[1]).resolve()
for module in (study, hypotheses._build, scrub):
    assert Path(module.__file__).resolve().is_relative_to(site), module.__file__
assert study.default_out(False) == Path.cwd() / "scrub-output" / "study", study.default_out(False)
assert study.default_out(True) == Path.cwd() / "scrub-output" / "study" / "quick"
print("ok", Path(study.__file__).relative_to(site))
"""


def run(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, f"{' '.join(args)}\n{done.stdout}\n{done.stderr}"
    return done


def test_scrub_study_runs_from_an_installed_wheel(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=SKIP)
        else:
            shutil.copy2(path, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)], cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("scrub-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "experiments/induction_study.py" in names and "hypotheses/induction_minimal.py" in names
    assert "hypotheses/_build.py" in names and "scrub/cli/study.py" in names
    assert not [n for n in names if n.startswith("experiments/results/")]  # the committed results stay home
    site = tmp_path / "site"
    run([*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)], cwd=tmp_path)

    elsewhere = tmp_path / "elsewhere"  # a folder outside the checkout, so nothing resolves from the cwd
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    help_text = run([sys.executable, "-m", "scrub", "study", "--help"], cwd=elsewhere, env=env).stdout
    assert "--report-only" in help_text and "scrub-output/study" in help_text
    assert "ok experiments/induction_study.py" in run([sys.executable, "-c", CHECK, str(site)], cwd=elsewhere,
                                                     env=env).stdout


def test_scrub_study_without_the_study_package_is_a_clear_error(monkeypatch, capsys):
    """An install without ``experiments`` (or a folder of that name shadowing it): exit 2, one line naming it."""
    import scrub.cli.study as study
    from scrub.cli import main

    monkeypatch.setattr(study, "STUDY", "experiments.no_such_study")
    assert main(["study", "--quick"]) == 2
    err = capsys.readouterr().err
    assert "experiments.no_such_study module, which is not importable here" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1

"""Issue #21: an interrupted study of several models keeps the models it finished, and ``scrub study --resume``
reuses them. A real subprocess of a quick study of two tiny checkpoints gets Ctrl-C once the first model is
kept; the resumed run copies that model byte for byte instead of computing it, computes the second, and
ends with the folder a straight run writes (less its dates and seconds). A store of another configuration,
and ``--resume`` with no store, are refused before any work."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from transformer_lens import HookedTransformer, HookedTransformerConfig

from scrub.cli import main
from scrub.model.loading import save_checkpoint
from tests.test_interrupts import REPO, at_a_terminal, no_model, snapshot

TIMED = ("elapsed_s", "timings_s", "generated")  # what two runs of one configuration write differently
STAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC|\b\d+ s\b|stage: [^.]*\.")  # dates, seconds, stage timings


def tiny_checkpoint(directory: Path, seed: int) -> Path:
    """A random-init 2-layer checkpoint with the shipped vocabulary (``tests.helpers.save_tiny_checkpoint``,
    with a seed: the two models of the study differ)."""
    cfg = HookedTransformerConfig(n_layers=2, n_heads=4, d_model=32, d_head=8, n_ctx=64, d_vocab=2048,
                                  attn_only=True, act_fn="gelu", seed=seed, normalization_type="LN",
                                  positional_embedding_type="shortformer")
    save_checkpoint(HookedTransformer(cfg), directory)
    return directory


def store_of(out: Path) -> Path:
    return out.parent / f".{out.name}.scrub-resume"


def siblings(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def comparable(files: dict[str, bytes]) -> dict[str, object]:
    """A study folder less what differs between two runs of one configuration: the timings and dates in
    results.json, the dates and seconds in the reports."""
    def clean(name: str, data: bytes) -> object:
        if name.endswith("results.json"):
            res = json.loads(data)
            res["model"].pop("torch_threads")  # the threads the machine's load left free
            return {k: v for k, v in res.items() if k not in TIMED}
        return STAMP.sub("#", data.decode()) if name.endswith(".md") else data
    return {name: clean(name, data) for name, data in files.items()}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("resume")
    return [str(tiny_checkpoint(root / name, seed)) for name, seed in (("A", 0), ("B", 1))]


def study(models: list[str], out: Path, *extra: str) -> list[str]:
    return ["study", "--quick", *[w for m in models for w in ("--model", m)], "--out", str(out), *extra]


@pytest.fixture(scope="module")
def interrupted(models, tmp_path_factory):
    """Ctrl-C once the first model is kept: (out, the run's stderr, the store's files then)."""
    out = tmp_path_factory.mktemp("stopped") / "out"
    proc = subprocess.Popen([sys.executable, "-m", "scrub", *study(models, out)], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=at_a_terminal)
    deadline = time.time() + 240
    while not (store_of(out) / "manifest.json").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "the first model was never kept"
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    return out, stderr, snapshot(store_of(out))


def test_ctrl_c_keeps_the_finished_model_and_says_so(models, interrupted):
    out, stderr, kept = interrupted
    assert "Traceback" not in stderr, stderr
    lines = [line for line in re.split(r"[\r\n]", stderr) if "interrupted" in line]
    assert len(lines) == 1, stderr
    assert lines[0].endswith(f"scrub study: interrupted; 1 of 2 models kept for --resume (scrub study --quick "
                             f"--seed 0 --model {models[0]} --model {models[1]} --out {out} --resume)"), stderr
    assert not out.exists()  # the output folder is written whole or not at all
    assert siblings(out) == [store_of(out).name]
    manifest = json.loads(kept.pop("manifest.json"))
    assert manifest["kept"] == {"A": models[0]} and manifest["fingerprint"]["models"] == models
    assert manifest["fingerprint"]["seed"] == 0 and manifest["fingerprint"]["quick"] is True
    assert {name.split("/")[0] for name in kept} == {"A"} and "A/results.json" in kept
    assert json.loads(kept["A/results.json"])["config"]["model"] == models[0]


@pytest.mark.parametrize("flags, named", [(["--seed", "1"], "--seed: kept 0, now 1"),
                                          (["--window", "4"], "--window: kept 8, now 4"),
                                          (["--drop-b"], "--model: kept ")])
def test_a_store_of_another_configuration_is_refused_before_any_work(models, interrupted, tmp_path, capsys,
                                                                     monkeypatch, flags, named):
    out = tmp_path / "out"
    shutil.copytree(store_of(interrupted[0]), store_of(out))
    before = snapshot(store_of(out))
    no_model(monkeypatch)
    chosen = models[:1] if flags == ["--drop-b"] else models
    code = main(study(chosen, out, "--resume", *[f for f in flags if f != "--drop-b"]))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and named in errors[0], err
    assert "come from another configuration" in errors[0] and "without --resume to start over" in errors[0], err
    assert snapshot(store_of(out)) == before and not out.exists()  # the store is kept for the right command


def test_resume_without_a_store_is_refused(models, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    no_model(monkeypatch)
    assert main(study(models, out, "--resume")) == 2
    err = capsys.readouterr().err
    assert re.search(r"scrub study: error: --resume: no models kept for --out .*out .*rerun without --resume", err)
    assert not out.exists() and siblings(out) == []


@pytest.fixture(scope="module")
def straight(models, interrupted, tmp_path_factory):
    """A run of the same configuration without --resume, beside a copy of the kept store (which it replaces
    and removes): (out, stderr)."""
    out = tmp_path_factory.mktemp("straight") / "out"
    shutil.copytree(store_of(interrupted[0]), store_of(out))
    code, err = run_in_process(study(models, out))
    assert code == 0, err
    return out, err


def run_in_process(argv: list[str]) -> tuple[int, str]:
    import contextlib
    import io

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = main(argv)
    return code, stderr.getvalue()


def test_a_run_without_resume_replaces_a_stale_store(straight):
    out, err = straight
    assert re.search(r"not resuming \(no --resume\): the 1 model\(s\) kept in .*\.out\.scrub-resume by an "
                     r"earlier run are replaced", err), err
    assert "resumed from" not in err and "study A" in err and "study B" in err, err
    assert siblings(out) == []  # removed once the run is complete


def test_resume_reuses_the_kept_model_and_ends_as_a_straight_run(models, interrupted, straight):
    out, _, kept = interrupted
    code, err = run_in_process(study(models, out, "--resume"))
    assert code == 0, err
    assert f"A: resumed from {store_of(out)}" in err, err
    assert "study A" not in err and "study B" in err, err  # A's progress bar never started: not computed
    files = snapshot(out)
    assert {k: v for k, v in files.items() if k.startswith("A/")} == {f"A/{k[2:]}": v for k, v in kept.items()
                                                                     if k.startswith("A/")}  # byte for byte
    assert siblings(out) == [] and not (out / ".scrub-lock").exists()  # the store is removed on success
    assert comparable(files) == comparable(snapshot(straight[0]))

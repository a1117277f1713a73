"""``scrub discover`` end to end on a small checkpoint: one JSON object, the three files, and the written
hypothesis file re-run by ``scrub run`` with the command it documents gives the reported number."""

from __future__ import annotations

import csv
import json
import shlex

import pytest

from scrub.cli import main
from tests.helpers import save_tiny_checkpoint

FLAGS = ["--n", "6", "--n-discover", "6", "--seq-len", "16", "--draws", "1", "--receivers", "1.1,1.2", "--seed", "2"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.mark.parametrize("data", ["natural", "rrt"])
def test_discover_json_files_and_rerun(checkpoint, tmp_path, capsys, data):
    out = tmp_path / "found"
    code = main(["discover", "--model", str(checkpoint), "--data", data, *FLAGS, "--out", str(out), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    d = json.loads(captured.out)
    assert {"edges", "hypothesis_file", "loss_recovered", "ci", "passes", "curve"} <= set(d)
    assert {"edge", "sender", "receiver", "input", "score", "effect", "ci", "verdict"} <= set(d["edges"][0])
    assert d["passes"]["forward"] > 0 and d["passes"]["backward"] == 5
    assert sorted(p.name for p in out.iterdir()) == ["curve.png", "discovered.py", "edges.csv"]
    rows = list(csv.DictReader((out / "edges.csv").open()))
    assert [r["edge"] for r in rows] == [e["edge"] for e in d["edges"]]
    searched = {r["how"] for r in rows if r["receiver"] in ("1.1", "1.2")}
    assert "not searched" not in searched and {r["how"] for r in rows if r["receiver"] == "logits"} == {"not searched"}
    text = (out / "discovered.py").read_text()
    rerun = next(line for line in text.splitlines() if line.startswith("Re-run held out: "))
    argv = shlex.split(rerun.removeprefix("Re-run held out: "))[1:]
    argv[1] = str(out / "discovered.py")
    assert main([*argv, "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["loss_recovered"] == d["loss_recovered"]
    assert [again["ci_low"], again["ci_high"]] == d["ci"]


@pytest.mark.parametrize("flags, words", [
    (["--threshold", "-1"], "--threshold must be ≥ 0"),
    (["--receivers", "9.9"], "unknown head"),
    (["--n", "1"], "--n must be"),
])
def test_bad_input_exits_2_with_one_line(checkpoint, capsys, flags, words):
    assert main(["discover", "--model", str(checkpoint), *FLAGS, *flags]) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1


def test_an_interrupted_discover_resumes_to_the_files_of_an_uninterrupted_run(checkpoint, tmp_path, capsys,
                                                                               monkeypatch):
    from scrub.discovery import journal

    argv = ["discover", "--model", str(checkpoint), "--data", "rrt", *FLAGS, "--method", "acdc"]
    assert main([*argv, "--out", str(tmp_path / "whole")]) == 0
    out = tmp_path / "found"
    progress = tmp_path / ".found.scrub-discover-resume.pt"
    monkeypatch.setattr(journal, "EVERY", 0.0)
    real, kept = journal.Journal.keep_search, []

    def stop_after_two(self, checkpoint, **kw):
        real(self, checkpoint, **kw)
        kept.append(checkpoint.done)
        if len(kept) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(journal.Journal, "keep_search", stop_after_two)
    capsys.readouterr()
    assert main([*argv, "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert "interrupted; progress kept for --resume" in err and len(err.strip().splitlines()) == 1
    assert progress.is_file() and not out.exists()  # no half-written output, the progress beside it
    monkeypatch.setattr(journal.Journal, "keep_search", real)
    assert main([*argv, "--out", str(out), "--resume"]) == 0
    for name in ("discovered.py", "edges.csv"):
        assert (out / name).read_text() == (tmp_path / "whole" / name).read_text()
    assert not progress.exists()  # removed once the run finished


@pytest.mark.parametrize("flags, words", [
    (["--resume"], "--resume needs --out"),
    (["--resume", "--out", "{tmp}/never"], "no progress of an earlier run is kept"),
])
def test_resume_without_progress_exits_2_with_one_line(checkpoint, tmp_path, capsys, flags, words):
    flags = [f.replace("{tmp}", str(tmp_path)) for f in flags]
    assert main(["discover", "--model", str(checkpoint), *FLAGS, *flags]) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1

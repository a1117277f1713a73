"""Resuming a stopped discovery (issue #17): ``discover(..., resume=path)`` keeps the scores and the greedy
search after each receiver; a run stopped part-way and resumed ends with exactly the uninterrupted result
(every score, effect, interval and verdict, the held-out number, the passes counted)."""

from __future__ import annotations

import pytest
import torch

from scrub.discovery import api, journal
from scrub.discovery.api import discover
from scrub.discovery.journal import ResumeError
from tests.helpers import random_tokens, tiny_model


class Stop(BaseException):
    """Stands for Ctrl-C: not an Exception, so nothing on the way catches it."""


def comparable(d) -> dict:
    out = d.to_dict()
    out.pop("seconds")
    return out


def run(model, tokens, **kw):
    return discover(model, tokens, metric="loss", threshold=0.02, draws=2, seed=4, curve=False, **kw)


def stopped_after(n_decided: int):
    """A progress callback that stops the run once ``n_decided`` edges are decided."""

    def progress(done: int, total: int) -> None:
        if done >= n_decided:
            raise Stop

    return progress


@pytest.mark.parametrize("method", ["eap-ig+verify", "acdc"])
def test_a_stopped_run_resumed_ends_with_the_uninterrupted_result(tmp_path, monkeypatch, method):
    monkeypatch.setattr(journal, "EVERY", 0.0)  # every receiver written: the stop lands between two of them
    model = tiny_model(dtype=torch.float64, scale=0.4)
    tokens = random_tokens(12, 8, seed=7)
    whole = run(model, tokens, method=method)
    file = tmp_path / "progress.pt"
    with pytest.raises(Stop):
        run(model, tokens, method=method, resume=file, progress=stopped_after(len(whole.edges) // 2))
    kept = torch.load(file, weights_only=True)
    assert kept["search"] is not None and 0 < kept["search"]["done"]
    assert (kept["attribution"] is None) == (method == "acdc")
    seen = []
    again = run(model, tokens, method=method, resume=file, progress=lambda done, total: seen.append(done))
    assert comparable(again) == comparable(whole)
    assert seen[0] >= len(kept["search"]["decisions"]) > 0  # the kept decisions were not made again
    assert not file.exists()  # removed once the run finished


def test_resume_skips_the_attribution_it_kept(tmp_path, monkeypatch):
    model = tiny_model(dtype=torch.float64, scale=0.4)
    tokens = random_tokens(12, 8, seed=7)
    file = tmp_path / "progress.pt"
    with pytest.raises(Stop):
        run(model, tokens, resume=file, progress=stopped_after(1))
    calls = []
    real = api.attribute
    monkeypatch.setattr(api, "attribute", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = run(model, tokens, resume=file)
    assert not calls and comparable(again) == comparable(run(model, tokens))


def test_a_resume_file_of_another_run_is_refused_naming_what_differs(tmp_path):
    model = tiny_model(dtype=torch.float64, scale=0.4)
    tokens = random_tokens(12, 8, seed=7)
    file = tmp_path / "progress.pt"
    with pytest.raises(Stop):
        run(model, tokens, resume=file, progress=stopped_after(1))
    with pytest.raises(ResumeError, match="another options"):
        discover(model, tokens, metric="loss", threshold=0.05, draws=2, seed=4, resume=file)
    with pytest.raises(ResumeError, match="another data"):
        run(model, random_tokens(12, 8, seed=8), resume=file)
    other = tiny_model(dtype=torch.float64, scale=0.4, seed=1)
    with pytest.raises(ResumeError, match="another model"):
        run(other, tokens, resume=file)
    assert file.exists()  # a refused resume leaves the file as it was


def test_bad_resume_paths_are_refused_before_any_work(tmp_path, monkeypatch):
    model = tiny_model(dtype=torch.float64, scale=0.4)
    tokens = random_tokens(12, 8, seed=7)
    monkeypatch.setattr(api, "clean_run_batched", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(ResumeError, match="is a directory"):
        run(model, tokens, resume=tmp_path)
    with pytest.raises(ResumeError, match="does not exist"):
        run(model, tokens, resume=tmp_path / "missing" / "progress.pt")
    (tmp_path / "junk.pt").write_text("not a resume file")
    with pytest.raises(ResumeError, match="cannot be read"):
        run(model, tokens, resume=tmp_path / "junk.pt")

"""The study's HTML pages (experiments/_html.py), made from the committed results: the Markdown's sections, its
ladders as interactive views holding the results.json numbers, and links to a page per model."""

import json
import re

import pytest

from experiments._html import RESULTS, ladder, report_parts, write_pages
from scrub.views.page import Html, View, ViewKind

MODEL = RESULTS / "scrub-attn-2l"


@pytest.fixture(scope="module")
def results():
    return json.loads((MODEL / "results.json").read_text())


def test_ladder_holds_the_results_numbers(results):
    view = ladder(results, "induction_baseline", "candidates")
    names = [h["label"] for h in results["hypotheses"] if h["name"] not in ("induction_behavioral", "empty")]
    assert [r["label"] for r in view.data["rows"]] == names
    minimal = next(h["label"] for h in results["hypotheses"] if h["name"] == "induction_minimal")
    row = next(r for r in results["rows"] if (r["hypothesis"], r["baseline"], r["positions"], r["data"], r["metric"])
               == ("induction_minimal", "induction_baseline", "candidates", "natural", "loss"))
    shown = next(r for r in view.data["rows"] if r["label"] == minimal)["values"][0]
    assert shown["value"] == pytest.approx(row["value"], rel=1e-4)
    assert (shown["low"], shown["high"]) == pytest.approx((row["ci_low"], row["ci_high"]), rel=1e-4)


def test_report_keeps_every_section_and_replaces_the_ladders(results):
    text = (MODEL / "induction_study.md").read_text()
    parts = report_parts(text, results)
    markup = "".join(p.markup for p in parts if isinstance(p, Html))
    headings = re.findall(r"^#+ (.+)$", text, re.M)
    assert len(re.findall(r"<h[1-6]>", markup)) == len(headings)
    views = [p for p in parts if isinstance(p, View)]
    ladders = re.findall(r"!\[[^\]]*\]\((?:ladder_\w+|remix_ladder)\.png\)", text)
    assert sum(v.kind == ViewKind.INTERVALS for v in views) == len(ladders) >= 4
    assert sum(v.kind == ViewKind.HEATMAP for v in views) == 1
    assert "<table>" in markup and 'src="per_example_natural.png"' in markup  # the other figures stay PNGs


def test_write_pages_links_a_page_per_model(tmp_path):
    for name in ("scrub-attn-2l", "scrub-3l-mlp"):
        (tmp_path / name).mkdir()
        for file in ("results.json", "induction_study.md"):
            (tmp_path / name / file).write_text((RESULTS / name / file).read_text())
    (tmp_path / "induction_study.md").write_text((RESULTS / "induction_study.md").read_text())
    written = write_pages(tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == [
        "index.html", "scrub-3l-mlp/index.html", "scrub-attn-2l/index.html"]
    top = (tmp_path / "index.html").read_text()
    assert 'href="scrub-attn-2l/index.html"' in top and "induction_study.md" not in re.sub(r"<code>.*?</code>", "", top)


def test_committed_pages_are_up_to_date(tmp_path):
    """experiments/results/*.html are what write_pages makes of the committed results (rerun it after the study)."""
    for name in ("scrub-attn-2l", "scrub-3l-mlp"):
        (tmp_path / name).mkdir()
        for file in ("results.json", "induction_study.md"):
            (tmp_path / name / file).write_text((RESULTS / name / file).read_text())
    (tmp_path / "induction_study.md").write_text((RESULTS / "induction_study.md").read_text())
    for path in write_pages(tmp_path):
        committed = RESULTS / path.relative_to(tmp_path)
        assert committed.read_text() == path.read_text(), f"{committed} is stale: python -m experiments._html"

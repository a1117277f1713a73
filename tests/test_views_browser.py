"""The views in a real browser: headless Chromium, network blocked, opens each kind of page from a file and
checks that its views rendered (their elements exist), that the console has no errors, that the controls
change what is shown and that a screenshot is not blank. Skipped, with the reason, without chromium."""

import pytest
import torch

from scrub.heads.scores import SCORE_NAMES, HeadScores
from scrub.patching.paths import make_metric, patch_matrix
from scrub.views.graph import TOP_K
from scrub.views.page import Html, write_page
from scrub.views.report import explain, head_scores_parts, patch_parts
from tests.browser import Browser, missing, share_not_blank
from tests.helpers import partial_graph, random_tokens, tiny_model

pytestmark = pytest.mark.skipif(missing() is not None, reason=f"browser tests: {missing()}")


@pytest.fixture(scope="module")
def browser():
    shared = Browser()
    yield shared
    shared.close()


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    """A run page, a path-patching page and a head-scores page of tiny models."""
    out = tmp_path_factory.mktemp("pages")
    model = tiny_model(n_ctx=12)
    data = random_tokens(10, 12, seed=3)  # [10, 12]
    report = explain(model, partial_graph(), data, n_examples=5, seed=1, batch_size=4, progress=False, n_bootstrap=50)
    ref, cor = random_tokens(3, 9, seed=1), random_tokens(3, 9, seed=2)
    matrix = patch_matrix(model, ref, cor, make_metric("loss", ref, cor, torch.arange(2, 7)), progress=False)
    scores = HeadScores(*(torch.rand(2, 3, generator=torch.Generator().manual_seed(i))
                          for i in range(len(SCORE_NAMES))))
    parts = patch_parts(matrix)
    return {"run": report.to_html(out / "run.html"), "patch": write_page(out / "patch.html", "p", parts),
            "patch_edges": len(parts[1].data["edges"]), "heads": write_page(out / "heads.html", "h",
                                                                            head_scores_parts(scores)), "dir": out}


def test_run_page_renders_graph_tokens_attention(browser, pages):
    shot = browser.open(pages["run"], [".scrub-graph path.scrub-claimed", ".scrub-graph path.scrub-resampled",
                                    ".scrub-graph g.scrub-node", ".scrub-text .scrub-token", "canvas.scrub-attention",
                                    ".scrub-histogram rect.scrub-bar"])
    assert shot.errors == ()
    counts = shot.counts
    assert counts[".scrub-graph path.scrub-claimed"] == 4  # embed->0.1:v, 0.1->1.2:k, embed->1.2:q, 1.2->logits
    assert counts[".scrub-graph path.scrub-resampled"] > 0
    assert counts[".scrub-graph g.scrub-node"] == 8  # embed, 6 heads, logits (shortformer: no pos node)
    assert counts[".scrub-text .scrub-token"] == 12  # one span per token of the example
    assert counts["canvas.scrub-attention"] >= 2  # clean and scrubbed of a recomputed head
    assert counts[".scrub-histogram rect.scrub-bar"] >= 8
    assert share_not_blank(shot.png) > 0.02


def test_patch_page_top_k_slider_changes_the_edges(browser, pages):
    def slide_to_three(driver):
        driver.execute_script("var k = document.querySelector('.scrub-topk'); k.value = '3';"
                              "k.dispatchEvent(new Event('input'));")

    before = browser.open(pages["patch"], [".scrub-graph path.scrub-edge", "canvas.scrub-heatmap"])
    after = browser.open(pages["patch"], [".scrub-graph path.scrub-edge"], actions=slide_to_three)
    assert before.errors == () and after.errors == ()
    assert pages["patch_edges"] > 3
    assert before.counts[".scrub-graph path.scrub-edge"] == min(TOP_K, pages["patch_edges"])
    assert after.counts[".scrub-graph path.scrub-edge"] == 3
    assert before.counts["canvas.scrub-heatmap"] == 1
    assert share_not_blank(before.png) > 0.02


def test_token_picker_and_head_selector_switch_views(browser, pages):
    summary = "return document.querySelector('.scrub-example-summary').textContent;"

    def pick_second(driver):
        driver.execute_script("for (const s of document.querySelectorAll('select.scrub-pick')) {"
                              "s.value = '1'; s.dispatchEvent(new Event('change')); }")
        return driver.execute_script(summary)

    first = browser.open(pages["run"], [".scrub-example-summary"], actions=lambda d: d.execute_script(summary))
    second = browser.open(pages["run"], [".scrub-text .scrub-token", "canvas.scrub-attention"], actions=pick_second)
    assert second.errors == ()
    assert first.value.startswith("median:") and second.value.startswith("best:")
    assert second.counts[".scrub-text .scrub-token"] == 12 and second.counts["canvas.scrub-attention"] >= 1


def test_heads_page_renders_a_heatmap_per_score(browser, pages):
    def last_score(driver):
        driver.execute_script("var s = document.querySelector('select.scrub-pick'); s.value = '4';"
                              "s.dispatchEvent(new Event('change'));")

    shot = browser.open(pages["heads"], ["canvas.scrub-heatmap", "select.scrub-pick option"], actions=last_score)
    assert shot.errors == ()
    assert shot.counts == {"canvas.scrub-heatmap": 1, "select.scrub-pick option": len(SCORE_NAMES)}
    assert share_not_blank(shot.png) > 0.01


def test_network_is_blocked_and_errors_are_seen(browser, pages):
    """The control: a page that asks for a remote image gets a console error, so the checks above can fail."""
    page = write_page(pages["dir"] / "remote.html", "r", [Html('<img src="http://example.com/x.png">')])
    shot = browser.open(page, ["img"])
    assert shot.counts["img"] == 1
    assert any("example.com" in e for e in shot.errors)


BROKEN_IMAGES = ("return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0))"
                 ".map(i => i.src);")


@pytest.mark.parametrize("page", ["index.html", "scrub-attn-2l/index.html", "scrub-3l-mlp/index.html"])
def test_study_pages_render_offline(browser, page):
    from experiments._html import RESULTS

    shot = browser.open(RESULTS / page, [".scrub-intervals rect.scrub-interval-bar", "canvas.scrub-heatmap", "table",
                                      "img", "nav a"], actions=lambda d: d.execute_script(BROKEN_IMAGES))
    assert shot.errors == () and shot.value == []  # every figure beside the page loads from disk
    assert shot.counts["table"] > 0 and shot.counts["img"] > 0 and shot.counts["nav a"] == 3
    if page != "index.html":
        assert shot.counts[".scrub-intervals rect.scrub-interval-bar"] > 40  # four ladders of 10+ claims
        assert shot.counts["canvas.scrub-heatmap"] == 1
    assert share_not_blank(shot.png) > 0.02


def test_cli_run_page_renders(browser, tmp_path, capsys):
    from scrub.cli import main
    from tests.helpers import save_tiny_checkpoint
    from tests.test_views_cli import CLAIM

    (tmp_path / "claim.py").write_text(CLAIM)
    page = tmp_path / "out.html"
    assert main(["run", str(tmp_path / "claim.py"), "--model", str(save_tiny_checkpoint(tmp_path / "ckpt")),
                 "--n", "6", "--seq-len", "24", "--html", str(page)]) == 0
    assert f"html: {page}" in capsys.readouterr().out
    shot = browser.open(page, [".scrub-graph path.scrub-claimed", ".scrub-text .scrub-token", "canvas.scrub-attention"])
    assert shot.errors == ()
    assert shot.counts[".scrub-graph path.scrub-claimed"] == 4 and shot.counts[".scrub-text .scrub-token"] == 24
    assert shot.counts["canvas.scrub-attention"] >= 2


def test_discovery_page_renders_verdicts_hover_and_curve(browser, tmp_path):
    from scrub.discovery import discover

    model = tiny_model(dtype=torch.float64, scale=0.4)
    d = discover(model, random_tokens(16, 10, seed=7), metric="loss", threshold=0.001, draws=1, n_bootstrap=50)
    page = d.to_html(tmp_path / "discovery.html")
    paths = [".scrub-graph path.scrub-kept", ".scrub-graph path.scrub-uncertain", ".scrub-graph path.scrub-dropped",
             ".scrub-lines circle.scrub-point", ".scrub-histogram rect.scrub-bar"]
    hover = ("var p = document.querySelector('.scrub-graph path.scrub-kept'), r = p.getBoundingClientRect();"
             "p.dispatchEvent(new MouseEvent('mousemove', {bubbles: true, clientX: r.x + 2, clientY: r.y + 2}));"
             "return [p.getAttribute('stroke-dasharray'), document.querySelector('.scrub-graph path.scrub-uncertain')"
             ".getAttribute('stroke-dasharray'), document.getElementById('scrub-tooltip').textContent];")

    def hide_faint(driver):
        driver.execute_script("var c = document.querySelector('.scrub-show-resampled'); c.checked = false;"
                              "c.dispatchEvent(new Event('change'));")

    shot = browser.open(page, paths, actions=lambda driver: driver.execute_script(hover))
    hidden = browser.open(page, paths, actions=hide_faint)
    assert shot.errors == () and hidden.errors == ()
    counts, shown = shot.counts, min(max(TOP_K, len(d.claim_edges)), len(d.edges))
    assert counts[".scrub-graph path.scrub-kept"] == sum(r.verdict == "kept" for r in d.edges) > 0
    assert counts[".scrub-graph path.scrub-uncertain"] > 0 and counts[".scrub-graph path.scrub-dropped"] > 0
    assert sum(counts[p] for p in paths[:3]) == shown  # the top k of every edge, dropped ones faint
    assert counts[".scrub-lines circle.scrub-point"] == 2 * len(d.curve.points)
    assert counts[".scrub-histogram rect.scrub-bar"] >= 8
    dash, dotted, tip = shot.value
    kept = max((r for r in d.edges if r.verdict == "kept"), key=lambda r: abs(r.effect))
    assert dotted == "2,3" and dash != "2,3"
    assert tip.startswith(f"{kept.sender} \u2192 ") and "effect " in tip and "[95% CI " in tip and "score " in tip
    assert hidden.counts[".scrub-graph path.scrub-dropped"] == 0
    assert hidden.counts[".scrub-graph path.scrub-kept"] + hidden.counts[".scrub-graph path.scrub-uncertain"] == \
        len(d.claim_edges)
    assert share_not_blank(shot.png) > 0.02

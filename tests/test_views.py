"""Tests for the HTML views (scrub.views): payloads, self-contained pages, the claim and patching graphs, the
re-evaluated examples (they reproduce the run's numbers) and the attention patterns (they match TransformerLens)."""

import json
import math
import re

import pytest
import torch

from scrub.claims.hypothesis import full_graph, validate
from scrub.claims.sites import Channel, Head
from scrub.claims.structure import Structure
from scrub.heads.scores import SCORE_NAMES, HeadScores
from scrub.patching.paths import make_metric, patch_matrix
from scrub.views.attention import clean_patterns, pattern_normed
from scrub.views.detail import check_against, collect, picks
from scrub.views.graph import claim_graph, matrix_graph
from scrub.views.page import Html, View, ViewKind, fragment, page, plain, rounded
from scrub.views.report import RunReport, explain, head_scores_parts, patch_parts, result_parts
from tests.helpers import partial_graph, random_tokens, tiny_model

PAYLOAD = re.compile(r'<script type="application/json">(.*?)</script>', re.S)


def payloads(markup: str) -> list[dict]:
    return [json.loads(m.replace("<\\/", "</")) for m in PAYLOAD.findall(markup)]


@pytest.fixture(scope="module")
def scrubbed():
    """A tiny model, a claim with a resampled input, its data and run arguments, the result and its report."""
    model = tiny_model(n_ctx=12)
    data = random_tokens(10, 12, seed=3)  # [10, 12]
    args = dict(positions="all", seed=1, batch_size=4, progress=False, n_bootstrap=50)
    report = explain(model, partial_graph(), data, n_examples=5, **args)
    return model, data, args, report


def test_page_is_self_contained_and_payloads_parse():
    view = View(ViewKind.HISTOGRAM, "t", {"values": [1.0, float("nan")], "text": "</script><b>x</b>"})
    markup = page("title <x>", [Html("<p>hi</p>"), view])
    assert not re.search(r'(src|href)\s*=\s*["\']?(https?:)?//', markup)  # nothing loaded from anywhere
    assert markup.count("<script>") == 1 and "</script><b>" not in markup
    (data,) = payloads(markup)
    assert data == {"values": [1.0, None], "text": "</script><b>x</b>", "kind": "histogram"}
    assert "<title>title &lt;x&gt;</title>" in markup


def test_fragment_ids_differ_between_contents():
    first, second = (fragment([View(ViewKind.HISTOGRAM, "t", {"values": [v]})]) for v in (1.0, 2.0))
    ids = [re.findall(r'id="(scrub-[0-9a-f]+-\d+)"', m) for m in (first, second)]
    assert ids[0] and ids[1] and ids[0] != ids[1]


def test_plain_and_rounded():
    assert plain({"a": (1.0, math.inf), "b": [ViewKind.GRAPH]}) == {"a": [1.0, None], "b": ["graph"]}
    assert rounded([0.123456789, [float("nan"), 12345678.0]], 3) == [0.123, [None, 12300000.0]]


def test_claim_graph_draws_claimed_edges_and_resampled_inputs():
    model = tiny_model()
    claim = validate(partial_graph(), model)
    data = claim_graph(claim, Structure.of(model)).data
    claimed = [e for e in data["edges"] if e["claimed"]]
    assert len(claimed) == len(claim.edges)
    assert {(e["source"], e["target"], e["channel"]) for e in claimed} >= {("0.1", "1.2", "k"), ("embed", "1.2", "q")}
    resampled = [e for e in data["edges"] if not e["claimed"]]
    # 1.2's v reads nothing claimed: every one of its senders is resampled there (shortformer: no pos into v)
    senders_v = {str(s) for s in Structure.of(model).senders(Head(1, 2), Channel.V)}
    assert {e["source"] for e in resampled if e["target"] == "1.2" and e["channel"] == "v"} == senders_v
    assert {n["id"] for n in data["nodes"]} >= {"embed", "0.0", "1.2", "logits"}
    columns = {n["id"]: n["col"] for n in data["nodes"]}
    assert columns["embed"] < columns["0.1"] < columns["1.2"] < columns["logits"]


def test_matrix_graph_and_heatmap_hold_every_path():
    model = tiny_model()
    ref, cor = random_tokens(3, 9, seed=1), random_tokens(3, 9, seed=2)
    matrix = patch_matrix(model, ref, cor, make_metric("loss", ref, cor, torch.arange(2, 7)), progress=False)
    expected = matrix.to_dict()
    graph = matrix_graph(matrix, 2).data
    assert len(graph["edges"]) == len(expected["paths"]) + len(expected["to_logits"])
    by_name = {f"{e['source']} -> {e['target']}:{e['channel']}": e["value"] for e in graph["edges"]}
    name, value = next(iter(expected["paths"].items()))
    assert by_name[name] == pytest.approx(value, rel=1e-4)
    heat, _ = patch_parts(matrix)
    (grid,) = heat.data["matrices"]
    assert len(grid["rows"]) == 6 and grid["cols"][-1] == "logits" and len(grid["cols"]) == 6 * 3 + 1
    assert grid["values"][0][0] is None  # a layer-0 head does not feed a layer-0 head


def test_picks_are_distinct_and_ordered():
    values = torch.tensor([0.5, -1.0, 2.0, float("nan"), 0.1, 0.9, 0.3])
    chosen = picks(values, 5)
    ranks = [rank for _, rank in chosen]
    assert len(set(ranks)) == len(ranks) and 3 not in ranks
    labels = dict(chosen)
    assert labels["best"] == 2 and labels["worst"] == 1 and labels["median"] == 0  # 0.5: third of six


def test_detail_reproduces_the_runs_per_example_numbers(scrubbed):
    model, data, args, report = scrubbed
    detail, result = report.detail, report.result
    assert check_against(detail, result) < 1e-5
    for ex in detail.examples:
        assert ex.mean(ex.clean) == pytest.approx(result.per_example_clean[ex.rank], rel=1e-5)
        assert ex.mean(ex.baseline) == pytest.approx(result.per_example_baseline[ex.rank], rel=1e-5)
        assert len(ex.tokens) == data.shape[1] and len(ex.clean_top) == data.shape[1] - 1
    assert {"best", "median", "worst"} <= {ex.label for ex in detail.examples}


def test_check_against_refuses_another_seed(scrubbed):
    model, data, args, report = scrubbed
    other = collect(model, partial_graph(), data, report.result, positions="all", seed=2, n_examples=5)
    with pytest.raises(ValueError, match="differ from the run"):
        check_against(other, report.result)


@pytest.mark.parametrize("pos", ["shortformer", "standard", "rotary"])
def test_pattern_normed_matches_transformer_lens(pos):
    model = tiny_model(pos=pos, n_layers=2)
    tokens = random_tokens(1, 12, seed=5)  # [1, 12]
    _, cache = model.run_with_cache(tokens)
    x = model.blocks[1].ln1(cache["blocks.1.hook_resid_pre"])  # [1, seq, d_model] what the engine passes
    extra = cache["hook_pos_embed"][0] if pos == "shortformer" else None  # [seq, d_model]
    for head in range(model.cfg.n_heads):
        got = pattern_normed(model, 1, head, x, x, extra)[0]  # [q, k]
        torch.testing.assert_close(got, cache["blocks.1.attn.hook_pattern"][0, head], atol=1e-5, rtol=1e-5)
    assert set(clean_patterns(model, tokens[0], [(1, 0), (0, 2)])) == {(1, 0), (0, 2)}


def test_scrubbed_pattern_of_a_resampled_head_differs(scrubbed):
    _, _, _, report = scrubbed
    by_head = {p.head: p for p in report.detail.patterns}
    # 1.2's q and k read claimed inputs, its other inputs are resampled: the engine recomputes it
    pattern = by_head["1.2"].scrubbed
    assert pattern is not None and pattern.shape == (12, 12)
    torch.testing.assert_close(pattern.sum(-1), torch.ones(12))
    assert not torch.allclose(pattern, by_head["1.2"].clean)


def test_full_claim_heads_are_not_recomputed():
    model = tiny_model()
    data = random_tokens(6, 12, seed=4)
    report = explain(model, full_graph(model), data, n_examples=3, seed=0, progress=False, n_bootstrap=20,
                     baseline=partial_graph())
    assert all(p.scrubbed is None and "did not recompute" in p.note for p in report.detail.patterns)


def test_run_report_has_every_view(scrubbed, tmp_path):
    _, _, _, report = scrubbed
    kinds = [d["kind"] for d in payloads(report._repr_html_())]
    assert kinds == ["histogram", "graph", "tokens", "attention"]
    path = report.to_html(tmp_path / "run.html")
    tokens = next(d for d in payloads(path.read_text()) if d["kind"] == "tokens")
    assert len(tokens["examples"]) == 5 and all(len(e["delta"]) == 11 for e in tokens["examples"])
    numbers_only = [d["kind"] for d in payloads(fragment(result_parts(report.result)))]
    assert numbers_only == ["histogram"]
    assert RunReport(report.result)._repr_html_().count("scrub.views.report.explain") == 1


def test_head_scores_view_has_every_score():
    scores = HeadScores(*(torch.rand(2, 3) for _ in SCORE_NAMES), data="rrt")
    (view,) = head_scores_parts(scores)
    assert [m["name"] for m in view.data["matrices"]] == [n.replace("_", " ") for n in SCORE_NAMES]
    assert view.data["matrices"][0]["values"][1][2] == pytest.approx(float(scores.previous_token[1, 2]), rel=1e-4)



def test_notebook_objects_have_html(scrubbed, tmp_path):
    """ScrubResult, PatchMatrix and HeadScores show inline in a notebook and write a page (views loaded lazily)."""
    model, _, _, report = scrubbed
    ref, cor = random_tokens(3, 9, seed=1), random_tokens(3, 9, seed=2)
    matrix = patch_matrix(model, ref, cor, make_metric("loss", ref, cor, torch.arange(2, 7)), progress=False)
    scores = HeadScores(*(torch.rand(2, 3) for _ in SCORE_NAMES))
    for obj, kinds in ((report.result, ["histogram"]), (matrix, ["heatmap", "graph"]), (scores, ["heatmap"])):
        assert [d["kind"] for d in payloads(obj._repr_html_())] == kinds
        path = obj.to_html(tmp_path / f"{type(obj).__name__}.html")
        assert path.read_text().startswith("<!DOCTYPE html>")
        assert [d["kind"] for d in payloads(path.read_text())] == kinds


def test_a_page_write_that_fails_leaves_the_earlier_page_whole(tmp_path, monkeypatch):
    """Pages are written through a rename (scrub.jsonable.atomic_write): a full disk mid-write keeps the old page."""
    import scrub.jsonable as jsonable
    from scrub.views.page import Html, write_page

    target = tmp_path / "run.html"
    write_page(target, "first", [Html("<p>first</p>")])
    before = target.read_bytes()
    real = jsonable.os.fdopen

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, text):
            self.f.write(text[: len(text) // 2])  # half of it reaches the disk, then the disk is full
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(jsonable.os, "fdopen", lambda fd, *a, **k: Full(real(fd, *a, **k)))
    with pytest.raises(OSError, match="No space"):
        write_page(target, "second", [Html("<p>second</p>")])
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["run.html"]  # no temporary file left

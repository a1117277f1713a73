"""Redwood's REMIX day-3 ladder (issue #11): the ``hypotheses/remix_*.py`` files load and validate on both shipped
models, claim what their docstrings say (heads from the roles, never hard-coded), run from the CLI; the good
induction candidates of ``scrub.data.candidates``; the study's REMIX section (``experiments/_remix.py``)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from hypotheses._build import Remix, induction_baseline, remix_graph
from hypotheses._heads import head_roles
from scrub.claims.files import load_hypothesis
from scrub.claims.hypothesis import full_graph, validate
from scrub.data.candidates import good_candidate_tokens, good_candidates, repeat_events, stream_coverage
from scrub.model.loading import ASSETS, load_model

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted((ROOT / "hypotheses").glob("remix_*.py"))
REDWOOD = {"remix_v": "0.90", "remix_q": "0.51", "remix_k": "0.83", "remix_k_prev_only": "0.82", "remix_all": "0.37"}
SHIPPED = [p.name for p in sorted(ASSETS.iterdir()) if p.is_dir()] if ASSETS.is_dir() else []


@pytest.fixture(scope="module", params=["scrub-attn-2l", "scrub-3l-mlp"])
def shipped(request):
    if request.param not in SHIPPED:
        pytest.skip(f"{request.param} is not shipped in {ASSETS}")
    model = load_model(request.param)
    return model, head_roles(model)


def _inputs(graph, node, channel):
    return {s for s, _, d in graph.in_edges(node, data=True) if channel in d.get("via", "")}


def test_the_five_rungs_are_there():
    assert {p.stem for p in FILES} == set(REDWOOD)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_file_loads_validates_and_names_its_rung(path, shipped):
    model, _ = shipped
    claim = load_hypothesis(path, model)
    assert claim.root == "logits" and claim.n_paths() > 0
    assert "REMIX day 3" in claim.description and REDWOOD[path.stem] in claim.description


def test_rungs_claim_one_input_each(shipped):
    model, roles = shipped
    full = full_graph(model)
    base = induction_baseline(model, roles)
    for rung, reduced in ((Remix(v=True), "v"), (Remix(q=True), "q"), (Remix(k=True), "k"),
                          (Remix(v=True, q=True, k=True), "qkv")):
        g = remix_graph(model, roles, rung)
        validate(g, model)
        rest = {e for e in g.edges if e[1] not in roles.induction and e[1] != "mlp.0~token"}
        assert rest == set(base.edges)  # the rest of the model: as in the full graph
        for head in roles.induction:
            for channel in "qkv":
                claimed, every = _inputs(g, head, channel), _inputs(full, head, channel)
                if channel not in reduced:
                    assert claimed == every
                    continue
                assert {c.split("~")[0] for c in claimed} < every  # mlp.0~token: mlp.0 reading the embedding
                expected = {"embed", "pos"} if channel == "q" else {"embed"} if channel == "v" else \
                    {"pos", roles.previous_for(head)}
                if channel in "qv" and "mlp.0" in roles.embedding:
                    expected.add("mlp.0~token")
                assert claimed == expected, (head, channel)


def test_previous_token_head_comes_from_the_roles(shipped):
    model, roles = shipped
    receiver = roles.induction[0]
    layer = int(receiver.split(".")[0])
    other = next(f"{lay}.{h}" for lay in range(layer) for h in range(model.cfg.n_heads)
                 if f"{lay}.{h}" != roles.previous_for(receiver) and f"{lay}.{h}" not in roles.induction)
    moved = replace(roles, previous_of=tuple((r, other) for r in roles.induction))
    g = remix_graph(model, moved, Remix(k=True))
    assert _inputs(g, receiver, "k") == {"pos", other}


def test_prev_only_masks_the_previous_token_heads_value(shipped):
    masks = pytest.importorskip("scrub.claims.masks")
    model, roles = shipped
    g = load_hypothesis(ROOT / "hypotheses" / "remix_k_prev_only.py", model)  # validates
    graph = remix_graph(model, roles, Remix(k=True, prev_mask=masks.previous_position()))
    for head in roles.induction:
        (alias,) = _inputs(graph, head, "k") - {"pos"}
        assert graph.nodes[alias]["component"] == roles.previous_for(head)
        for sender, _, d in graph.in_edges(alias, data=True):
            assert ("v" in d["via"]) == (d.get("qk_mask") == masks.previous_position()), (sender, d)
    assert g.n_paths() > 0


def test_cli_runs_one_rung(capsys):
    from scrub.cli import main

    hyp = ROOT / "hypotheses"
    argv = ["run", str(hyp / "remix_k.py"), "--baseline", str(hyp / "induction_baseline.py"), "--n", "4",
            "--seq-len", "24", "--positions", "candidates", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_examples"] == 4 and out["loss_recovered"] is not None


# --- good induction candidates --------------------------------------------------------------------------

def test_repeat_events_and_hits():
    #                       0  1  2  3  4  5  6  7  8  9 10 11
    stream = torch.tensor([0, 5, 6, 7, 5, 6, 5, 9, 0, 5, 6, 1])
    ev = repeat_events(stream, window=10)
    got = sorted(zip(ev.t.tolist(), ev.j.tolist(), ev.hit.tolist(), strict=True))
    # 5 at 4 (earlier 1): next 6 == 6, hit; 6 at 5 (earlier 2): next 5 != 7; 5 at 6 (earlier 4): 9 != 6.
    # Position 9 is in a new document (BOS at 8): its 5 has no earlier occurrence there.
    assert got == [(4, 1, True), (5, 2, False), (6, 4, False)]
    assert repeat_events(stream, window=2).t.tolist() == [6]  # the others are 3 tokens back


def test_good_candidate_tokens_thresholds_and_exclusion():
    stream = torch.tensor([0] + [3, 4] * 20 + [0] + [7, 8, 7, 8, 7, 9, 7, 9] * 5)
    good = good_candidate_tokens(stream, 10, min_count=5, min_events=3, min_hit_rate=0.5)
    assert good[3] and good[4] and good[7] and not good[0]  # half of 7's repeats are followed as before
    assert not good_candidate_tokens(stream, 10, min_count=5, min_events=3, min_hit_rate=0.6)[7]
    assert not good_candidate_tokens(stream, 10, min_count=30, min_events=3, min_hit_rate=0.5)[3]  # 20 < 30
    everything = torch.ones_like(stream, dtype=torch.bool)
    assert not good_candidate_tokens(stream, 10, exclude=everything, min_count=1, min_events=1).any()


def test_stream_coverage_finds_rows_by_content():
    stream = torch.arange(100) % 37
    rows = torch.stack([torch.cat([torch.tensor([0]), stream[10:20]]), torch.full((11,), 99)])  # found; not found
    covered = stream_coverage(stream, rows)
    assert covered[10:20].all() and covered[47:57].all() and covered[84:94].all() and int(covered.sum()) == 30
    assert not stream_coverage(stream, rows[1:]).any()


def test_good_candidates_leaves_the_scored_text_out():
    from scrub.data.batches import natural_batch

    tokens = natural_batch(4, 64, seed=0)  # [4, 64]
    mask = good_candidates(tokens)
    assert mask.dtype == torch.bool and mask.shape == tokens.shape and not mask[:, 0].any()
    assert 0.05 < float(mask.float().mean()) < 0.6
    from scrub.data.candidates import GoodCandidates

    shipped = GoodCandidates.shipped()
    stream, events = shipped.stream, shipped.events
    assert torch.equal(shipped(tokens), mask)
    assert stream_coverage(stream, tokens).sum() == 4 * 63
    listed = good_candidate_tokens(stream, 2048, exclude=stream_coverage(stream, tokens), events=events)
    assert torch.equal(mask, listed[tokens])


# --- the study's REMIX section ----------------------------------------------------------------------------

def test_scrub_metrics_agrees_with_scrub_many_and_kl_of_the_full_graph_is_one(shipped):
    from experiments._evaluate import scrub_many, scrub_metrics
    from scrub.data.batches import all_positions, natural_batch

    model, roles = shipped
    tokens = natural_batch(6, 32, seed=1)  # [6, 32]
    claims = tuple(replace(validate(g, model), name=n) for n, g in (
        ("base", induction_baseline(model, roles)), ("v", remix_graph(model, roles, Remix(v=True))),
        ("full", full_graph(model))))
    masks = (("all", all_positions),)
    try:
        both = scrub_metrics(model, claims, tokens, masks, seed=0, batch_size=3, metrics=("loss", "kl"))
    except ImportError:
        pytest.skip("this scrub has no KL metric yet")
    loss = scrub_many(model, claims, tokens, masks, seed=0, batch_size=3)
    assert torch.allclose(both["loss"].total, loss.total)
    kl = both["kl"]
    assert float(kl.clean.abs().max()) == 0.0 and float(kl.total[2].abs().max()) < 1e-4  # full graph: KL 0
    assert abs(kl.recovery("full", "base", "all", n_bootstrap=20).value - 1) < 1e-3


def test_remix_section_builds_every_rung_or_says_why(shipped):
    from experiments._remix import RUNGS, build_rungs, remix_lines

    model, roles = shipped

    def load(stem):
        claim = load_hypothesis(ROOT / "hypotheses" / f"{stem}.py", model)
        return claim, claim.description

    built, skipped = build_rungs(model, roles, load)
    assert {b.rung.name for b in built} | {s["name"] for s in skipped} == {r.name for r in RUNGS}
    assert all(s["reason"] for s in skipped)
    assert {"remix_v", "remix_q", "remix_k", "remix_all"} <= {b.rung.name for b in built}
    assert any("Not computed" in line for line in remix_lines(None))


def test_good_candidates_is_a_positions_function_of_scrub_run(shipped):
    from scrub.data.batches import natural_batch
    from scrub.experiment.runner import run

    model, roles = shipped
    tokens = natural_batch(4, 48, seed=2)  # [4, 48]
    result = run(model, remix_graph(model, roles, Remix(k=True)), tokens, baseline=induction_baseline(model, roles),
                 positions=good_candidates, n_bootstrap=20, progress=False)
    assert result.n_tokens == int(good_candidates(tokens)[:, :-1].sum())


def test_remix_report_lines_from_a_results_entry():
    from experiments._remix import LADDER, OWN, cross_remix_lines, remix_lines, remix_sentence

    rungs = [{"name": r.name, "label": r.label, "redwood": r.redwood, "own": r in OWN, "file": "", "n_paths": 3,
              "description": "d"} for r in (*LADDER, *OWN)]
    rows = [{"hypothesis": r["name"], "baseline": "induction_baseline", "positions": m, "data": d, "metric": k,
             "value": 0.5, "ci_low": 0.4, "ci_high": 0.6, "loss_clean": 1.0, "loss_baseline": 2.0,
             "loss_scrubbed": 1.5, "n_examples": 2, "n_tokens": 10}
            for r in rungs for d in ("natural", "rrt") for m in ("candidates", "good") for k in ("loss", "kl")]
    remix = {"rungs": rungs, "rows": rows, "skipped": [{"name": "x", "label": "x", "reason": "why"}],
             "metrics": ["loss", "kl"], "modes": ["candidates", "good"]}
    text = "\n".join(remix_lines(remix))
    assert "0.500 [0.400, 0.600]" in text and "— (ours)" in text and "`x` (why)" in text
    assert "Redwood's 0.90 (our interval is below it)" in text and "Redwood's 0.51 (inside our interval)" in text
    assert "KL recovered" in text and "What differs from REMIX's setting" in text
    cross = "\n".join(cross_remix_lines([("m1", {"remix": remix}), ("m2", {})]))
    assert "`m1` natural, good" in cross and "`m2`" not in cross
    assert "V 0.50 [0.40, 0.60] (Redwood 0.90)" in remix_sentence(remix) and remix_sentence(None) == ""

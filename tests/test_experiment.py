"""``run`` and ``scrub run``: loss recovered end to end, determinism, and clear errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformer_lens import HookedTransformer

from scrub.claims.hypothesis import empty_graph, full_graph
from scrub.cli import main
from scrub.experiment.inputs import RunInputError, batch_bounds
from scrub.experiment.runner import UndefinedRecoveryError, run
from scrub.model.loading import ArchSpec, save_checkpoint
from tests.helpers import partial_graph, tiny_model
from tests.helpers import random_tokens as tokens

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def model():
    return tiny_model(n_layers=2, n_heads=3)




def test_full_recovers_one_and_empty_zero(model):
    data = tokens()
    full = run(model, full_graph(model), data, progress=False, batch_size=4)
    empty = run(model, empty_graph(), data, progress=False, batch_size=4)
    assert full.loss_recovered == 1.0 and full.ci_low == full.ci_high == 1.0
    assert empty.loss_recovered == 0.0
    assert full.loss_clean == empty.loss_clean and full.loss_baseline == empty.loss_baseline
    assert full.n_examples == 8 and full.n_tokens == 8 * 11


def test_partial_claim_is_between_and_deterministic(model):
    data = tokens(n=16)
    a = run(model, partial_graph(), data, progress=False, seed=3)
    b = run(model, partial_graph(), data, progress=False, seed=3)
    c = run(model, partial_graph(), data, progress=False, seed=4)
    assert a == b
    assert a.loss_scrubbed != c.loss_scrubbed
    assert a.ci_low <= a.loss_recovered <= a.ci_high
    assert len(a.per_example_scrubbed) == 16
    assert a.loss_scrubbed not in (a.loss_clean, a.loss_baseline)


def test_candidate_positions_score_fewer_tokens(model):
    data = tokens(n=8, seq=12)
    every = run(model, partial_graph(), data, progress=False)
    cands = run(model, partial_graph(), data, positions="candidates", progress=False)
    assert 0 < cands.n_tokens < every.n_tokens


def test_a_named_baseline_is_used(model):
    data = tokens()
    result = run(model, full_graph(model), data, baseline=partial_graph(), progress=False)
    alone = run(model, partial_graph(), data, progress=False)
    assert result.loss_baseline == alone.loss_scrubbed  # the baseline draws as it does when it is the hypothesis
    assert result.loss_recovered == 1.0 and result.baseline == "baseline"


def test_the_hypothesis_as_its_own_baseline(model):
    graph = partial_graph()
    with pytest.raises(ValueError, match="the baseline is the hypothesis itself"):
        run(model, graph, tokens(), baseline=graph, progress=False)
    result = run(model, graph, tokens(), baseline=partial_graph(), progress=False)  # an equal graph: an anchor
    assert result.loss_recovered == 0.0
    assert "same claim as the hypothesis" in result.warnings[0] and "warning: the baseline" in result.summary()


@pytest.mark.parametrize("data, message", [
    (torch.zeros(4, 13, dtype=torch.long), "longer than the model's n_ctx 12"),
    (torch.full((4, 6), 25), "outside the model's vocabulary of 20"),
    (torch.zeros(1, 6, dtype=torch.long), "at least 2 examples"),
    (torch.zeros(6, dtype=torch.long), "LongTensor of token ids"),
])
def test_bad_data_is_refused(model, data, message):
    with pytest.raises(ValueError, match=message):
        run(model, full_graph(model), data, progress=False)


def test_bad_positions_are_refused(model):
    with pytest.raises(ValueError, match="positions must be 'all', 'candidates'"):
        run(model, full_graph(model), tokens(), positions="first", progress=False)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    torch.manual_seed(0)
    save_checkpoint(HookedTransformer(ArchSpec(d_model=32, d_head=8, n_heads=2, n_ctx=64).to_config()), path)
    return path


def test_cli_run_json(checkpoint, tmp_path, capsys):
    hyp = tmp_path / "claim.py"
    hyp.write_text('"""K reads 0.0."""\nfrom scrub.claims.hypothesis import add_path\nimport networkx as nx\n'
                   'def hypothesis(model):\n    g = nx.DiGraph()\n'
                   '    add_path(g, "embed", ("0.0", "v"), ("1.1", "k"), "logits")\n    return g\n')
    for data in ("natural", "rrt"):
        code = main(["run", str(hyp), "--model", str(checkpoint), "--n", "6", "--seq-len", "32", "--data", data,
                     "--json"])
        out = json.loads(capsys.readouterr().out)
        assert code == 0
        for key in ("loss_clean", "loss_baseline", "loss_scrubbed", "loss_recovered", "ci_low", "ci_high",
                    "n_examples", "n_tokens"):
            assert key in out
        assert out["n_examples"] == 6 and out["hypothesis"] == "claim"
        assert out["seq_len"] == 32 and out["tokens_per_example"] == (32 if data == "natural" else 33)
        assert out["exclude_common"] == (None if data == "natural" else 2048 // 20)
        assert out["warnings"] == [w for w in out["warnings"] if isinstance(w, str)] and "self_draws" in out


def test_cli_run_errors_are_one_line(checkpoint, tmp_path, capsys):
    bad = tmp_path / "bad.py"
    bad.write_text('import networkx as nx\ndef hypothesis(model):\n'
                   '    return nx.DiGraph([("embed", "3.9", {"via": "v"}), ("3.9", "logits")])\n')
    assert main(["run", str(bad), "--model", str(checkpoint), "--n", "4", "--seq-len", "16"]) == 2
    err = capsys.readouterr().err
    assert "unknown head '3.9'" in err and "Traceback" not in err
    assert main(["run", str(bad), "--model", str(checkpoint), "--seq-len", "100"]) == 2
    assert "longer than the model's n_ctx 64" in capsys.readouterr().err


def test_batch_bounds_never_leave_one_example_alone():
    assert batch_bounds(8, 4) == [(0, 4), (4, 8)]
    assert batch_bounds(9, 4) == [(0, 4), (4, 9)]  # the ninth example joins the last batch instead of being skipped
    assert batch_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert batch_bounds(3, 32) == [(0, 3)]


def test_no_example_is_dropped_at_any_batch_size(model):
    data = tokens(n=7)
    for batch_size in (2, 3, 4, 6, 7, 100):
        result = run(model, partial_graph(), data, batch_size=batch_size, progress=False, n_bootstrap=20)
        assert result.n_examples == 7, batch_size


# --- metric="kl" and the token-level view on the shipped model (issue #11) ----------------------------------

@pytest.fixture(scope="module")
def shipped():
    import scrub

    return scrub.load_model(), scrub.natural_batch(8, seq_len=24, seed=0)


def test_kl_of_the_full_hypothesis_recovers_exactly_one(shipped):
    model, data = shipped
    result = run(model, REPO / "hypotheses" / "full.py", data, metric="kl", progress=False, batch_size=4,
                 n_bootstrap=50)
    assert result.metric == "kl" and result.loss_recovered == 1.0 and result.ci_low == result.ci_high == 1.0
    assert result.loss_clean == 0.0 and result.loss_scrubbed == 0.0 and result.loss_baseline > 0
    assert result.token_view["mean_abs_delta"] == 0.0 and result.token_view["n_tokens"] == result.n_tokens == 8 * 23
    assert result.summary().startswith("full vs empty: KL recovered 1.000 [95% CI 1.000, 1.000]")
    assert "\ntoken-level: scrubbed - clean KL per token: mean +0.0000" in result.summary()


def test_kl_of_the_empty_hypothesis_against_the_empty_baseline_is_zero(shipped):
    model, data = shipped
    result = run(model, empty_graph(), data, metric="kl", progress=False, n_bootstrap=50)
    assert result.loss_recovered == 0.0 and result.loss_scrubbed == result.loss_baseline > 0
    assert result.warnings[0].endswith("KL recovered is 0 by construction")
    assert result.token_view["mean_delta"] == pytest.approx(result.loss_scrubbed)  # KL per token is ≥ 0: no cancelling
    assert result.token_view["mean_abs_delta"] == result.token_view["mean_delta"]
    with pytest.raises(UndefinedRecoveryError, match="KL divergence from the clean run is 0"):
        run(model, empty_graph(), data, baseline=full_graph(model), metric="kl", progress=False, n_bootstrap=50)


def test_loss_token_view_matches_the_aggregate_and_summary_keeps_its_wording(shipped):
    model, data = shipped
    result = run(model, REPO / "hypotheses" / "induction_minimal.py", data, progress=False, n_bootstrap=50,
                 baseline=REPO / "hypotheses" / "induction_baseline.py")
    view = result.token_view
    assert result.metric == "loss" and view["n_tokens"] == result.n_tokens
    assert view["mean_delta"] == pytest.approx(result.loss_scrubbed - result.loss_clean, abs=1e-5)
    assert view["mean_abs_delta"] >= abs(view["mean_delta"])
    assert view["p10"] <= view["p50"] <= view["p90"] and 0 <= view["share_positive"] <= 1
    headline, token_line = result.summary().splitlines()[:2]
    assert headline.startswith("induction_minimal vs induction_baseline: loss recovered ")
    assert "(clean " in headline and token_line.startswith("token-level: scrubbed - clean loss per token: mean ")


def test_cli_run_metric_kl_json_and_text(capsys):
    argv = ["run", str(REPO / "hypotheses" / "full.py"), "--n", "4", "--seq-len", "16", "--batch-size", "4"]
    assert main(argv + ["--metric", "kl", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["metric"] == "kl" and out["loss_recovered"] == 1.0 and out["loss_clean"] == 0.0
    assert set(out["token_view"]) == {"mean_delta", "mean_abs_delta", "p10", "p25", "p50", "p75", "p90",
                                      "share_positive", "n_tokens"}
    assert main(argv + ["--metric", "kl"]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0].startswith("full vs empty: KL recovered 1.000") and text[1].startswith("token-level: ")
    assert any(line.startswith("per-example KL recovered: ") for line in text)
    assert main(argv + ["--json"]) == 0
    assert json.loads(capsys.readouterr().out)["metric"] == "loss"


def test_cli_run_refuses_an_unknown_metric(capsys):
    assert main(["run", str(REPO / "hypotheses" / "full.py"), "--metric", "nll"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1
    assert "argument --metric: invalid choice: 'nll'" in captured.err


def test_run_refuses_an_unknown_metric(model):
    with pytest.raises(RunInputError, match="metric must be one of 'loss', 'kl', got 'KL'"):
        run(model, full_graph(model), tokens(), metric="KL", progress=False)  # type: ignore[arg-type]


def test_good_candidate_positions_score_the_candidate_tokens(shipped):
    """positions='good_candidates' (CLI --positions good-candidates) scores exactly the positions whose current
    token is a good induction candidate (scrub.data.candidates)."""
    from scrub.data.candidates import good_candidates

    model, data = shipped
    minimal = Path(__file__).resolve().parent.parent / "hypotheses" / "induction_minimal.py"
    result = run(model, minimal, data, positions="good_candidates", progress=False,
                 n_bootstrap=20)
    expected = int(good_candidates(data)[:, :-1].sum())
    assert 0 < result.n_tokens == expected < int(data[:, :-1].numel())

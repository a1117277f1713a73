"""The induction study end to end in quick mode, through ``scrub study``, on two small random-init checkpoints in
one run (always runs; the shipped models' runs are the committed reports): a 2-layer attention-only model and
a 3-layer model with MLPs. Checks each model's report structure, figures and JSON, the sanity anchors (full
graph recovers 1, each baseline recovers 0 against itself), the MLP treatment, the composition and
effect-by-position results, and the cross-model report written from the per-model results.json files."""

import json
import time

import pytest
from transformer_lens import HookedTransformer, HookedTransformerConfig

from scrub.cli import build_parser, main
from scrub.model.loading import save_checkpoint, shipped_models
from tests.helpers import save_tiny_checkpoint

SECTIONS = ("## 1. Behavioral head scores", "## 2. Hypotheses", "## 3. Loss recovered", "## 4. What the numbers say",
            "## 5. Per-example distribution", "## 6. Context sensitivity", "## 7. Per head",
            "## 8. Do later components", "## 9. Circuit discovery", "## Method notes")
CROSS = ("## Models side by side", "## Across models", "### 1. ", "### 2. ", "### 3. ", "### 4. ", "## Conclusion")


def save_tiny_mlp_checkpoint(directory):
    """A random-init 3-layer checkpoint with MLPs, the shipped vocabulary and 64 positions."""
    cfg = HookedTransformerConfig(n_layers=3, n_heads=4, d_model=32, d_head=8, d_mlp=64, n_ctx=64, d_vocab=2048,
                                  attn_only=False, act_fn="gelu", seed=0, normalization_type="LN",
                                  positional_embedding_type="shortformer")
    save_checkpoint(HookedTransformer(cfg), directory)
    return directory


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """One ``scrub study --quick`` of both tiny models: (out folder, JSON summary, stderr)."""
    root = tmp_path_factory.mktemp("study")
    save_tiny_checkpoint(root / "tiny")
    save_tiny_mlp_checkpoint(root / "tiny3mlp")
    out = root / "out"
    out.mkdir()
    (out / "ladder_empty_candidates.png").write_bytes(b"old layout")  # the single-model layout's leftovers
    return root, out


@pytest.fixture(scope="module")
def summary(study):
    import contextlib
    import io

    root, out = study
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["study", "--quick", "--json", "--model", str(root / "tiny"), "--model", str(root / "tiny3mlp"),
                     "--out", str(out)])
    assert code == 0, stderr.getvalue()
    return json.loads(stdout.getvalue())  # exactly one JSON object on stdout


@pytest.mark.parametrize("index, name", [(0, "tiny"), (1, "tiny3mlp")])
def test_study_quick_per_model_report_and_figures(study, summary, index, name):
    _, out = study
    one = summary["models"][index]
    assert one["config"]["quick"] is True and one["config"]["out"].endswith(name)
    folder = out / name
    report = (folder / "induction_study.md").read_text()
    assert report.startswith("# Induction heads")
    assert "scrub study --quick --seed 0" in report.splitlines()[2]  # command and seed in the header
    positions = [report.index(s) for s in SECTIONS]
    assert positions == sorted(positions)
    for figure in one["figures"]:
        assert (folder / figure).stat().st_size > 0
        assert f"({figure})" in report or figure.startswith(("ladder_", "per_example_", "context_")), figure
    assert json.loads((folder / "results.json").read_text())["rows"] == one["rows"]
    found = one["discovery"]["heads"]
    assert {(h["head"], h["data"]) for h in found} == {(h, d) for h in {h["head"] for h in found}
                                                       for d in ("natural", "rrt")} and found
    for h in found:  # only the head's own inputs were searched, and the mechanism's edges are among them
        names = {r["edge"] for r in h["edges"]}
        assert all(r["edge"].split(" -> ")[1].split(":")[0] == h["head"] for r in h["edges"])
        assert set(h["mechanism"]) <= names and h["mechanism"]
        assert {r["edge"] for r in h["edges"] if r["mechanism"]} == set(h["mechanism"])
        assert all(r["verdict"] in ("kept", "dropped", "uncertain") for r in h["edges"])
    names = {r["hypothesis"] for r in one["rows"]}
    assert {"full", "empty", "induction_baseline", "induction_minimal", "induction_v_only", "induction_q_only",
            "induction_k_only", "induction_refined", "induction_behavioral"} <= names
    for row in one["rows"]:
        if row["hypothesis"] == "full":
            assert row["value"] == pytest.approx(1.0, abs=1e-3)
        if row["hypothesis"] == row["baseline"]:
            assert row["value"] == pytest.approx(0.0, abs=1e-6)
        assert row["ci_low"] <= row["ci_high"]  # (a ratio's percentile interval may miss its estimate on noise)
    # a random model has no induction heads: the roles say they fell back to top scorers
    assert one["roles"]["fallbacks"] and "Warning" in report
    # positions are the same in every example of a shortformer model: claiming them changes nothing
    by = {(r["data"], r["hypothesis"], r["baseline"], r["positions"]): r["value"] for r in one["rows"]}
    for key, value in by.items():
        if key[1] == "induction_positions":
            assert value == pytest.approx(by[(key[0], "induction_minimal", key[2], key[3])], abs=1e-6)
    # every mechanism receiver gets its own previous-token head from an earlier layer
    for receiver, prev in one["roles"]["previous_of"]:
        assert int(prev.split(".")[0]) < int(receiver.split(".")[0])
    # where each head's effect falls (candidates vs elsewhere), and its mechanism at the other positions
    assert [s["name"] for s in one["effect_split"]] == one["roles"]["induction"]
    other = {(r["hypothesis"], r["positions"]) for r in one["per_head"]}
    assert other >= {(h, "other") for h in one["roles"]["induction"]}
    assert {c["data"] for c in one["composition"]} == {"natural", "rrt"}


def test_study_attention_only_model_has_nothing_after_its_last_layer(summary):
    one = summary["models"][0]
    assert one["model"]["mlps"] is False and one["roles"]["mlp0_token_share"] is None
    assert one["roles"]["embedding"] == ["embed"]
    built = {"induction_minimal_other_embedding", "induction_minimal_k_via_mlp0"}
    assert not built & {r["hypothesis"] for r in one["rows"]}
    for c in one["composition"]:  # the induction heads are in the last layer: only their direct effect
        assert c["receivers"] == [] and c["paths"] == [] and set(c["direct"]) == set(one["roles"]["induction"])


def test_study_mlp_model_claims_and_tests_its_token_embedding(study, summary):
    _, out = study
    one = summary["models"][1]
    assert one["model"]["mlps"] is True and one["model"]["n_layers"] == 3
    share = one["roles"]["mlp0_token_share"]
    assert share is not None and share <= 1.0
    assert one["roles"]["embedding"] == (["embed", "mlp.0"] if share > 0.5 else ["embed"])
    # the other choice of token embedding is scrubbed too, so the choice is tested
    rows = {r["hypothesis"]: r for r in one["rows"]}
    assert rows["induction_minimal_other_embedding"]["ci_low"] <= rows["induction_minimal_other_embedding"]["ci_high"]
    assert "induction_minimal_k_via_mlp0" in rows  # and the previous token reaching K through mlp.0
    report = (out / "tiny3mlp" / "induction_study.md").read_text()
    assert "mlp.0" in report.split("## Method notes")[1]  # what was claimed for the MLPs, and why
    # composition: every later head (q, k, v) and MLP the induction heads feed is a receiver
    senders = one["roles"]["induction"]
    first = min(int(s.split(".")[0]) for s in senders)
    for c in one["composition"]:
        assert f"mlp.{first}" in c["receivers"] and f"mlp.{first}" in {p["receiver"] for p in c["paths"]}
        for p in c["paths"]:
            assert p["low"] <= p["value"] <= p["high"]


def test_study_cross_model_report(study, summary):
    _, out = study
    report = (out / "induction_study.md").read_text()
    assert report.startswith("# Induction heads across models")
    positions = [report.index(s) for s in CROSS]
    assert positions == sorted(positions)
    assert "(tiny/induction_study.md)" in report and "(tiny3mlp/induction_study.md)" in report
    assert summary["cross_report"] == str(out / "induction_study.md")
    for figure in ("cross_ladder.png", "cross_effect_by_position.png"):
        assert (out / figure).stat().st_size > 0 and f"({figure})" in report
    assert not (out / "ladder_empty_candidates.png").exists()  # the old single-model layout is cleared
    # the minimal mechanism's numbers are the per-model ones
    row = next(r for r in summary["models"][1]["rows"] if (r["data"], r["hypothesis"], r["baseline"], r["positions"])
               == ("natural", "induction_minimal", "induction_baseline", "candidates"))
    assert f"{row['value']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]" in report.split("## Across models")[1]


def test_study_report_only_rewrites_the_cross_report(study, summary, capsys):
    root, out = study
    (out / "induction_study.md").unlink()
    assert main(["study", "--quick", "--report-only", "--model", str(root / "tiny3mlp"), "--out", str(out)]) == 0
    report = (out / "induction_study.md").read_text()
    assert "--report-only" in report and "## Across models" in report  # tiny, of the same kind, is taken in
    code = main(["study", "--quick", "--report-only", "--model", str(root / "missing"), "--out", str(out)])
    assert code == 2 and "no results.json" in capsys.readouterr().err  # a model never run there: one line


def test_study_is_registered():
    args = build_parser().parse_args(["study", "--quick", "--model", "a", "--model", "b"])
    assert args.command == "study" and args.quick and args.model == ["a", "b"]


@pytest.mark.slow
@pytest.mark.parametrize("name", shipped_models())
def test_quick_study_of_each_shipped_model_takes_under_two_minutes(name, tmp_path):
    start = time.time()
    assert main(["study", "--quick", "--model", name, "--out", str(tmp_path)]) == 0
    assert time.time() - start < 120


def test_the_mechanisms_edges_into_a_head_are_its_embedding_into_q_and_v_and_its_previous_token_head_into_k():
    from experiments._discovery import mechanism_edges
    from hypotheses._heads import head_roles
    from scrub.model.loading import load_model

    model = load_model("scrub-attn-2l")
    roles = head_roles(model)
    previous = roles.previous_for("1.3")
    assert mechanism_edges(model, roles, "1.3") == tuple(sorted(
        ["embed -> 1.3:q", "embed -> 1.3:v", f"{previous} -> 1.3:k"]))

"""The induction study end to end in quick mode, through ``scrub study``, on a small random-init checkpoint
(always runs; the shipped model's run is the committed report): report structure, figures, JSON, and the
sanity anchors (full graph recovers 1, each baseline recovers 0 against itself)."""

import json

import pytest

from scrub.cli import build_parser, main
from tests.helpers import save_tiny_checkpoint

SECTIONS = ("## 1. Behavioral head scores", "## 2. Hypotheses", "## 3. Loss recovered", "## 4. What the numbers say",
            "## 5. Per-example distribution", "## 6. Context sensitivity", "## 7. Per head", "## Method notes")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    save_tiny_checkpoint(root / "tiny")
    out = root / "out"
    return root, out


def test_study_quick_json_report_and_figures(study, capsys):
    root, out = study
    code = main(["study", "--quick", "--json", "--model", str(root / "tiny"), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)  # exactly one JSON object on stdout
    assert summary["config"]["quick"] is True
    report = (out / "induction_study.md").read_text()
    assert report.startswith("# Induction heads")
    assert "scrub study --quick --seed 0" in report.splitlines()[2]  # command and seed in the header
    positions = [report.index(s) for s in SECTIONS]
    assert positions == sorted(positions)
    for figure in summary["figures"]:
        assert (out / figure).stat().st_size > 0
        assert f"({figure})" in report or figure.startswith(("graph_", "ladder_", "per_example_", "context_")), figure
    names = {r["hypothesis"] for r in summary["rows"]}
    assert {"full", "empty", "induction_baseline", "induction_minimal", "induction_v_only", "induction_q_only",
            "induction_k_only", "induction_refined", "induction_behavioral"} <= names
    for row in summary["rows"]:
        if row["hypothesis"] == "full":
            assert row["value"] == pytest.approx(1.0, abs=1e-3)
        if row["hypothesis"] == row["baseline"]:
            assert row["value"] == pytest.approx(0.0, abs=1e-6)
        assert row["ci_low"] <= row["ci_high"]  # (a ratio's percentile interval may miss its estimate on noise)
    # a random model has no induction heads: the roles say they fell back to top scorers
    assert summary["roles"]["fallbacks"] and "Warning" in report
    # positions are the same in every example of a shortformer model: claiming them changes nothing
    by = {(r["data"], r["hypothesis"], r["baseline"], r["positions"]): r["value"] for r in summary["rows"]}
    for key, value in by.items():
        if key[1] == "induction_positions":
            assert value == pytest.approx(by[(key[0], "induction_minimal", key[2], key[3])], abs=1e-6)


def test_study_is_registered():
    args = build_parser().parse_args(["study", "--quick"])
    assert args.command == "study" and args.quick

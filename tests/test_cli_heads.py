"""Tests for ``scrub heads``: JSON output on a small random-init checkpoint, figures, and clean errors."""

import json

import pytest

from scrub.cli import main
from scrub.heads.scores import SCORE_NAMES
from tests.helpers import save_tiny_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.mark.parametrize("data", ["natural", "rrt"])
def test_heads_json(checkpoint, tmp_path, capsys, data):
    out = tmp_path / "figs"
    code = main(["heads", "--json", "--model", str(checkpoint), "--n", "3", "--data", data, "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)  # stdout is exactly one JSON object
    assert set(result) >= {"scores", "thresholds", "previous_token_heads", "induction_heads",
                           "in_context_learning", "figures"}
    assert sorted(result["scores"]) == [f"{layer}.{head}" for layer in range(2) for head in range(4)]
    assert all(set(per_head) == set(SCORE_NAMES) for per_head in result["scores"].values())
    assert result["thresholds"] == {"previous_token": 0.5, "prefix_matching": 0.4, "copying": 0.0}
    assert result["induction_heads"] == []  # random weights do not copy
    assert set(result["in_context_learning"]) == {"early", "late", "loss_early", "loss_late", "score"}
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{name}.png" for name in SCORE_NAMES)


def test_heads_table(checkpoint, tmp_path, capsys):
    assert main(["heads", "--model", str(checkpoint), "--n", "2", "--out", str(tmp_path),
                 "--prev-threshold", "0.0"]) == 0
    out = capsys.readouterr().out
    assert "1.3" in out and "prefix_matching" in out and "previous-token heads: 0.0, 0.1" in out


def test_bad_model_name_exits_2_with_one_line(capsys):
    assert main(["heads", "--model", "no-such-model", "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "unknown model 'no-such-model'" in lines[0] and "Traceback" not in captured.err


def test_seq_len_too_long_exits_2(checkpoint, tmp_path, capsys):
    assert main(["heads", "--model", str(checkpoint), "--seq-len", "65", "--out", str(tmp_path)]) == 2
    assert "use --seq-len ≤ 64" in capsys.readouterr().err


def test_missing_checkpoint_dir_exits_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["heads", "--model", str(tmp_path / "empty")]) == 2
    assert "config.json" in capsys.readouterr().err

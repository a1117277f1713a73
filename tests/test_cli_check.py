"""``scrub check``: passes on the shipped hypothesis files; fails (exit 1, reproducer printed) on a feature that
depends on the row index, a positions mask that reads other rows' tokens, a query-key mask that reads the sequence
length and a feature that never resamples; exits 2 on bad input. ``import scrub`` does not import hypothesis."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from scrub.cli import main
from scrub.model.loading import SHIPPED_DIR

HYPOTHESES = Path(__file__).resolve().parents[1] / "hypotheses"
SHIPPED = sorted(p for p in HYPOTHESES.glob("*.py") if not p.name.startswith("_") and p.stem != "ioi_shape")
FAST = ("induction_restricted", "remix_k_prev_only")  # positions masks, query-key masks (the feature file is slow)
needs_model = pytest.mark.skipif(not SHIPPED_DIR.exists(), reason="the shipped model is not built")

HEAD = """\
    import networkx as nx
    import torch

    from scrub.claims.features import Feature
    from scrub.claims.hypothesis import add_path
    from scrub.claims.masks import QKMask
    """
BAD = {
    "row_feature": (("features",), """
        def hypothesis(model):  # the batch row's parity: not a function of the tokens
            g = add_path(nx.DiGraph(), "embed", ("1.3", "v"), "logits")
            g.nodes["1.3"]["feature"] = Feature("row parity", lambda t: torch.arange(t.shape[0])[:, None] % 2)
            return g
        """),
    "batch_mask": (("positions", "batching"), """
        def hypothesis(model):  # claimed where the token equals the first row's: reads other rows' tokens
            g = add_path(nx.DiGraph(), "embed", ("1.3", "v"), "logits")
            g.edges["embed", "1.3"]["positions"] = lambda t: t == t[:1]
            return g
        """),
    "length_mask": (("query-key",), """
        def hypothesis(model):  # "the last key": depends on how long the batch's sequences are
            g = add_path(nx.DiGraph(), "embed", ("1.3", "k"), "logits")
            add_path(g, "embed", ("1.3", "q"))
            g.edges["embed", "1.3"]["qk_mask"] = QKMask("last key", lambda q, k: k == q.max())
            return g
        """),
    "never_resamples": (("resampling",), """
        def hypothesis(model):  # the whole window: no two natural-text windows agree
            g = add_path(nx.DiGraph(), "embed", ("1.3", "v"), "logits")
            g.nodes["1.3"]["feature"] = Feature("whole window", lambda t: t)
            return g
        """),
}


def write(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.py"
    path.write_text('"""A bad claim for scrub check."""\n' + textwrap.dedent(HEAD) + textwrap.dedent(BAD[name][1]))
    return path


def check(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["check", *args, "--examples", "6", "--seq-len", "12"])
    out = capsys.readouterr()
    return code, out.out, out.err


@needs_model
@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_files_fail_with_a_reproducer(tmp_path, capsys, name):
    failing = list(BAD[name][0])  # a mask reading other rows also changes with the batching
    code, out, _ = check(capsys, str(write(tmp_path, name)))
    assert code == 1, out
    lines = {line.split(":")[0].split()[1]: line.split()[0] for line in out.splitlines()[:8] if line.strip()}
    assert [n for n, status in lines.items() if status == "FAIL"] == failing, out
    assert "reproducer:" in out and f"rerun: scrub check {tmp_path / name}.py --model" in out


@needs_model
@pytest.mark.parametrize("path", [p for p in SHIPPED if p.stem in FAST], ids=lambda p: p.stem)
def test_shipped_files_pass(capsys, path):
    code, out, _ = check(capsys, str(path))
    assert code == 0, out
    assert "FAIL" not in out and out.count("pass ") >= 4


@pytest.mark.slow
@needs_model
@pytest.mark.parametrize("path", [p for p in SHIPPED if p.stem not in FAST], ids=lambda p: p.stem)
def test_every_other_shipped_file_passes(capsys, path):
    test_shipped_files_pass(capsys, path)


@pytest.mark.parametrize("args, message", [
    (["missing.py"], "does not exist"),
    ([str(HYPOTHESES / "full.py"), "--examples", "1"], "--examples must be at least 2"),
])
def test_bad_input_exits_2(capsys, args, message):
    assert main(["check", *args]) == 2
    assert message in capsys.readouterr().err


@needs_model
def test_a_file_that_does_not_load_exits_2(tmp_path, capsys):
    path = tmp_path / "broken.py"
    path.write_text("def hypothesis(model):\n    return 1 / 0\n")
    assert main(["check", str(path)]) == 2
    assert "ZeroDivisionError" in capsys.readouterr().err


def test_import_scrub_does_not_import_hypothesis():
    code = "import sys, scrub, scrub.testing, scrub.testing.invariants; print('hypothesis' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"

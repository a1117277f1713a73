"""``--html FILE`` on ``scrub run``, ``patch`` and ``heads``: the page holds the command's views, the JSON
names it (and is otherwise unchanged), and a bad path stops the command before any work."""

import json
import re

import pytest

from scrub.cli import main
from tests.helpers import save_tiny_checkpoint

CLAIM = '''import networkx as nx
from scrub.claims.hypothesis import add_path


def hypothesis(model):
    g = nx.DiGraph()
    add_path(g, "embed", ("0.1", "v"), ("1.2", "k"), "logits")
    add_path(g, "embed", ("1.2", "q"), "logits")
    return g
'''


def kinds(path) -> list[str]:
    """The kinds of the views on a page, in order."""
    found = re.findall(r'<script type="application/json">(.*?)</script>', path.read_text(), re.S)
    return [json.loads(m.replace("<\\/", "</"))["kind"] for m in found]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    (root / "claim.py").write_text(CLAIM)
    return save_tiny_checkpoint(root / "ckpt"), root / "claim.py"


def test_run_html(setup, tmp_path, capsys):
    checkpoint, claim = setup
    base = ["run", str(claim), "--model", str(checkpoint), "--n", "6", "--seq-len", "24", "--json"]
    assert main(base) == 0
    plain = json.loads(capsys.readouterr().out)
    page = tmp_path / "sub" / "run.html"
    assert main(base + ["--html", str(page)]) == 0
    with_page = json.loads(capsys.readouterr().out)
    assert with_page.pop("html") == str(page)
    assert with_page == plain  # the numbers do not depend on writing the page
    assert kinds(page) == ["histogram", "graph", "tokens", "attention"]
    assert "&lt;|bos|&gt;" in page.read_text() or "<|bos|>" in page.read_text()  # decoded with the tokenizer


def test_patch_and_heads_html(setup, tmp_path, capsys):
    checkpoint, _ = setup
    patch, heads = tmp_path / "patch.html", tmp_path / "heads.html"
    assert main(["patch", "--model", str(checkpoint), "--n", "2", "--length", "6", "--out", str(tmp_path / "p"),
                 "--html", str(patch)]) == 0
    assert f"html: {patch}" in capsys.readouterr().out
    assert kinds(patch) == ["heatmap", "graph"]
    assert main(["heads", "--model", str(checkpoint), "--n", "2", "--out", str(tmp_path / "h"), "--json",
                 "--html", str(heads)]) == 0
    assert json.loads(capsys.readouterr().out)["html"] == str(heads)
    assert kinds(heads) == ["heatmap"]


@pytest.mark.parametrize("command", ["run", "patch", "heads"])
def test_bad_html_path_exits_2_before_work(setup, tmp_path, capsys, command):
    checkpoint, claim = setup
    extra = [str(claim)] if command == "run" else ["--out", str(tmp_path / "o")]
    assert main([command, *extra, "--model", str(tmp_path / "no-such-model"), "--html", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--html" in err and "a folder" in err and len(err.strip().splitlines()) == 1

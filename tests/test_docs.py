"""The tutorial's worked example runs as written, on the shipped model and on a deep model with MLPs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from scrub.experiment.runner import run
from tests.helpers import tiny_model

DOC = Path(__file__).resolve().parent.parent / "docs" / "writing-hypotheses.md"


def tutorial_files() -> dict[str, dict]:
    """The tutorial's hypothesis files (the python blocks that define ``hypothesis``), executed, by file name."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    files = [b for b in blocks if "def hypothesis(model)" in b]
    assert len(files) == 2, "the tutorial shows a claim and its baseline"
    out = {}
    for name, code in zip(("my_induction", "my_baseline"), files, strict=True):
        namespace: dict = {}
        exec(compile(code, f"{DOC.name}:{name}", "exec"), namespace)
        out[name] = namespace
    return out


@pytest.mark.parametrize("where", ["shipped", "deep"])
def test_tutorial_example_runs(where):
    files = tutorial_files()
    if where == "deep":  # 6 layers with MLPs and learned positions: the same file, another model
        model = tiny_model(n_layers=6, n_heads=4, attn_only=False, pos="standard", n_ctx=32, d_vocab=50)
        tokens = torch.randint(0, 50, (16, 32), generator=torch.Generator().manual_seed(0))
    else:
        from scrub.data.batches import natural_batch
        from scrub.model.loading import load_model
        model, tokens = load_model(), natural_batch(16, 64, seed=0)
    claim = files["my_induction"]["hypothesis"](model)
    baseline = files["my_baseline"]["hypothesis"](model)
    result = run(model, claim, tokens, baseline=baseline, progress=False, n_bootstrap=100)
    assert result.loss_baseline != result.loss_clean
    assert torch.isfinite(torch.tensor(result.loss_recovered))
    assert result.loss_scrubbed != result.loss_clean  # the claim resamples something


def test_per_position_feature_snippet_runs():
    """The tutorial's per-position snippet, on the worked example: 1.3 then resamples at almost every position."""
    import scrub

    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    (snippet,) = [b for b in blocks if "is_repeat(per_position=True)" in b]
    model = scrub.load_model()
    namespace = {"scrub": scrub, "model": model, "data": scrub.natural_batch(16, 64, seed=0),
                 "g": tutorial_files()["my_induction"]["hypothesis"](model)}
    exec(compile(snippet, f"{DOC.name}:per-position", "exec"), namespace)
    assert namespace["result"].self_draws["1.3"] < 0.05

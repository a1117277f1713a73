"""Tests for scrub.views.plots: a heatmap is written as a PNG without touching pyplot's global state."""

import sys

import torch

from scrub.patching.paths import make_metric, patch_matrix
from scrub.views.plots import head_heatmap, patch_heatmap
from tests.helpers import tiny_model


def test_head_heatmap_writes_png(tmp_path):
    path = head_heatmap(torch.rand(2, 8), tmp_path / "sub" / "h.png", title="t", vmin=0, vmax=1)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pyplot = sys.modules.get("matplotlib.pyplot")
    assert pyplot is None or not pyplot.get_fignums()


def test_patch_heatmap_writes_png(tmp_path):
    model = tiny_model()
    gen = torch.Generator().manual_seed(0)
    ref, cor = (torch.randint(0, 20, (3, 9), generator=gen) for _ in range(2))  # [batch, seq] x2
    matrix = patch_matrix(model, ref, cor, make_metric("loss", ref, cor, torch.arange(2, 7)))
    path = patch_heatmap(matrix, tmp_path / "sub" / "p.png", title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

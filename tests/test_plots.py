"""Tests for scrub.plots: a heatmap is written as a PNG without touching pyplot's global state."""

import sys

import torch

from scrub.plots import head_heatmap


def test_head_heatmap_writes_png(tmp_path):
    path = head_heatmap(torch.rand(2, 8), tmp_path / "sub" / "h.png", title="t", vmin=0, vmax=1)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pyplot = sys.modules.get("matplotlib.pyplot")
    assert pyplot is None or not pyplot.get_fignums()

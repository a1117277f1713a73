"""PNG figures, one function per figure, drawn on ``matplotlib.figure.Figure`` objects (no pyplot state).

Each function takes plain tensors/values and an output path, writes one PNG and returns the path.
"""

from __future__ import annotations

from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)  # attach an Agg canvas explicitly: works whatever backend pyplot would pick
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def head_heatmap(scores: torch.Tensor, path: str | Path, *, title: str, vmin: float | None = None,
                 vmax: float | None = None, cmap: str = "viridis", fmt: str = "{:.2f}") -> Path:
    """Heatmap of a [n_layers, n_heads] score, every cell annotated with its value; rows are layers."""
    values = scores.detach().float().cpu()  # [layer, head]
    n_layers, n_heads = values.shape
    fig = Figure(figsize=(0.7 * n_heads + 2.0, 0.6 * n_layers + 1.4))
    ax = fig.add_subplot()
    image = ax.imshow(values.numpy(), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    for layer in range(n_layers):
        for head in range(n_heads):
            value = float(values[layer, head])
            red, green, blue, _ = image.cmap(image.norm(value))
            dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5  # white text on dark cells
            ax.text(head, layer, fmt.format(value), ha="center", va="center", fontsize=8,
                    color="white" if dark else "black")
    ax.set_xticks(range(n_heads), [str(h) for h in range(n_heads)])
    ax.set_yticks(range(n_layers), [str(layer) for layer in range(n_layers)])
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title)
    fig.colorbar(image, ax=ax)
    return _save(fig, path)

"""PNG figures, one function per figure, drawn on ``matplotlib.figure.Figure`` objects (no pyplot state).

Each function takes plain tensors/values and an output path, writes one PNG and returns the path.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from scrub.patching.paths import PatchMatrix


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
            red, green, blue, _ = image.cmap(image.norm(np.asarray(value)))  # a 0-d array: still one colour
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


# --- figures of the induction study (experiments/induction_study.py) ---------------------------------

def recovery_ladder(labels: list[str], values: torch.Tensor, low: torch.Tensor, high: torch.Tensor,
                    series: list[str], path: str | Path, *, title: str, reference: list[float | None] | None = None,
                    reference_label: str = "published") -> Path:
    """Horizontal bars of loss recovered per hypothesis (rows) for each series (e.g. natural, RRT) with
    95% interval whiskers; ``values``/``low``/``high`` are [series, hypothesis]; optional reference marks."""
    n_series, n_hyp = values.shape
    fig = Figure(figsize=(8.0, 0.42 * n_hyp * max(1, n_series) / 1.5 + 1.6))
    ax = fig.add_subplot()
    height = 0.8 / n_series
    for s in range(n_series):
        y = [i + (s - (n_series - 1) / 2) * height for i in range(n_hyp)]
        v, lo, hi = values[s].tolist(), low[s].tolist(), high[s].tolist()
        err = [[max(0.0, a - b) for a, b in zip(v, lo, strict=True)],
               [max(0.0, b - a) for a, b in zip(v, hi, strict=True)]]
        ax.barh(y, v, height=height, xerr=err, capsize=2, label=series[s], alpha=0.85)
    if reference is not None:
        marks = [(i, r) for i, r in enumerate(reference) if r is not None]
        ax.scatter([r for _, r in marks], [i for i, _ in marks], marker="D", color="black", zorder=3,
                   label=reference_label)
    ax.axvline(0.0, color="grey", lw=0.8)
    ax.axvline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_yticks(range(n_hyp), labels)
    ax.invert_yaxis()
    ax.set_xlabel("loss recovered (95% bootstrap interval)")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def per_example_distribution(labels: list[str], per_example: list[list[float]], path: str | Path, *, title: str,
                             clip: tuple[float, float] = (-1.0, 2.0)) -> Path:
    """Box plots of per-example loss recovered (one box per hypothesis), clipped to ``clip`` for display."""
    lo, hi = clip
    data = [[min(hi, max(lo, x)) for x in xs] or [float("nan")] for xs in per_example]
    fig = Figure(figsize=(8.0, 0.45 * len(labels) + 1.4))
    ax = fig.add_subplot()
    ax.boxplot(data, orientation="horizontal", showfliers=True, flierprops={"markersize": 2})
    ax.set_yticks(range(1, len(labels) + 1), labels)
    ax.invert_yaxis()
    ax.axvline(0.0, color="grey", lw=0.8)
    ax.axvline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel(f"per-example loss recovered (clipped to [{lo}, {hi}])")
    ax.set_title(title)
    return _save(fig, path)


def context_scatter(x: torch.Tensor, y: torch.Tensor, yerr: torch.Tensor, names: list[str], highlight: list[str],
                    path: str | Path, *, title: str, xlabel: str, ylabel: str) -> Path:
    """One point per head (``names``), ``highlight``ed heads drawn in red; every point labelled."""
    fig = Figure(figsize=(6.5, 4.8))
    ax = fig.add_subplot()
    colors = ["tab:red" if n in highlight else "tab:blue" for n in names]
    ax.errorbar(x.tolist(), y.tolist(), yerr=yerr.tolist(), fmt="none", ecolor="lightgrey", zorder=1)
    ax.scatter(x.tolist(), y.tolist(), c=colors, zorder=2)
    for xi, yi, n in zip(x.tolist(), y.tolist(), names, strict=True):
        ax.annotate(n, (xi, yi), textcoords="offset points", xytext=(3, 3), fontsize=7)
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _save(fig, path)


CHANNEL_COLORS = {"q": "tab:blue", "k": "tab:orange", "v": "tab:green", "in": "dimgrey"}


def _name_depth(graph):
    """Column of a node from its component name (node attr ``component`` or its id): inputs, layers, logits."""
    def depth(node) -> float:
        name = str(graph.nodes[node].get("component", node))
        if name in ("embed", "pos"):
            return -1.0
        if name == "logits":
            return float("inf")
        if name.startswith("mlp."):
            return int(name.split(".")[1]) + 0.5
        return float(int(name.split(".")[0]))
    return depth


def _restricted(attrs: dict, channel: str) -> bool:
    """Whether an edge's ``channel`` is claimed only at some positions or (query, key) pairs."""
    mask = attrs.get("qk_mask")
    masked = mask.get(channel) is not None if isinstance(mask, dict) else mask is not None
    return attrs.get("positions") is not None or masked


def hypothesis_graph(graph, path: str | Path, *, title: str, depth=None, focus: tuple[str, ...] = ()) -> Path:
    """Draw a hypothesis graph (networkx DiGraph) in columns by ``depth(node) -> float`` (default: from the
    component names; inputs left, logits right); one arrow per claimed input channel, coloured q/k/v;
    dashed = position-restricted (``positions`` or a ``qk_mask`` on that channel). With ``focus`` nodes, edges
    into them are strong and the rest faint."""
    import networkx as nx

    depth = depth or _name_depth(graph)
    columns: dict[float, list[str]] = {}
    for node in graph.nodes:
        columns.setdefault(depth(node), []).append(str(node))
    order = sorted(columns)
    pos = {}
    for x, d in enumerate(order):
        names = sorted(columns[d])
        for i, name in enumerate(names):
            pos[name] = (x, -(i - (len(names) - 1) / 2))
    tall = max(len(v) for v in columns.values())
    fig = Figure(figsize=(2.6 * len(order) + 1.5, 0.45 * tall + 2.0))
    ax = fig.add_subplot()
    for channel, color in CHANNEL_COLORS.items():
        for dashed in (False, True):
            for strong in (False, True):
                edges = [(s, t) for s, t, a in graph.edges(data=True)
                         if channel in (a.get("via") or "in") and _restricted(a, channel) == dashed
                         and (not focus or (t in focus)) == strong]
                if edges:
                    nx.draw_networkx_edges(graph, pos, edgelist=edges, ax=ax, edge_color=color,
                                           alpha=0.75 if strong else 0.12, width=1.6 if strong else 0.8,
                                           style="dashed" if dashed else "solid", arrows=True, arrowsize=8,
                                           node_size=300, connectionstyle="arc3,rad=0.08")
    nx.draw_networkx_nodes(graph, pos, ax=ax, node_size=300, node_color="white", edgecolors="black")
    nx.draw_networkx_labels(graph, pos, ax=ax, font_size=6)
    for channel, color in CHANNEL_COLORS.items():
        ax.plot([], [], color=color, label=channel)
    ax.plot([], [], color="black", ls="dashed", label="position-restricted or query-key masked")
    ax.legend(loc="upper left", fontsize=7, frameon=False)
    ax.set_title(title)
    ax.set_axis_off()
    return _save(fig, path)


def patch_heatmap(matrix: "PatchMatrix", path: str | Path, *, title: str) -> Path:
    """One PNG: a sender x receiver panel per channel and a sender -> logits column, diverging colours."""
    measured = ~torch.isnan(matrix.effects).all(-1)  # [sender, receiver]: the sender feeds the receiver
    rows = [i for i in range(len(matrix.senders)) if bool(measured[i].any())]
    cols = [j for j in range(len(matrix.receivers)) if bool(measured[:, j].any())]
    senders = [str(s) for s in matrix.senders]  # tick labels
    panels = [(f"-> receiver:{c.value}", matrix.effects[rows][:, cols, k], [senders[i] for i in rows],
               [str(matrix.receivers[j]) for j in cols]) for k, c in enumerate(matrix.channels) if rows]
    panels.append(("-> logits", matrix.to_logits[:, None], senders, ["logits"]))
    finite = torch.cat([p[~torch.isnan(p)].flatten() for _, p, _, _ in panels])
    vmax = float(finite.abs().max()) if finite.numel() else 1.0
    width = sum(0.32 * p.shape[1] + 1.2 for _, p, _, _ in panels)
    fig = Figure(figsize=(width + 1.5, 0.3 * len(matrix.senders) + 1.8))
    axes = fig.subplots(1, len(panels), width_ratios=[p.shape[1] + 3 for _, p, _, _ in panels], squeeze=False)[0]
    for ax, (label, values, ys, xs) in zip(axes, panels, strict=True):
        image = ax.imshow(values.numpy(), cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto")
        ax.set_xticks(range(len(xs)), xs, rotation=90, fontsize=7)
        ax.set_yticks(range(len(ys)), ys, fontsize=7)
        ax.set_title(label, fontsize=9)
    axes[0].set_ylabel("sender")
    fig.suptitle(title, fontsize=10)
    fig.colorbar(image, ax=list(axes), label=f"change in {matrix.metric} (patched - clean)")
    return _save(fig, path)

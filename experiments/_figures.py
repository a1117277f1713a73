"""Figures of the induction study that ``scrub.views.plots`` does not draw: the claim around the induction heads
(only the edges into them and into the mechanism's copies: a whole 3-layer claim has thousands of paths,
and drawing every edge cost most of a quick run), the composition heatmaps, where each head's effect falls,
and the cross-model ladders. Each function writes one PNG and returns its path.
"""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

CHANNEL_COLORS = {"q": "tab:blue", "k": "tab:orange", "v": "tab:green", "in": "dimgrey"}


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def claim_graph(graph: nx.DiGraph, path: Path, *, focus: tuple[str, ...], depth, title: str) -> Path:
    """The claimed inputs of the ``focus`` nodes (the induction heads) and, recursively, of the mechanism's
    copies ("X~R": the previous-token head's, ``mlp.0~token``) that feed them; one arrow per channel; dashed =
    position-restricted. ``depth(node)`` gives the column. Everything else of the claim is left out of the drawing."""
    keep, todo = set(), [n for n in focus if n in graph]
    while todo:
        node = todo.pop()
        if node in keep:
            continue
        keep.add(node)
        todo += [s for s in graph.predecessors(node) if "~" in s]  # mechanism copies (full copies "X#..." are
        # drawn as inputs only: their own inputs are all of X's)
    edges = [(s, t, a) for s, t, a in graph.edges(data=True) if t in keep]
    nodes = set(keep) | {s for s, _, _ in edges} | ({"logits"} if "logits" in graph else set())
    edges += [(s, "logits", graph.edges[s, "logits"]) for s in focus if graph.has_edge(s, "logits")]
    columns: dict[float, list[str]] = {}
    for node in nodes:
        columns.setdefault(depth(node), []).append(node)
    pos = {}
    for x, d in enumerate(sorted(columns)):
        names = sorted(columns[d])
        for i, name in enumerate(names):
            pos[name] = (x, -(i - (len(names) - 1) / 2))
    tall = max(len(v) for v in columns.values())
    fig = Figure(figsize=(2.2 * len(columns) + 1.5, 0.42 * tall + 1.8))
    ax = fig.add_subplot()
    for s, t, a in edges:
        for channel in (a.get("via") or "in"):
            bend = {"q": -0.15, "k": 0.0, "v": 0.15, "in": 0.05}.get(channel, 0.0)
            ax.annotate("", xy=pos[t], xytext=pos[s], arrowprops=dict(
                arrowstyle="-|>", color=CHANNEL_COLORS.get(channel, "black"), lw=1.2, alpha=0.8, shrinkA=9, shrinkB=9,
                linestyle="--" if a.get("positions") is not None else "-", connectionstyle=f"arc3,rad={bend}"))
    for name, (x, y) in pos.items():
        ax.text(x, y, name, ha="center", va="center", fontsize=7,
                bbox=dict(boxstyle="round,pad=0.25", fc="mistyrose" if name in focus else "white", ec="black", lw=0.6))
    for channel, color in CHANNEL_COLORS.items():
        ax.plot([], [], color=color, label=channel)
    ax.plot([], [], color="black", ls="--", label="position-restricted")
    ax.legend(loc="upper left", fontsize=7, frameon=False, bbox_to_anchor=(1.0, 1.0))
    ax.set_xlim(-0.5, len(columns) - 0.5)
    ax.set_ylim(-tall / 2 - 0.5, tall / 2 + 0.5)
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()
    return _save(fig, path)


def composition_heatmap(panels: list[dict], path: Path, *, title: str) -> Path:
    """One row of panels per dataset (``panels``: Composition.to_dict()), senders x (receiver:channel) and a
    sender -> logits column; cells are mean effects (nats), '*' where the interval excludes 0."""
    panels = [p for p in panels if p["paths"] or p["direct"]]
    width = max(len(p["paths"]) for p in panels) / max(1, len(panels[0]["senders"])) + 1  # columns
    height = 2.2 * len(panels) + 0.45 * sum(len(p["senders"]) for p in panels)
    fig = Figure(figsize=(max(6.0, 0.42 * width + 3), height), layout="constrained")
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, p in zip(axes, panels, strict=True):
        cols = list(dict.fromkeys(f"{q['receiver']}:{q['channel']}" if q["channel"] != "in" else q["receiver"]
                                  for q in p["paths"])) + ["logits"]
        values = torch.full((len(p["senders"]), len(cols)), float("nan"))
        star = torch.zeros_like(values, dtype=torch.bool)
        for q in p["paths"]:
            col = f"{q['receiver']}:{q['channel']}" if q["channel"] != "in" else q["receiver"]
            i, j = p["senders"].index(q["sender"]), cols.index(col)
            values[i, j], star[i, j] = q["value"], q["low"] > 0 or q["high"] < 0
        for i, s in enumerate(p["senders"]):
            d = p["direct"][s]
            values[i, -1], star[i, -1] = d["value"], d["low"] > 0 or d["high"] < 0
        finite = values[~values.isnan()]
        vmax = float(finite.abs().max()) if finite.numel() else 1.0
        image = ax.imshow(values.numpy(), cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto")
        for i in range(values.shape[0]):
            for j in range(values.shape[1]):
                if not bool(values[i, j].isnan()):
                    ax.text(j, i, f"{float(values[i, j]):.{2 if vmax >= 0.1 else 3}f}" + ("*" if star[i, j] else ""),
                            ha="center", va="center",
                            fontsize=5.5, rotation=90)
        ax.set_xticks(range(len(cols)), cols, rotation=90, fontsize=7)
        ax.set_yticks(range(len(p["senders"])), p["senders"], fontsize=7)
        ax.set_title(f"{p['data']}: induction head -> later component -> logits (patched - clean loss)", fontsize=8)
        fig.colorbar(image, ax=ax, label="nats")
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def grouped_intervals(groups: list[str], series: list[str], values: list[list[tuple[float, float, float]]],
                      path: Path, *, title: str, xlabel: str, reference: tuple[float, ...] = (0.0,),
                      clip: tuple[float, float] | None = None) -> Path:
    """Horizontal bars: one group per row, one bar per series, (value, low, high) each; NaN skipped. ``clip``:
    the widest x range shown (bars and whiskers beyond it are cut at the frame, and the axis label says so)."""
    n_groups, n_series = len(groups), len(series)
    fig = Figure(figsize=(7.5, 0.35 * n_groups * max(1, n_series) / 1.4 + 1.6))
    ax = fig.add_subplot()
    height = 0.8 / max(1, n_series)
    for s in range(n_series):
        y = [i + (s - (n_series - 1) / 2) * height for i in range(n_groups)]
        v = [values[g][s][0] for g in range(n_groups)]
        lo = [max(0.0, values[g][s][0] - values[g][s][1]) if values[g][s][1] == values[g][s][1] else 0.0
              for g in range(n_groups)]  # (a NaN bound draws no bar)
        hi = [max(0.0, values[g][s][2] - values[g][s][0]) if values[g][s][2] == values[g][s][2] else 0.0
              for g in range(n_groups)]
        ax.barh(y, v, height=height, xerr=[lo, hi], capsize=2, label=series[s], alpha=0.85)
    for x in reference:
        ax.axvline(x, color="grey", lw=0.8, ls="--" if x else "-")
    ax.set_yticks(range(n_groups), groups, fontsize=8)
    ax.invert_yaxis()
    if clip is not None:
        flat = [x for row in values for triple in row for x in triple if x == x]
        low, high = min(flat + [0.0]), max(flat + [1.0])
        if low < clip[0] or high > clip[1]:
            xlabel += f" (axis cut at [{clip[0]}, {clip[1]}])"
        ax.set_xlim(max(clip[0], low - 0.05), min(clip[1], high + 0.05))
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=9)
    ax.legend(loc="best", fontsize=7)
    return _save(fig, path)

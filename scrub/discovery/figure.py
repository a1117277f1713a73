"""The faithfulness curve as a PNG: recovered against the fraction of edges kept, circuit and complement."""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from scrub.discovery.curve import Curve


def curve_png(curve: Curve, path: Path, *, title: str) -> Path:
    """Draw ``curve`` into ``path`` (written whole by the caller's atomic folder)."""
    fig = Figure(figsize=(5.5, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = [p.fraction for p in curve.points]
    ax.plot(x, [p.circuit for p in curve.points], "o-", label=f"circuit (CPR {curve.cpr:.3f}, CMD {curve.cmd:.3f})")
    ax.plot(x, [p.complement for p in curve.points], "s--", label="complement")
    ax.axhline(1.0, color="grey", lw=0.5)
    ax.axhline(0.0, color="grey", lw=0.5)
    ax.set_xlabel("fraction of edges kept (top by score)")
    ax.set_ylabel("recovered")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path

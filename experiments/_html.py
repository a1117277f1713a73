"""The induction study as HTML: ``experiments/results/index.html`` (the cross-model report) and a page per model
(``<model>/index.html``), made from the Markdown reports and the ``results.json`` files the study writes, without
rerunning anything. The sections are the Markdown's; its loss-recovered ladders, the REMIX ladder and the head
scores become interactive views (``scrub.views``), the other figures stay the study's PNGs beside the page.

    python -m experiments._html [RESULTS_DIR]     # default experiments/results
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from scrub.views.page import Html, Part, View, ViewKind, rounded, write_page

RESULTS = Path(__file__).resolve().parent / "results"
REPORT = "induction_study.md"
IMAGE = re.compile(r"^!\[([^\]]*)\]\(([^)\s]+\.png)\)\s*$")
LADDER = re.compile(r"ladder_(induction_baseline|empty)_(candidates|all)\.png")
NOT_ON_INDUCTION_SCALE = ("induction_behavioral", "empty")  # as experiments._report: they drop claimed paths
SERIES = (("natural", "natural text"), ("rrt", "repeated random tokens"))
REMIX_SERIES = (("natural", "good", "natural text, good candidates"), ("natural", "candidates", "natural text, study "
                "candidates"), ("rrt", "candidates", "RRT, study candidates"))
CLIP = (-1.0, 2.0)  # the axis of the ladders, as the PNGs (hover shows the exact value)


def _markdown(text: str) -> str:
    """Markdown to HTML (tables on); links to a model's report point at its page."""
    from markdown_it import MarkdownIt

    markup = MarkdownIt("commonmark", {"html": False}).enable("table").render(text)
    return re.sub(r'href="([^"]*?)induction_study\.md"', r'href="\1index.html"', markup)


def _row(res: dict, data: str, hypothesis: str, baseline: str, positions: str) -> dict | None:
    return next((r for r in res["rows"] if (r["data"], r["hypothesis"], r["baseline"], r["positions"], r["metric"])
                 == (data, hypothesis, baseline, positions, "loss")), None)


def _interval(row: dict | None) -> dict:
    if row is None:
        return {"value": None, "low": None, "high": None}
    return {"value": rounded(row["value"]), "low": rounded(row["ci_low"]), "high": rounded(row["ci_high"]),
            "note": f"clean {row['loss_clean']:.4f}, baseline {row['loss_baseline']:.4f}, scrubbed "
                    f"{row['loss_scrubbed']:.4f}; {row['n_examples']} examples, {row['n_tokens']} tokens"}


def ladder(res: dict, baseline: str, positions: str) -> View:
    """Loss recovered of every hypothesis against ``baseline`` at ``positions``, natural text and RRT."""
    names = [h for h in res["hypotheses"] if baseline == "empty" or h["name"] not in NOT_ON_INDUCTION_SCALE]
    rows = [{"label": h["label"], "reference": None,
             "values": [_interval(_row(res, data, h["name"], baseline, positions)) for data, _ in SERIES]}
            for h in names]
    return View(ViewKind.INTERVALS, f"Loss recovered vs {baseline.replace('_', ' ')}, {positions} positions",
                {"rows": rows, "series": [label for _, label in SERIES], "label": "loss recovered", "clip": CLIP},
                note="Bars: loss recovered, whiskers: 95% bootstrap interval; axis cut at [-1, 2] (hover for the "
                     "exact numbers).")


def remix_ladder(res: dict) -> View | None:
    """Redwood's REMIX ladder, rung by rung, with Redwood's published number as a mark."""
    remix = res.get("remix") or {}
    if not remix.get("rungs"):
        return None

    def row(name: str, data: str, positions: str) -> dict | None:
        return next((r for r in remix["rows"] if (r["hypothesis"], r["data"], r["positions"], r["metric"])
                     == (name, data, positions, "loss")), None)

    rows = [{"label": rung["label"] + (" (ours)" if rung["own"] else ""), "reference": rung["redwood"],
             "values": [_interval(row(rung["name"], d, m)) for d, m, _ in REMIX_SERIES]} for rung in remix["rungs"]]
    return View(ViewKind.INTERVALS, "Redwood's REMIX ladder, loss recovered vs the induction baseline",
                {"rows": rows, "series": [label for _, _, label in REMIX_SERIES], "label": "loss recovered",
                 "clip": CLIP, "reference_label": "Redwood REMIX (their model)"},
                note="Triangles: Redwood's numbers on their own model; axis cut at [-1, 2].")


def head_scores(res: dict) -> View:
    """The head scores the results keep (previous-token on repeated random tokens, prefix matching, copying)."""
    matrices = [{"name": name.replace("_", " "), "values": rounded(values), "row_title": "layer", "col_title": "head",
                 "rows": [str(i) for i in range(len(values))], "cols": [str(i) for i in range(len(values[0]))]}
                for name, values in res["scores"].items()]
    return View(ViewKind.HEATMAP, "Behavioral head scores (interactive)", {"matrices": matrices})


def _figure(name: str, res: dict | None) -> View | None:
    """The interactive view that replaces the figure ``name``, if there is one."""
    if res is None:
        return None
    if match := LADDER.fullmatch(name):
        return ladder(res, match.group(1), match.group(2))
    return remix_ladder(res) if name == "remix_ladder.png" else None


def report_parts(text: str, res: dict | None) -> list[Part]:
    """The Markdown as parts: figure lines that have a view become that view; after the head-score
    heatmap links the interactive heatmap is inserted."""
    parts: list[Part] = []
    chunk: list[str] = []

    def flush() -> None:
        if chunk:
            parts.append(Html(_markdown("\n".join(chunk))))
            chunk.clear()

    for line in text.splitlines():
        match = IMAGE.match(line)
        view = _figure(match.group(2), res) if match else None
        if view is not None:
            flush()
            parts.append(view)
            continue
        chunk.append(line)
        if res is not None and line.startswith("Heatmaps: "):
            flush()
            parts.append(head_scores(res))
    flush()
    return parts


def write_pages(root: Path = RESULTS) -> list[Path]:
    """Write ``root/index.html`` and ``root/<model>/index.html`` for every model folder with a report."""
    written = []
    models = sorted(p.parent for p in root.glob(f"*/{REPORT}") if (p.parent / "results.json").exists())
    nav = Html('<nav><a href="index.html">all models</a>' + "".join(
        f'<a href="{m.name}/index.html">{m.name}</a>' for m in models) + "</nav>")
    for folder in models:
        res = json.loads((folder / "results.json").read_text())
        back = Html('<nav><a href="../index.html">all models</a>' + "".join(
            f'<a href="../{m.name}/index.html">{m.name}</a>' for m in models) + "</nav>")
        parts = [back, *report_parts((folder / REPORT).read_text(), res)]
        written.append(write_page(folder / "index.html", f"Induction study: {folder.name}", parts))
    if (root / REPORT).exists():
        written.append(write_page(root / "index.html", "Induction study",
                                  [nav, *report_parts((root / REPORT).read_text(), None)]))
    return written


if __name__ == "__main__":
    for path in write_pages(Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS):
        print(path)

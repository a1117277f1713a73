"""The HTML of a ``Discovery`` (``scrub discover``): its summary, every edge on the model's graph (kept solid,
uncertain dotted, dropped and kept-but-off-path faint; a slider shows the top k by |effect|), the
faithfulness curve, the held-out run's numbers and distribution, and the claimed edges as a table."""

from __future__ import annotations

import html
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from scrub.claims.sites import Channel, Component, Embed, Head, Logits, Mlp, Pos
from scrub.views.graph import TOP_K, graph_edge, graph_node
from scrub.views.page import Html, Part, View, ViewKind, fragment, heading, rounded, table, write_page
from scrub.views.report import distribution, headline

if TYPE_CHECKING:
    from scrub.discovery.curve import Curve
    from scrub.discovery.result import Discovery, EdgeRecord

FAINT_LIMIT = 600  # edges outside the claim drawn at first only up to this many (a checkbox shows them all)
TABLE_ROWS = 30  # claimed edges listed in the table, by |effect|


def component(name: str) -> Component:
    """The component ``str(component)`` wrote (names in a ``Discovery`` are canonical)."""
    named: dict[str, Component] = {"embed": Embed(), "pos": Pos(), "logits": Logits()}
    if name in named:
        return named[name]
    if name.startswith("mlp."):
        return Mlp(int(name.removeprefix("mlp.")))
    layer, head = name.split(".")
    return Head(int(layer), int(head))


def _value(r: EdgeRecord) -> tuple[float | None, str | None]:
    """What an edge is ranked and drawn by: its exact effect, else its attribution score (then so labelled)."""
    if r.effect is not None:
        return r.effect, None
    return (r.score, "score") if r.score is not None else (None, None)


def _note(r: EdgeRecord) -> str:
    score = f"; score {r.score:+.4g}" if r.score is not None and r.effect is not None else ""
    off = "; kept but on no input → logits path: not in the claim" if r.verdict != "dropped" and not r.in_claim else ""
    return f"{r.verdict} ({r.how}){score}{off}"


def edge_graph(d: Discovery) -> View:
    """Every edge of the search as a graph edge with its effect (or score) and interval; claimed edges are the
    written claim's, the rest faint."""
    components = {name: component(name) for r in d.edges for name in (r.sender, r.receiver)} | {"logits": Logits()}
    n_layers = 1 + max((int(c.depth) for c in components.values() if isinstance(c, (Head, Mlp))), default=-1)
    in_claim = {name for r in d.edges if r.in_claim for name in (r.sender, r.receiver)}
    nodes = [graph_node(name, c, n_layers, claimed=name in in_claim)
             for name, c in sorted(components.items(), key=lambda item: (item[1].depth, item[0]))]
    edges = []
    for r in d.edges:
        value, label = _value(r)
        low, high = r.ci if r.ci is not None and label is None else (None, None)
        edges.append(graph_edge(r.sender, r.receiver, Channel(r.input), claimed=r.in_claim, value=value, low=low,
                                high=high, note=_note(r), status=r.verdict, label=label))
    kept = sum(r.in_claim and r.verdict == "kept" for r in d.edges)
    unsure = sum(r.in_claim and r.verdict == "uncertain" for r in d.edges)
    note = (f"{len(d.claim_edges)} of {len(d.edges)} edges in the claim ({kept} kept, solid; {unsure} uncertain, "
            f"dotted); the others (dropped, or kept on no input → logits path) faint. Width: |effect| (metric without "
            f"the edge − with it; the attribution score where no exact effect was measured), dashed: negative. The "
            f"slider shows the top k by that value; hover an edge for its verdict, score, effect and interval.")
    return View(ViewKind.GRAPH, f"Discovered edges: {d.method}",
                {"nodes": nodes, "edges": edges, "value_label": "effect", "faint_label": "edges outside the claim",
                 "top_k": max(TOP_K, len(d.claim_edges)), "resampled_limit": FAINT_LIMIT}, note=note)


def curve_view(curve: Curve) -> View:
    """Recovered against the fraction of edges kept, for the circuit (top k) and its complement."""
    def series(name: str, which: str, text: str, dashed: bool) -> dict:
        return {"name": name, "dashed": dashed, "points": [
            {"x": p.fraction, "y": rounded(getattr(p, which)),
             "text": f"{text} {p.edges} edges ({p.fraction:.0%}): recovered {getattr(p, which):.4g}"}
            for p in curve.points]}

    return View(ViewKind.LINES, "Faithfulness curve",
                {"series": [series("circuit", "circuit", "the top", False),
                            series("complement", "complement", "every edge but the top", True)],
                 "x_label": "fraction of edges kept (top by |score|)", "y_label": "recovered", "refs": [0.0, 1.0]},
                note=f"CPR {curve.cpr:.3f} (area under the circuit's curve), CMD {curve.cmd:.3f} (area between it and "
                     f"1). Recovered 1: the full model, 0: the empty claim. Hover a point.")


def _summary(d: Discovery) -> Html:
    lines = [line for line in d.summary().splitlines() if not line.startswith("warning: ")]
    out = [f'<div class="scrub-headline"><b>{html.escape(lines[0])}</b></div>']
    out += [f"<div>{html.escape(line)}</div>" for line in lines[1:]]
    out += [f'<div class="scrub-warning">{html.escape(w)}</div>' for w in d.warnings]
    for line in (d.command or "").splitlines():  # the command, then how to re-run the held-out number
        label, sep, rest = line.partition(": ")
        said, code = (f"{label}: ", rest) if sep and not label.startswith("scrub ") else ("", line)
        out.append(f'<div class="scrub-note">{html.escape(said)}<code>{html.escape(code)}</code></div>')
    return Html("\n".join(out))


def _table(d: Discovery) -> Html:
    claimed = sorted((r for r in d.edges if r.in_claim), key=lambda r: -abs(_value(r)[0] or 0.0))

    def num(x: float | None) -> str:
        return "" if x is None else f"{x:+.4g}"

    rows = [(r.edge, r.verdict, r.how, num(r.score), num(r.effect),
             "" if r.ci is None else f"[{r.ci[0]:+.4g}, {r.ci[1]:+.4g}]") for r in claimed[:TABLE_ROWS]]
    return table(("edge", "verdict", "how", "score", "effect", "95% CI"), rows)


def discovery_parts(d: Discovery) -> list[Part]:
    """The views of one discovery: summary, edge graph, curve, held-out run, claimed edges."""
    parts: list[Part] = [_summary(d), edge_graph(d)]
    if d.curve is not None:
        parts.append(curve_view(d.curve))
    if d.heldout is not None:
        held = replace(d.heldout, hypothesis="the found claim", warnings=())  # its warnings are in the summary
        parts += [heading("Held-out run of the found claim", 3), headline(held), distribution(held)]
    if d.claim_edges:
        shown = min(TABLE_ROWS, len(d.claim_edges))
        parts += [heading(f"Claimed edges by |effect| ({shown} of {len(d.claim_edges)})", 3), _table(d)]
    return parts


def discovery_html(d: Discovery) -> str:
    """``Discovery._repr_html_``."""
    return fragment(discovery_parts(d))


def write_discovery(d: Discovery, path: str | Path) -> Path:
    return write_page(path, f"scrub: discovery ({d.method})", discovery_parts(d))

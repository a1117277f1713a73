"""Self-contained HTML: views (a kind and a JSON payload drawn by the inlined ``static/views.js``) assembled into
a notebook fragment or a whole page. No network: the script and the style sheet are inlined, nothing is linked."""

from __future__ import annotations

import hashlib
import html
import math
from dataclasses import dataclass, field
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

from scrub.jsonable import atomic_write, dumps, plain


class ViewKind(str, Enum):
    """The views ``views.js`` draws; the value is the payload's ``kind``."""

    GRAPH = "graph"
    TOKENS = "tokens"
    HEATMAP = "heatmap"
    ATTENTION = "attention"
    HISTOGRAM = "histogram"
    INTERVALS = "intervals"
    LINES = "lines"


@dataclass(frozen=True)
class View:
    """One interactive view: ``data`` is its JSON-ready payload (non-finite numbers become null)."""

    kind: ViewKind
    title: str
    data: dict[str, Any] = field(default_factory=dict)
    note: str = ""  # one or two sentences under the title, plain text


@dataclass(frozen=True)
class Html:
    """Markup built by scrub itself (already escaped where it holds text), placed as it is."""

    markup: str


Part = View | Html


def rounded(values: Any, digits: int = 5) -> Any:
    """A float, or nested lists of them, to ``digits`` significant digits (None where not finite): payloads of
    big matrices stay small."""
    if isinstance(values, (list, tuple)):
        return [rounded(v, digits) for v in values]
    if values is None or not math.isfinite(float(values)):
        return None
    return float(f"{float(values):.{digits}g}")


def _asset(name: str) -> str:
    return (resources.files("scrub.views") / "static" / name).read_text(encoding="utf-8")


def view_html(view: View, view_id: str) -> str:
    """The view's element: a titled div holding its payload as JSON (``</`` escaped so it cannot end the script)."""
    payload = dumps({**plain(view.data), "kind": view.kind.value}, separators=(",", ":"))
    payload = payload.replace("</", "<\\/")
    note = f'<div class="scrub-note">{html.escape(view.note)}</div>' if view.note else ""
    return (f'<div class="scrub-section"><h3>{html.escape(view.title)}</h3>{note}'
            f'<div class="scrub-view scrub-{view.kind.value}" id="{view_id}">'
            f'<script type="application/json">{payload}</script></div></div>')


def body(parts: Sequence[Part]) -> str:
    """The parts' markup; view ids are unique on a page and, by a hash of the content, across notebook cells."""
    digest = hashlib.sha1(repr([p.data if isinstance(p, View) else p.markup for p in parts]).encode()).hexdigest()[:8]
    out = []
    for i, part in enumerate(parts):
        out.append(view_html(part, f"scrub-{digest}-{i}") if isinstance(part, View) else part.markup)
    return "\n".join(out)


def fragment(parts: Sequence[Part]) -> str:
    """What ``_repr_html_`` returns: the parts with the style sheet and the script inlined."""
    return (f'<div class="scrub-page"><style>{_asset("views.css")}</style>{body(parts)}'
            f'<script>{_asset("views.js")}</script></div>')


def page(title: str, parts: Sequence[Part]) -> str:
    """A whole HTML document that renders from a file with no network."""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{html.escape(title)}</title><style>{_asset("views.css")}</style></head>\n'
            f'<body><div class="scrub-page">{body(parts)}</div>\n<script>{_asset("views.js")}</script></body></html>\n')


def write_page(path: str | Path, title: str, parts: Sequence[Part]) -> Path:
    """Write ``page(title, parts)`` to ``path`` (parent folders made; through a rename, so an interrupted write
    leaves the earlier page whole) and return the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(out, page(title, parts))


def heading(text: str, level: int = 2) -> Html:
    return Html(f"<h{level}>{html.escape(text)}</h{level}>")


def paragraph(text: str, cls: str = "") -> Html:
    attr = f' class="{cls}"' if cls else ""
    return Html(f"<p{attr}>{html.escape(text)}</p>")


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> Html:
    """A plain table of text cells (escaped)."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    lines = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return Html(f"<table><thead><tr>{head}</tr></thead><tbody>{lines}</tbody></table>")

"""``Discovery``: what circuit discovery found, per edge and as a claim, and how to write it down.

Every edge has a record (attribution score, verified effect, interval, verdict, how it was decided). The
found claim is the kept edges (uncertain ones included) that lie on an input -> logits path; ``write``
turns it into a hypothesis file that ``scrub run FILE`` runs as it is, ``write_csv`` into an edge table.
Files are written atomically (a temporary file in the same folder, then a rename).
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import networkx as nx

from scrub.discovery.curve import Curve
from scrub.discovery.edges import Edge
from scrub.experiment.runner import ScrubResult
from scrub.jsonable import atomic_write, plain

Method = Literal["eap", "eap-ig", "acdc", "eap-ig+verify"]
CSV_COLUMNS = ("edge", "sender", "receiver", "input", "score", "effect", "ci_low", "ci_high", "verdict", "how",
               "in_claim")


@dataclass(frozen=True)
class EdgeRecord:
    """One edge: ``score`` (attribution, None for acdc), ``effect`` (exact: metric without − with the edge at
    its decision, None where not evaluated), ``ci`` (95% bootstrap interval of the effect), ``verdict``
    ("kept", "dropped", "uncertain"), ``how`` it was decided, and whether it is in the written claim."""

    edge: str
    sender: str
    receiver: str
    input: str
    score: float | None
    effect: float | None
    ci: tuple[float, float] | None
    verdict: str
    how: str
    in_claim: bool

    @classmethod
    def of(cls, edge: Edge, **fields) -> "EdgeRecord":
        return cls(edge=str(edge), sender=str(edge.sender), receiver=str(edge.receiver), input=edge.input, **fields)


@dataclass(frozen=True)
class Passes:
    forward: int  # forward passes over the discovery examples (an exact claim counts one per draw)
    backward: int


@dataclass(frozen=True)
class Discovery:
    """The result of ``scrub.discover``; ``heldout`` is ``scrub.run`` of the claim on held-out data."""

    method: Method
    metric: str
    counterfactual: str
    threshold: float
    seed: int
    edges: tuple[EdgeRecord, ...]
    claim_edges: tuple[str, ...]  # the edges of the written claim, in the order of ``edges``
    heldout: ScrubResult | None
    curve: Curve | None
    passes: Passes
    skipped: int
    spot_checked: int
    spot_violations: int
    n_examples: int
    seconds: float
    command: str = ""
    warnings: tuple[str, ...] = ()
    graph: nx.DiGraph = field(default_factory=nx.DiGraph, compare=False, repr=False)

    @property
    def kept(self) -> tuple[EdgeRecord, ...]:
        return tuple(r for r in self.edges if r.in_claim)

    def to_dict(self) -> dict:
        """JSON-ready fields: ``edges`` as dicts, ``loss_recovered`` and ``ci`` of the held-out run."""
        held = self.heldout
        return {
            "method": self.method, "metric": self.metric, "counterfactual": self.counterfactual,
            "threshold": self.threshold, "seed": self.seed, "n_examples": self.n_examples,
            "edges": [plain(asdict(r)) for r in self.edges], "claim_edges": list(self.claim_edges),
            "loss_recovered": None if held is None else plain(held.loss_recovered),
            "ci": None if held is None else plain([held.ci_low, held.ci_high]),
            "heldout": None if held is None else held.to_dict(),
            "curve": None if self.curve is None else self.curve.to_dict(),
            "passes": asdict(self.passes), "skipped": self.skipped, "spot_checked": self.spot_checked,
            "spot_violations": self.spot_violations, "seconds": self.seconds, "warnings": list(self.warnings),
        }

    def summary(self) -> str:
        kept = sum(r.verdict == "kept" and r.in_claim for r in self.edges)
        unsure = sum(r.verdict == "uncertain" and r.in_claim for r in self.edges)
        lines = [f"{self.method} ({self.counterfactual}, {self.metric}, τ={self.threshold:g}): {len(self.claim_edges)} "
                 f"of {len(self.edges)} edges in the claim ({kept} kept, {unsure} uncertain); "
                 f"{self.passes.forward} forward and {self.passes.backward} backward passes, {self.seconds:.1f} s"]
        if self.heldout is not None:
            h = self.heldout
            lines.append(f"held out: {h.metric} recovered {h.loss_recovered:.3f} [95% CI {h.ci_low:.3f}, "
                         f"{h.ci_high:.3f}] on {h.n_examples} examples")
        if self.curve is not None:
            lines.append(f"faithfulness curve: CPR {self.curve.cpr:.3f}, CMD {self.curve.cmd:.3f}")
        return "\n".join(lines + [f"warning: {w}" for w in self.warnings])

    def _repr_html_(self) -> str:
        """The notebook view: summary, the edges on the model's graph, the curve, the held-out run
        (``scrub.views.discovery``)."""
        from scrub.views.discovery import discovery_html

        return discovery_html(self)

    def to_html(self, path: str | Path) -> Path:
        """The notebook view as one self-contained HTML page at ``path``."""
        from scrub.views.discovery import write_discovery

        return write_discovery(self, path)

    def hypothesis_text(self) -> str:
        """The hypothesis file: docstring (how it was found), one ``add_path`` line per claimed edge."""
        records = {r.edge: r for r in self.edges}
        held = self.heldout
        found = (f"held-out {held.metric} recovered {held.loss_recovered:.4f} [95% CI {held.ci_low:.4f}, "
                 f"{held.ci_high:.4f}] on {held.n_examples} examples (seed {self.seed})"
                 if held is not None else "no held-out run")
        doc = [f"Circuit found by scrub discover: method {self.method}, counterfactual {self.counterfactual}, metric "
               f"{self.metric}, threshold {self.threshold:g}, seed {self.seed}, on {self.n_examples} examples;",
               f"{found}.", "",
               f"{len(self.claim_edges)} of {len(self.edges)} edges claimed (kept and uncertain edges on an input -> "
               f"logits path); each line gives the edge's verified effect (metric without it minus with it) and its "
               f"95% interval."]
        if self.command:
            doc += ["", f"Command: {self.command}"]
        lines = ['"""' + "\n".join(doc) + '\n"""', "", "import networkx as nx", "",
                 "from scrub.claims.hypothesis import add_path", "", "", "def hypothesis(model):",
                 "    g = nx.DiGraph()"]
        for name in self.claim_edges:
            r = records[name]
            steps = ", ".join(repr(s) for s in _steps(r))
            lines.append(f"    add_path(g, {steps})  # {_comment(r)}")
        lines.append("    return g")
        return "\n".join(lines) + "\n"

    def write(self, path: str | Path) -> Path:
        """Write the hypothesis file (atomically); returns its path."""
        return atomic_write(Path(path), self.hypothesis_text())

    def write_csv(self, path: str | Path) -> Path:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(CSV_COLUMNS)
        for r in self.edges:
            low, high = r.ci if r.ci is not None else (None, None)
            w.writerow([r.edge, r.sender, r.receiver, r.input, r.score, r.effect, low, high, r.verdict, r.how,
                        r.in_claim])
        return atomic_write(Path(path), buf.getvalue())


def _steps(r: EdgeRecord) -> tuple:
    """The ``add_path`` steps of one edge: into a head with its input, else straight."""
    return (r.sender, (r.receiver, r.input)) if r.input != "in" else (r.sender, r.receiver)


def _comment(r: EdgeRecord) -> str:
    score = "" if r.score is None else f"score {r.score:+.4g}; "
    if r.effect is None or r.ci is None:
        return f"{score}{r.verdict} ({r.how})"
    return f"{score}effect {r.effect:+.4g} [{r.ci[0]:+.4g}, {r.ci[1]:+.4g}] {r.verdict}"


__all__ = ["Discovery", "EdgeRecord", "Passes", "atomic_write"]

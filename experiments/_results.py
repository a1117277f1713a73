"""The induction study's results as data: ``StudyResults`` (one model's run) and its JSON form, what the report
keys on (Redwood's published numbers, the hypothesis groups, the thresholds) and the readings of a result that
both reports make (what a graph claims into the induction heads, which paths compose, the K-path routes).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import networkx as nx

if TYPE_CHECKING:  # (the study imports this module: types only)
    from experiments._claims import RrtScores
    from experiments._composition import Composition, KPaths
    from experiments._context import Sensitivity
    from experiments._evaluate import EffectSplit, Recovery
    from experiments.induction_study import StudyConfig
    from hypotheses._heads import HeadRoles

REDWOOD_SOURCE = ("Chan, Garriga-Alonso, Goldowsky-Dill, Greenblatt, Lin, Nitishinskaya, Radhakrishnan, Shlegeris, "
                  "Thomas (Redwood Research), \"Causal scrubbing: results on induction heads\", AI Alignment Forum / "
                  "LessWrong, 3 Dec 2022, https://www.lesswrong.com/posts/j6s9H9SHrEhEfuJnq — measured on their own "
                  "2-layer attention-only model (OpenWebText) against the baseline that resamples every input of the "
                  "induction heads; the naive (minimal) hypothesis explains about 35% and their refined one 89%")
REDWOOD = (("induction_v_only", 0.90, "0.90"), ("induction_q_only", 0.51, "0.51"), ("induction_k_only", 0.83, "0.83"),
           ("induction_minimal", 0.36, "0.35–0.37"),
           ("induction_refined", None, "— (ours; Redwood's own refined hypothesis, a different claim: 0.89)"))
# (the refinements are this project's own: no Redwood number is drawn beside them)
KEY = (("induction_v_only", "induction_baseline"), ("induction_q_only", "induction_baseline"),
       ("induction_k_only", "induction_baseline"), ("induction_minimal", "induction_baseline"),
       ("induction_refined", "induction_baseline"), ("induction_behavioral", "empty"))  # (hypothesis, baseline)
NOT_ON_INDUCTION_SCALE = ("induction_behavioral", "empty")  # they drop paths the induction baseline keeps
REFINEMENTS = ("induction_prev_heads", "induction_positions", "induction_long_prefix", "induction_layer0_qv",
               "induction_direct_k", "induction_restricted", "induction_refined")
SENSITIVE_NATS = 0.01  # a head is context-sensitive if resampling its far input costs >= this and > 2 s.e.
OTHER_EMBEDDING = "induction_minimal_other_embedding"  # built by the study for models with MLPs
K_VIA_MLP0 = "induction_minimal_k_via_mlp0"  # built by the study for models with MLPs
COMPOSES = 0.1  # a later component "composes" with an induction head if a path through it moves the loss by
# at least this share of the head's direct effect, with an interval that excludes 0


@dataclass(frozen=True)
class HypothesisInfo:
    name: str
    label: str
    description: str
    n_paths: int
    path: str
    graph: nx.DiGraph
    claimed: str = ""  # what the graph claims into the induction heads on this model, in words


@dataclass(frozen=True)
class StudyResults:
    config: StudyConfig
    command: str
    roles: HeadRoles
    scores_rrt: RrtScores  # previous_token [n_layers, n_heads] on repeated random tokens
    hypotheses: tuple[HypothesisInfo, ...]
    rows: tuple[Recovery, ...]  # one per (data, hypothesis, baseline, positions)
    per_head: tuple[Recovery, ...]  # each behavioral head's mechanism (natural text)
    sensitivity: Sensitivity
    elapsed: float
    figures: tuple[str, ...]
    model: dict | None = None  # experiments.induction_study.model_info
    splits: tuple[EffectSplit, ...] = ()  # each behavioral head (natural text)
    composition: tuple[Composition, ...] = ()  # natural text and RRT
    timings: dict[str, float] | None = None  # seconds per stage of the run
    k_paths: tuple[KPaths, ...] = ()  # natural text and RRT
    remix: dict | None = None  # experiments._remix.run_remix: Redwood's REMIX ladder (JSON-ready)
    discovery: dict | None = None  # experiments._discovery.run_discovery: each behavioral head's inputs (JSON-ready)

    def row(self, data: str, hypothesis: str, baseline: str = "induction_baseline",
            positions: str = "candidates") -> Recovery:
        key = (data, hypothesis, baseline, positions)
        return next(r for r in self.rows if (r.data, r.hypothesis, r.baseline, r.positions) == key)

    def label(self, name: str) -> str:
        return self.info(name).label

    def info(self, name: str) -> HypothesisInfo:
        return next(h for h in self.hypotheses if h.name == name)

    def sensitive(self) -> list[str]:
        s = self.sensitivity
        return [f"{lay}.{h}" for lay in range(s.increase.shape[0]) for h in range(s.increase.shape[1])
                if float(s.increase[lay, h]) >= SENSITIVE_NATS
                and float(s.increase[lay, h]) > 2 * float(s.stderr[lay, h])]

    def summary(self) -> dict:
        """JSON form of the results (an output format; the cross-model report reads it)."""
        keep = lambda r: {k: v for k, v in asdict(r).items() if k != "per_example"}  # noqa: E731
        sc = self.roles.scores
        return {"command": self.command, "config": asdict(self.config), "elapsed_s": self.elapsed,
                "timings_s": dict(self.timings or {}),
                "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "model": self.model,
                "roles": {k: getattr(self.roles, k) for k in ("induction", "behavioral", "previous_token",
                                                              "previous_like", "further_back", "fallbacks",
                                                              "previous_of", "embedding", "mlp0_token_share")},
                "scores": {name: getattr(sc, name).tolist()
                           for name in ("previous_token", "prefix_matching", "copying")},
                "hypotheses": [{"name": h.name, "label": h.label, "n_paths": h.n_paths, "path": h.path,
                                "claimed": h.claimed} for h in self.hypotheses],
                "rows": [keep(r) for r in self.rows], "per_head": [keep(r) for r in self.per_head],
                "effect_split": [asdict(s) for s in self.splits],
                "composition": [c.to_dict() for c in self.composition],
                "k_paths": [k.to_dict() for k in self.k_paths],
                "remix": self.remix, "discovery": self.discovery,
                "context_sensitivity": {"window": self.sensitivity.window, "late_start": self.sensitivity.late_start,
                                        "increase": self.sensitivity.increase.tolist(),
                                        "stderr": self.sensitivity.stderr.tolist(),
                                        "sensitive": self.sensitive(), "threshold_nats": SENSITIVE_NATS},
                "figures": list(self.figures)}


def claimed_inputs(graph: nx.DiGraph, roles, model=None) -> str:
    """What ``graph`` claims into each induction head and into the copies (alias nodes) that feed them, in
    words: "1.3: q <- embed; k <- 0.3~1.3; v <- embed. 0.3~1.3 (= 0.3): v <- embed; q, k <- pos". With
    ``model``, a channel that reads every input it has in the full graph says so."""
    from scrub.claims.hypothesis import full_graph

    full = full_graph(model) if model is not None else None

    def inputs(node: str) -> str:
        by: dict[tuple[str, bool], list[str]] = {}  # (channel, position-restricted) -> component names
        for s, _, a in graph.in_edges(node, data=True):
            name = s.split("#")[0]  # a full copy "X#..." stands for X with all its inputs
            for c in (a.get("via") or ["in"]):
                by.setdefault((c, a.get("positions") is not None), []).append(name)
        if not by:
            return "nothing (all resampled)"
        comp = graph.nodes[node].get("component", node)
        every: dict[str, set[str]] = {}
        if full is not None and comp in full:
            for s, _, a in full.in_edges(comp, data=True):
                for c in (a.get("via") or ["in"]):
                    every.setdefault(c, set()).add(s)

        def describe(c: str, senders: list[str]) -> str:
            have, full_set = set(senders), every.get(c, set())
            if have == full_set and len(senders) > 3:
                return f"all its inputs ({len(senders)})"
            if len(senders) <= 6:
                return ", ".join(sorted(senders))
            if have < full_set and len(full_set - have) <= 3:
                return f"all its inputs but {', '.join(sorted(full_set - have))}"
            return f"{len(senders)} inputs ({', '.join(sorted(senders)[:3])}, ...)"

        groups: dict[tuple[str, bool], list[str]] = {}  # (description, restricted) -> channels
        for (c, restricted) in sorted(by):
            groups.setdefault((describe(c, by[c, restricted]), restricted), []).append(c)
        parts = [f"{', '.join(c for c in chans if c != 'in') or 'in'}"
                 f"{' at no-match keys' if restricted else ''} <- {what}"
                 for (what, restricted), chans in groups.items()]
        return "; ".join(parts)

    out, seen, todo = [], set(), [h for h in roles.induction if h in graph]
    while todo:
        node = todo.pop(0)
        if node in seen:
            continue
        seen.add(node)
        comp = graph.nodes[node].get("component")
        out.append(f"{node}{f' (= {comp})' if comp and comp != node.split('~')[0] else ''}: {inputs(node)}")
        todo += sorted(s for s in graph.predecessors(node) if "~" in s)  # the mechanism's copies
    return ". ".join(out) if out else "no induction head in this graph"


def training_rrt_share(model: str) -> float | None:
    """The share of repeated-random-token rows in the training recipe of a scrub checkpoint (None if unknown)."""
    from scrub.model.loading import ASSETS

    name = str(model)
    config = (ASSETS / name if (ASSETS / name / "config.json").is_file() else Path(name)) / "config.json"
    try:
        return float(json.loads(config.read_text())["meta"]["recipe"].get("rrt_frac", 0.0))
    except (OSError, KeyError, ValueError, TypeError):
        return None


def composers(comp: dict) -> list[dict]:
    """Paths from an induction head through a later component whose interval excludes 0 and whose size is at
    least ``COMPOSES`` of the sender's direct effect (or of the largest direct effect if that is ~0)."""
    scale = max([abs(d["value"]) for d in comp["direct"].values()] or [0.0])
    out = []
    for p in comp["paths"]:
        direct = abs(comp["direct"][p["sender"]]["value"]) or scale
        if (p["low"] > 0 or p["high"] < 0) and abs(p["value"]) >= COMPOSES * direct:
            out.append(p)
    return sorted(out, key=lambda p: -abs(p["value"]))


def k_path_summary(k: dict) -> list[tuple[str, str, dict, list[dict]]]:
    """Per (induction head, previous-token head): the direct route and the indirect routes whose interval
    excludes 0, largest first."""
    out = []
    for pair in dict.fromkeys((p["receiver"], p["previous"]) for p in k["paths"]):
        rows = [p for p in k["paths"] if (p["receiver"], p["previous"]) == pair]
        direct = next(p for p in rows if p["route"] == "direct")
        found = sorted((p for p in rows if p["route"] != "direct" and (p["low"] > 0 or p["high"] < 0)),
                       key=lambda p: -abs(p["value"]))
        out.append((pair[0], pair[1], direct, found))
    return out

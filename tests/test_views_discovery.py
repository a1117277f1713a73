"""The HTML of a ``Discovery`` (``scrub.views.discovery``): every edge in the graph payload with its verdict,
value and interval, the faithfulness curve, the page of a real discovery, and ``scrub discover --html``."""

import json
import re

import pytest
import torch

from scrub.cli import main
from scrub.discovery import Discovery, EdgeRecord, discover
from scrub.discovery.curve import Curve, CurvePoint
from scrub.discovery.result import Passes
from scrub.views.discovery import component, edge_graph
from scrub.views.graph import TOP_K, column
from tests.helpers import random_tokens, save_tiny_checkpoint, tiny_model
from tests.test_discovery_cli import FLAGS

PAYLOAD = re.compile(r'<script type="application/json">(.*?)</script>', re.S)


def payloads(markup: str) -> list[dict]:
    return [json.loads(m.replace("<\\/", "</")) for m in PAYLOAD.findall(markup)]


def record(sender, receiver, channel, *, score=None, effect=None, ci=None, verdict="kept", how="exact",
           in_claim=True) -> EdgeRecord:
    into = f"{receiver}:{channel}" if channel != "in" else receiver
    return EdgeRecord(f"{sender} -> {into}", sender, receiver, channel, score, effect, ci, verdict, how, in_claim)


RECORDS = (
    record("embed", "0.1", "v", score=0.2, effect=0.05, ci=(0.03, 0.07)),  # kept: value the effect, with its ci
    record("0.1", "1.2", "k", score=-0.01, effect=-0.02, ci=(-0.04, 0.001), verdict="uncertain"),
    record("pos", "1.2", "q", score=0.001, effect=0.0, ci=(0.0, 0.0), verdict="dropped", in_claim=False),
    record("mlp.0", "1.2", "q", score=0.3, how="not searched"),  # no effect: the score is the value
    record("1.2", "logits", "in", how="not searched"),  # neither: drawn without a value
    record("0.1", "logits", "in", effect=0.5, ci=(0.4, 0.6), in_claim=False),  # kept on no input -> logits path
)


def made(records=RECORDS, curve: Curve | None = None) -> Discovery:
    claim = tuple(r.edge for r in records if r.in_claim)
    return Discovery(method="eap-ig+verify", metric="loss", counterfactual="resample", threshold=0.01, seed=0,
                     edges=records, claim_edges=claim, heldout=None, curve=curve, passes=Passes(3, 1), skipped=0,
                     spot_checked=0, spot_violations=0, n_examples=4, seconds=0.5, command="scrub discover --n 4",
                     warnings=("a <warning>",))


def test_graph_payload_holds_every_edge_with_verdict_value_and_interval():
    d = made()
    view = edge_graph(d)
    edges = view.data["edges"]
    ends = [(r.sender, r.receiver, r.input) for r in RECORDS]
    assert [(e["source"], e["target"], e["channel"]) for e in edges] == ends
    assert [e["claimed"] for e in edges] == [r.in_claim for r in RECORDS]
    assert [e["status"] for e in edges] == [r.verdict for r in RECORDS]
    assert [(e["value"], e["low"], e["high"]) for e in edges] == [
        (0.05, 0.03, 0.07), (-0.02, -0.04, 0.001), (0.0, 0.0, 0.0), (0.3, None, None), (None, None, None),
        (0.5, 0.4, 0.6)]
    assert [e.get("label") for e in edges] == [None, None, None, "score", None, None]
    assert edges[0]["note"] == "kept (exact); score +0.2"
    assert edges[3]["note"] == "kept (not searched)"  # its score is the value itself
    assert "not in the claim" in edges[5]["note"] and "not in the claim" not in edges[2]["note"]
    nodes = {n["id"]: n for n in view.data["nodes"]}
    assert set(nodes) == {"embed", "pos", "0.1", "1.2", "mlp.0", "logits"}
    assert {n: nodes[n]["claimed"] for n in ("pos", "0.1", "logits")} == {"pos": False, "0.1": True, "logits": True}
    assert nodes["1.2"]["col"] == column(component("1.2"), 2) == 3.0 and nodes["logits"]["col"] == 6.0
    assert view.data["top_k"] == TOP_K and view.data["faint_label"] == "edges outside the claim"


def test_page_and_notebook_view_hold_the_graph_curve_and_table(tmp_path):
    curve = Curve((CurvePoint(0, 0.0, 0.0, 1.0), CurvePoint(3, 0.5, 0.7, 0.2), CurvePoint(6, 1.0, 1.0, 0.0)),
                  cpr=0.6, cmd=0.4)
    d = made(curve=curve)
    markup = d.to_html(tmp_path / "sub" / "found.html").read_text()
    assert not re.search(r'(src|href)\s*=\s*["\']?(https?:)?//', markup)  # nothing loaded from anywhere
    graph, lines = payloads(markup)
    assert graph["kind"] == "graph" and len(graph["edges"]) == len(RECORDS)
    assert lines["kind"] == "lines" and [s["name"] for s in lines["series"]] == ["circuit", "complement"]
    assert [(p["x"], p["y"]) for p in lines["series"][0]["points"]] == [(0.0, 0.0), (0.5, 0.7), (1.0, 1.0)]
    assert [p["y"] for p in lines["series"][1]["points"]] == [1.0, 0.2, 0.0]
    assert "a &lt;warning&gt;" in markup and "scrub discover --n 4" in markup
    assert "<td>embed -&gt; 0.1:v</td><td>kept</td>" in markup  # the claimed edges' table
    assert "<td>pos -&gt; 1.2:q</td>" not in markup  # dropped: not in the table
    assert payloads(d._repr_html_()) == [graph, lines]


def test_a_real_discovery_page_has_every_edge_and_the_heldout_run(tmp_path):
    model = tiny_model(dtype=torch.float64, scale=0.4)
    d = discover(model, random_tokens(16, 10, seed=7), metric="loss", threshold=0.001, draws=1, n_bootstrap=50)
    found = payloads(d.to_html(tmp_path / "d.html").read_text())
    assert [p["kind"] for p in found] == ["graph", "lines", "histogram"]
    graph = found[0]
    assert len(graph["edges"]) == len(d.edges) and {e["status"] for e in graph["edges"]} == {"kept", "uncertain",
                                                                                             "dropped"}
    assert sum(e["claimed"] for e in graph["edges"]) == len(d.claim_edges)
    assert graph["top_k"] == max(TOP_K, len(d.claim_edges))
    assert d.heldout is not None and found[2]["overall"] == pytest.approx(d.heldout.loss_recovered)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


def test_cli_discover_html(checkpoint, tmp_path, capsys):
    page = tmp_path / "views" / "out.html"
    code = main(["discover", "--model", str(checkpoint), *FLAGS, "--json", "--html", str(page)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    d = json.loads(captured.out)
    assert d["html"] == str(page)
    found = payloads(page.read_text())
    assert [p["kind"] for p in found] == ["graph", "lines", "histogram"]
    assert [(e["source"], e["target"], e["channel"]) for e in found[0]["edges"]] == [
        (e["sender"], e["receiver"], e["input"]) for e in d["edges"]]
    assert [e["claimed"] for e in found[0]["edges"]] == [e["in_claim"] for e in d["edges"]]


def test_cli_discover_bad_html_path_exits_2_before_work(tmp_path, capsys):
    assert main(["discover", "--model", str(tmp_path / "no-such-model"), "--html", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "--html" in err and "no .html suffix" in err and len(err.strip().splitlines()) == 1


def test_the_command_and_the_rerun_show_on_their_own_lines():
    from dataclasses import replace

    from scrub.views.discovery import _summary

    d = replace(made(), command="scrub discover --n 4\nRe-run held out: scrub run discovered.py --n 4")
    markup = str(_summary(d))
    assert '<div class="scrub-note"><code>scrub discover --n 4</code></div>' in markup
    assert '<div class="scrub-note">Re-run held out: <code>scrub run discovered.py --n 4</code></div>' in markup

"""Hypothesis graphs: writing them, and a clear error for every kind of bad claim."""

from __future__ import annotations

import networkx as nx
import pytest
import torch

from scrub.claims.features import current_token
from scrub.claims.files import load_hypothesis
from scrub.claims.hypothesis import HypothesisError, add_path, check_on, empty_graph, full_graph, validate
from scrub.claims.masks import previous_position, within
from scrub.claims.sites import Channel
from scrub.engine.treeify import TreeTooLargeError, Unit, treeify
from tests.helpers import tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model(n_layers=2, n_heads=3, pos="shortformer")


def graph(*paths) -> nx.DiGraph:
    g = nx.DiGraph()
    for p in paths:
        add_path(g, *p)
    return g


def test_add_path_merges_channels_and_validate_splits_them(model):
    g = graph(["embed", ("0.0", "v"), ("1.2", "k"), "logits"], ["0.0", ("1.2", "v")])
    assert g.edges["0.0", "1.2"]["via"] == "kv"
    claim = validate(g, model)
    into = {(e.source, e.channel) for e in claim.inputs_of("1.2")}
    assert into == {("0.0", Channel.K), ("0.0", Channel.V)}
    assert claim.n_paths() == 2  # embed -> 0.0 -> 1.2 (k), embed -> 0.0 -> 1.2 (v)


def test_query_key_masks_go_on_every_channel_of_their_edge(model):
    """A qk_mask on a via="kv" edge masks its k and v; an equal mask built separately may mask another edge into
    the same input; unmasked edges into a masked input, and other edges, carry no mask."""
    g = graph(["embed", ("0.0", "v"), ("1.2", "k"), "logits"], ["embed", ("1.2", "qv")], ["pos", ("1.2", "q")])
    g.edges["embed", "1.2"]["via"] = "qkv"
    g.edges["embed", "1.2"]["qk_mask"] = within(2)
    g.edges["0.0", "1.2"]["qk_mask"] = within(2)  # equal to the other: one mask per input
    g.edges["embed", "0.0"]["qk_mask"] = previous_position()
    claim = validate(g, model)
    masks = {(e.source, e.target, e.channel.value): e.qk_mask for e in claim.edges}
    assert masks == {("embed", "1.2", "q"): within(2), ("embed", "1.2", "k"): within(2),
                     ("embed", "1.2", "v"): within(2), ("0.0", "1.2", "k"): within(2), ("pos", "1.2", "q"): None,
                     ("embed", "0.0", "v"): previous_position(), ("1.2", "logits", "in"): None}
    assert claim.n_paths() == 5
    check_on(claim, torch.zeros(2, 12, dtype=torch.long))


def test_full_graph_counts_paths(model):
    claim = validate(full_graph(model), model)
    # logits <- embed (1) + 3 layer-0 heads x (embed via q,k,v + pos via q,k: 5)
    #   + 3 layer-1 heads x 3 channels x (1 embed + 2 pos-ish + 3 heads x 5)
    layer0 = 3 * 5
    per_channel = 1 + 3 * 5 + 0  # embed + each layer-0 head's 5 input paths
    layer1 = 3 * (3 * per_channel + 2)  # +2: pos enters q and k directly
    assert claim.n_paths() == 1 + layer0 + layer1
    assert validate(empty_graph(), model).root is None


@pytest.mark.parametrize("build, message", [
    (lambda: graph(["embed", ("3.9", "v"), "logits"]), "unknown head '3.9'.*2 layers x 3 heads"),
    (lambda: graph(["embed", ("0.0", "v"), "logits"], ["1.0", ("0.0", "k")]), "backwards or sideways"),
    (lambda: graph(["embed", ("0.0", "v"), ("0.1", "k"), "logits"]), "backwards or sideways"),
    (lambda: graph(["embed", ("0.0", "v")]), "no path that reaches 'logits'"),
    (lambda: graph(["pos", ("0.0", "v"), "logits"]), "positions enter only the q and k"),
    (lambda: graph(["pos", "logits"]), "positions enter only the q and k"),
    (lambda: graph(["embed", "0.0", "logits"]), "without saying how: add via="),
    (lambda: graph(["embed", ("0.0", "x"), "logits"]), "unknown input channel 'x'"),
    (lambda: graph(["embed", ("logits", "v")]), "has via='v', but logits has a single input"),
    (lambda: graph(["embed", ("mlp.0", "v"), "logits"]), "attention-only and has no MLPs"),
    (lambda: graph(["embed", ("0.0", "v"), "logits"], ["logits", ("1.0", "q")]), "cycle|leaves 'logits'"),
    (lambda: graph(["0.0", ("embed", "v")], ["embed", "logits"]), "enters an input"),
    (lambda: nx.MultiDiGraph([("embed", "logits")]), "not a MultiDiGraph"),
    (lambda: [("embed", "logits")], "must return a networkx.DiGraph"),
])
def test_bad_graphs_get_clear_errors(model, build, message):
    with pytest.raises(HypothesisError, match=message):
        validate(build(), model, origin="hypotheses/bad.py")


def test_error_names_the_file(model):
    with pytest.raises(HypothesisError, match=r"^hypotheses/bad.py: node '9.9'"):
        validate(graph(["embed", ("9.9", "v"), "logits"]), model, origin="hypotheses/bad.py")


def test_cycle_is_reported(model):
    g = nx.DiGraph([("0.0", "1.0"), ("1.0", "0.0"), ("1.0", "logits")])
    with pytest.raises(HypothesisError, match="cycle"):
        validate(g, model)


def test_feature_must_be_callable(model):
    g = graph(["embed", ("0.0", "v"), "logits"])
    g.nodes["0.0"]["feature"] = "current token"
    with pytest.raises(HypothesisError, match="node '0.0'.*feature must be"):
        validate(g, model)
    g.nodes["0.0"]["feature"] = current_token(0)
    assert validate(g, model).node("0.0").feature.name == "current_token[0]"


def test_positions_must_be_callable(model):
    g = graph(["embed", ("0.0", "v"), "logits"])
    g.edges["embed", "0.0"]["positions"] = [1, 2]
    with pytest.raises(HypothesisError, match="'positions' must be a function"):
        validate(g, model)


def test_component_alias_claims_one_head_twice(model):
    g = graph(["embed", ("0.0", "v"), ("1.0", "k"), "logits"], ["embed", ("0.0#q", "q"), "logits"])
    g.nodes["0.0#q"]["component"] = "0.0"
    claim = validate(g, model)
    assert str(claim.node("0.0#q").component) == "0.0"
    assert claim.n_paths() == 2


def test_hypothesis_files(tmp_path, model):
    missing = tmp_path / "nothing.py"
    missing.write_text("x = 1\n")
    with pytest.raises(HypothesisError, match="defines no function hypothesis"):
        load_hypothesis(missing, model)
    with pytest.raises(HypothesisError, match="no hypothesis file"):
        load_hypothesis(tmp_path / "absent.py", model)
    good = tmp_path / "good.py"
    good.write_text('"""V reads the embedding."""\nimport networkx as nx\n'
                    'def hypothesis(model):\n'
                    '    return nx.DiGraph([("embed", "0.1", {"via": "v"}), ("0.1", "logits")])\n')
    claim = load_hypothesis(good, model)
    assert claim.name == "good" and claim.description == "V reads the embedding."


def test_tree_size_is_bounded(monkeypatch, model):
    import scrub.engine.treeify as treeify_module

    monkeypatch.setattr(treeify_module, "MAX_TREE_NODES", 10)
    claim = validate(full_graph(model), model)
    with pytest.raises(TreeTooLargeError, match="more than 10 path copies"):
        treeify(claim, Unit.COPY)  # strict treeification unrolls every path
    nodes = list(treeify(claim).walk())  # the default shares one node per hypothesis node
    assert len(nodes) == len(claim.nodes) and len({id(n) for n in nodes}) == len(nodes)

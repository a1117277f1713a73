"""Every bad hypothesis a new user might write gets one clear ``HypothesisError`` before any work (issue #10).

Each case is a hypothesis file's text (loaded with ``load_hypothesis``) or a graph builder (checked with
``validate``); then ``check_on`` runs the claim's features and positions functions on a first batch. The
message must name the problem; a few cases also go through ``python -m scrub.cli run`` (exit 2, one line,
no traceback).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import torch

import scrub.claims.features as F
from scrub.claims.features import Feature
from scrub.claims.files import load_hypothesis
from scrub.claims.hypothesis import HypothesisError, add_path, check_on, check_paths, full_graph, validate
from scrub.claims.masks import QKMask, previous_position, within
from tests.helpers import save_tiny_checkpoint, tiny_model

ROOT = Path(__file__).resolve().parents[1]
HEADER = ("import networkx as nx\nimport torch\nimport scrub.claims.features as F\n"
          "from scrub.claims.hypothesis import add_path, full_graph\n")


def g_(*paths) -> nx.DiGraph:
    """A graph of ``add_path`` paths."""
    g = nx.DiGraph()
    for p in paths:
        add_path(g, *p)
    return g


def with_feature(feature) -> nx.DiGraph:
    g = g_(["embed", ("0.0", "v"), "logits"])
    g.nodes["0.0"]["feature"] = feature
    return g


def with_positions(fn) -> nx.DiGraph:
    g = g_(["embed", ("0.0", "v"), "logits"])
    g.edges["embed", "0.0"]["positions"] = fn
    return g


def with_attr(kind: str, key: str, value) -> nx.DiGraph:
    g = g_(["embed", ("0.0", "v"), "logits"])
    (g.nodes["0.0"] if kind == "node" else g.edges["embed", "0.0"])[key] = value
    return g


def with_mask(mask, *paths, edge=("embed", "0.0"), **extra) -> nx.DiGraph:
    """``paths`` (default embed -> v of 0.0 -> logits) with ``qk_mask=mask`` (and ``extra``) on ``edge``."""
    g = g_(*(paths or [["embed", ("0.0", "v"), "logits"]]))
    g.edges[edge].update(qk_mask=mask, **extra)
    return g


def two_masks(first, second, via: str = "k") -> nx.DiGraph:
    """Two masked edges into 1.0's k: embed (via ``via``) with ``first``, 0.0 with ``second``."""
    g = g_(["embed", ("1.0", via), "logits"], ["embed", ("0.0", "v"), ("1.0", "k")])
    g.edges["embed", "1.0"]["qk_mask"] = first
    g.edges["0.0", "1.0"]["qk_mask"] = second
    return g


def aliased(node_id: str, component: str, into: tuple = (("1.0", "k"),)) -> nx.DiGraph:
    """0.0 (V reads the embedding) -> logits, and ``node_id`` (Q reads it) -> ``into`` -> logits."""
    g = g_(["embed", ("0.0", "v"), "logits"], ["embed", (node_id, "q"), *into, "logits"])
    g.nodes[node_id]["component"] = component
    return g


def logits_with_feature() -> nx.DiGraph:
    g = g_(["embed", ("0.0", "v"), "logits"])
    g.nodes["logits"]["feature"] = F.constant()
    return g


def without_inputs(model, head: str) -> nx.DiGraph:
    """The full graph minus every edge into ``head``: Redwood's way to resample a head's inputs."""
    g = full_graph(model)
    g.remove_edges_from(list(g.in_edges(head)))
    return g


def two_logits() -> nx.DiGraph:
    g = g_(["embed", "logits"], ["embed", ("0.0", "v"), "out"])
    g.nodes["out"]["component"] = "logits"
    return g


# (id, model kind, hypothesis file text or graph builder, message regex)
CASES = [
    # --- hypothesis files: tracebacks before -----------------------------------------------------------
    ("syntax error", "short", "def hypothesis(model)\n    return None\n",
     r"bad\.py:1: SyntaxError while importing the file"),
    ("indentation error", "short", "def hypothesis(model):\nreturn None\n", r"bad\.py:2: IndentationError"),
    ("exception at import", "short", "import networkx\nX = 1 / 0\n",
     r"bad\.py:2: importing the file raised ZeroDivisionError"),
    ("missing import", "short", "import no_such_module_xyz\n",
     r"bad\.py:1: importing the file raised ModuleNotFoundError"),
    ("exception inside hypothesis", "short",
     HEADER + "def hypothesis(model):\n    heads = {}\n    return heads['1.6']\n",
     r"bad\.py:7: hypothesis\(model\) raised KeyError: '1\.6'"),
    ("hypothesis without model argument", "short", HEADER + "def hypothesis():\n    return full_graph(None)\n",
     r"bad\.py:5: hypothesis\(\) cannot be called with the model; write def hypothesis\(model\)"),
    ("hypothesis with two arguments", "short", "def hypothesis(model, heads):\n    pass\n",
     r"cannot be called with the model"),
    ("no hypothesis function", "short", "x = 1\n", r"defines no function hypothesis\(model\)"),
    ("hypothesis is not a function", "short", "hypothesis = 3\n", r"defines no function hypothesis\(model\)"),
    ("forgot to return the graph", "short", HEADER + "def hypothesis(model):\n    g = full_graph(model)\n",
     r"bad\.py: hypothesis\(model\) must return a networkx\.DiGraph, got NoneType "
     r"\(does hypothesis\(model\) end with `return g`\?\)"),
    ("returns a list of edges", "short", "def hypothesis(model):\n    return [('embed', 'logits')]\n",
     r"must return a networkx\.DiGraph, got list"),
    ("add_path step is a 1-tuple", "short", HEADER + "def hypothesis(model):\n    g = nx.DiGraph()\n"
     "    add_path(g, 'embed', ('1.2',), 'logits')\n    return g\n",
     r"bad\.py:7: add_path step \('1\.2',\): write a step as a node name"),
    ("add_path first step is a pair", "short", HEADER + "def hypothesis(model):\n    g = nx.DiGraph()\n"
     "    add_path(g, ('embed', 'v'), ('0.0', 'v'), 'logits')\n    return g\n",
     r"bad\.py:7: .*the first step has no previous node"),
    ("add_path with one step", "short",
     HEADER + "def hypothesis(model):\n    return add_path(nx.DiGraph(), 'logits')\n",
     r"bad\.py:6: add_path\('logits',\): a path has at least two steps"),
    # --- via ----------------------------------------------------------------------------------------------
    ("via=1", "short", lambda m: nx.DiGraph([("embed", "0.0", {"via": 1}), ("0.0", "logits")]),
     r"edge 'embed' -> '0\.0': via=1 is not a list of inputs"),
    ("via with a number in a list", "short",
     lambda m: nx.DiGraph([("embed", "0.0", {"via": ["q", 2]}), ("0.0", "logits")]),
     r"via=\['q', 2\] is not a list of inputs"),
    ("unknown channel", "short", lambda m: g_(["embed", ("0.0", "x"), "logits"]), r"unknown input channel 'x'"),
    ("missing via", "short", lambda m: g_(["embed", "0.0", "logits"]),
     r"enters head 0\.0 without saying how: add via="),
    ("via into logits", "short", lambda m: g_(["embed", ("logits", "v")]),
     r"has via='v', but logits has a single input"),
    ("via into an MLP", "mlp", lambda m: g_(["embed", ("mlp.0", "q"), "logits"]),
     r"has via='q', but mlp\.0 has a single input"),
    # --- features -----------------------------------------------------------------------------------------
    ("feature factory passed uncalled", "short", lambda m: with_feature(F.previous_token),
     r"node '0\.0': feature=previous_token is a function that makes a feature, not a feature: "
     r"call it, feature=previous_token\(\)"),
    ("feature is the Feature class", "short", lambda m: with_feature(Feature), r"feature=Feature is the class"),
    ("feature is a string", "short", lambda m: with_feature("current token"),
     r"node '0\.0': feature must be a scrub\.claims\.features\.Feature"),
    ("feature returns an int", "short", lambda m: with_feature(lambda t: 3),
     r"node '0\.0': feature '<lambda>' returned a Python int, not a tensor"),
    ("feature returns a numpy array", "short", lambda m: with_feature(Feature("np", lambda t: t.numpy()[:, -1])),
     r"node '0\.0': feature 'np' returned a numpy\.ndarray.*torch\.as_tensor"),
    ("feature returns floats", "short", lambda m: with_feature(Feature("mean", lambda t: t.float().mean(1))),
     r"node '0\.0': feature 'mean' returned float32 codes: codes are integer class labels"),
    ("feature returns whole-valued floats", "short", lambda m: with_feature(Feature("f", lambda t: t[:, -1].double())),
     r"returned float64 codes"),
    ("feature returns one row", "short", lambda m: with_feature(Feature("first", lambda t: t[:1])),
     r"feature 'first' returned 1 rows for 4 sequences: return one row per sequence"),
    ("feature returns a scalar", "short", lambda m: with_feature(Feature("sum", lambda t: t.sum())),
     r"feature 'sum' returned a single value for 4 sequences"),
    ("feature raises", "short", lambda m: with_feature(Feature("pos40", lambda t: t[:, 40])),
     r"node '0\.0': feature 'pos40' failed on tokens of shape \[4, 12\]: IndexError"),
    ("feature on logits", "short", lambda m: logits_with_feature(),
     r"node 'logits': logits always see the reference input"),
    # --- positions ----------------------------------------------------------------------------------------
    ("positions mask of the wrong shape", "short", lambda m: with_positions(lambda t: t[:, -1] > 3),
     r"edge 'embed' -> '0\.0': positions function '<lambda>' returned a mask of shape \[4\] "
     r"for tokens of shape \[4, 12\]"),
    ("positions float mask", "short", lambda m: with_positions(lambda t: (t > 3).float()),
     r"returned a float32 mask: masks must be bool.*mask\.bool\(\)"),
    ("positions 0..2 integer mask", "short", lambda m: with_positions(lambda t: t % 3),
     r"returned an int64 mask: masks must be bool"),
    ("positions returns a list", "short", lambda m: with_positions(lambda t: [[True] * 12] * 4),
     r"returned a list, not a torch bool tensor"),
    ("positions raises", "short", lambda m: with_positions(lambda t: t[:, :, 0]),
     r"positions function '<lambda>' failed on tokens of shape \[4, 12\]"),
    ("positions not callable", "short", lambda m: with_positions([1, 2]),
     r"'positions' must be a function tokens -> bool mask"),
    ("positions is a feature", "short", lambda m: with_positions(F.current_token()),
     r"'positions' must be a function.*got a Feature"),
    # --- query-key masks ----------------------------------------------------------------------------------
    ("qk_mask into logits", "short",
     lambda m: with_mask(previous_position(), ["embed", "logits"], edge=("embed", "logits")),
     r"edge 'embed' -> 'logits' has a qk_mask, but logits is not a head.*remove it"),
    ("qk_mask into an MLP", "mlp",
     lambda m: with_mask(within(2), ["embed", "mlp.0", "logits"], edge=("embed", "mlp.0")),
     r"edge 'embed' -> 'mlp\.0' has a qk_mask, but mlp\.0 is not a head"),
    ("qk_mask with positions", "short", lambda m: with_mask(within(2), positions=F.after_earlier_occurrence),
     r"edge 'embed' -> '0\.0' has both 'positions' and 'qk_mask'"),
    ("qk_mask is a plain function", "short", lambda m: with_mask(lambda q, k: k == q - 1),
     r"edge 'embed' -> '0\.0': qk_mask is a plain function '<lambda>': wrap it with a name, "
     r"qk_mask=scrub\.claims\.masks\.QKMask\('name', fn\)"),
    ("qk_mask factory passed uncalled", "short", lambda m: with_mask(previous_position),
     r"qk_mask is previous_position, a function that makes a mask, not a mask: call it, qk_mask=previous_position\(\)"),
    ("qk_mask is the QKMask class", "short", lambda m: with_mask(QKMask), r"qk_mask is the QKMask class: build a mask"),
    ("qk_mask is a tensor", "short", lambda m: with_mask(torch.ones(12, 12, dtype=torch.bool)),
     r"qk_mask is a Tensor: it must be a scrub\.claims\.masks\.QKMask"),
    ("two masks into one input", "short", lambda m: two_masks(within(1), previous_position()),
     r"edges 'embed' -> '1\.0' and '0\.0' -> '1\.0' enter 'k' of '1\.0' "
     r"with different query-key masks 'within\(1\)' and "
     r"'previous_position'.*one input takes one mask"),
    ("two masks into one input, one edge via kv", "short", lambda m: two_masks(within(2), within(3), via="kv"),
     r"enter 'k' of '1\.0' with different query-key masks 'within\(2\)' and 'within\(3\)'"),
    ("two same-named masks", "short",
     lambda m: two_masks(QKMask("near", lambda q, k: q - k < 2), QKMask("near", lambda q, k: q - k < 2)),
     r"different query-key masks 'near' and 'near' "
     r"\(same name, different functions: build the mask once and reuse it\)"),
    ("qk_mask returns integers", "short", lambda m: with_mask(QKMask("diff", lambda q, k: q - k)),
     r"edge 'embed' -> '0\.0': query-key mask 'diff' returned an int64 tensor: masks must be bool"),
    ("qk_mask of the wrong shape", "short", lambda m: with_mask(QKMask("3d", lambda q, k: (k == q)[..., None])),
     r"query-key mask '3d' returned a tensor of shape \[12, 12, 1\] for a sequence of 12"),
    ("qk_mask raises", "short", lambda m: with_mask(QKMask("boom", lambda q, k: q[:, 5] > k)),
     r"edge 'embed' -> '0\.0': query-key mask 'boom' failed on positions of a sequence of 12 .*IndexError"),
    ("QKMask of a non-function", "short", HEADER + "from scrub.claims.masks import QKMask\n\ndef hypothesis(model):\n"
     "    g = add_path(nx.DiGraph(), 'embed', ('0.0', 'v'), 'logits')\n"
     "    g.edges['embed', '0.0']['qk_mask'] = QKMask('prev', 3)\n    return g\n",
     r"bad\.py:9: hypothesis\(model\) raised MaskError: QKMask 'prev': fn must be a function"),
    # --- misspelt attributes ------------------------------------------------------------------------------
    ("node attribute features=", "short", lambda m: with_attr("node", "features", F.current_token()),
     r"node '0\.0' has an unknown attribute 'features': did you mean 'feature'\?"),
    ("edge attribute position=", "short", lambda m: with_attr("edge", "position", F.after_earlier_occurrence),
     r"edge 'embed' -> '0\.0' has an unknown attribute 'position': did you mean 'positions'\?"),
    ("edge attribute channel=", "short", lambda m: with_attr("edge", "channel", "k"),
     r"unknown attribute 'channel': did you mean 'via'\?"),
    ("node attribute colour=", "short", lambda m: with_attr("node", "colour", "red"),
     r"unknown attribute 'colour': node attributes are 'feature' and 'component'"),
    ("edge attribute mask_qk=", "short", lambda m: with_attr("edge", "mask_qk", previous_position()),
     r"unknown attribute 'mask_qk': did you mean 'qk_mask'\? edge attributes are 'via', 'positions' and 'qk_mask'"),
    ("edge attribute qk=", "short", lambda m: with_attr("edge", "qk", previous_position()),
     r"unknown attribute 'qk': did you mean 'qk_mask'\?"),
    # --- component names ----------------------------------------------------------------------------------
    ("head with a leading zero", "short",
     lambda m: g_(["embed", ("0.0", "v"), "logits"], ["embed", ("1.02", "v"), "logits"]),
     r"node '1\.02': '1\.02' is not how this component is written: write '1\.2'.*second node.*component='1\.2'"),
    ("head with a space", "short", lambda m: g_(["embed", (" 1.2", "v"), "logits"]),
     r"' 1\.2' is not how this component is written: write '1\.2'"),
    ("capitalised input", "short", lambda m: g_(["Embed", ("0.0", "v"), "logits"]),
     r"'Embed' is not how this component is written: write 'embed'"),
    ("float node id", "short", lambda m: nx.DiGraph([("embed", 1.1, {"via": "v"}), (1.1, "logits")]),
     r"node 1\.1 is a float: node ids are strings, write '1\.1'"),
    ("component attribute with a space", "short", lambda m: aliased("0.0#q", " 0.0"),
     r"' 0\.0' is not how this component is written"),
    ("id naming another head", "short", lambda m: aliased("1.1", "0.0"),
     r"node '1\.1': its id reads as a component name but it has component='0\.0'"),
    ("unknown head", "short", lambda m: g_(["embed", ("3.9", "v"), "logits"]),
     r"unknown head '3\.9'.*2 layers x 3 heads"),
    ("unreadable name", "short", lambda m: g_(["embed", ("head1", "v"), "logits"]),
     r"cannot read component name 'head1'"),
    ("MLP in attention-only model", "short", lambda m: g_(["embed", "mlp.0", "logits"]),
     r"attention-only and has no MLPs"),
    ("MLP beyond the last layer", "mlp", lambda m: g_(["embed", "mlp.5", "logits"]), r"unknown MLP 'mlp\.5'"),
    ("pos in a rotary model", "rotary", lambda m: g_(["pos", ("0.0", "q"), "logits"]),
     r"'pos' names a learned positional embedding"),
    ("two logits nodes", "short", lambda m: two_logits(), r"several logits nodes"),
    # --- graph structure ----------------------------------------------------------------------------------
    ("cycle", "short", lambda m: nx.DiGraph([("embed", "0.0", {"via": "v"}), ("0.0", "1.0", {"via": "q"}),
                                            ("1.0", "0.0", {"via": "q"}), ("1.0", "logits")]),
                                             r"the graph has a cycle"),
    ("backwards edge", "short", lambda m: g_(["embed", ("0.0", "v"), "logits"], ["1.0", ("0.0", "k")]),
     r"backwards or sideways"),
    ("sideways edge", "short", lambda m: g_(["embed", ("0.0", "v"), ("0.1", "k"), "logits"]), r"backwards or sideways"),
    ("pos into v in a shortformer model", "short", lambda m: g_(["pos", ("0.0", "v"), "logits"]),
     r"positions enter only the q and k inputs"),
    ("pos into logits in a shortformer model", "short", lambda m: g_(["pos", "logits"]),
     r"positions enter only the q and k"),
    ("edge out of logits", "short", lambda m: g_(["embed", "logits", ("1.0", "q")]), r"cycle|leaves 'logits'"),
    ("edge into an input", "short", lambda m: g_(["0.0", ("embed", "v")], ["embed", "logits"]), r"enters an input"),
    ("node that reaches no logits", "short", lambda m: g_(["embed", "logits"], ["embed", ("0.0", "v")]),
     r"node '0\.0' lies on no path that reaches 'logits'"),
    ("graph without logits", "short", lambda m: g_(["embed", ("0.0", "v")]), r"the graph has no 'logits' node"),
    ("MultiDiGraph", "short", lambda m: nx.MultiDiGraph([("embed", "logits")]), r"not a MultiDiGraph"),
    ("undirected graph", "short", lambda m: nx.Graph([("embed", "logits")]),
     r"must return a networkx\.DiGraph, got Graph: an undirected"),
    ("node reached by no input", "short", lambda m: g_(["embed", "logits"], ["0.0", ("1.0", "q"), "logits"]),
     r"node '1\.0' has claimed inputs, but none of its paths starts at an input \('embed' or 'pos'\): "
     r"they start at '0\.0'"),
    ("logits reached by no input", "short", lambda m: g_(["0.1", "logits"]),
     r"node 'logits' has claimed inputs, but none of its paths"),
    ("chain from two input-less heads", "mlp",
     lambda m: g_(["embed", "logits"], ["0.0", "mlp.1", "logits"], ["0.1", ("1.1", "v"), "mlp.1"]),
     r"node '1\.1' has claimed inputs.*start at '0\.1'"),
    ("a component claimed twice into one input", "short", lambda m: aliased("0.0#q", "0.0", into=()),
     r"edges '0\.0' -> 'logits' and '0\.0#q' -> 'logits' both claim 0\.0's output in the input of 'logits'"),
    ("parallel block head into same-layer MLP", "parallel", lambda m: g_(["embed", ("0.0", "v"), "mlp.0", "logits"]),
     r"parallel-block model mlp\.0 reads the same residual"),
]

MODELS = {
    "short": {},
    "mlp": {"attn_only": False, "pos": "standard"},
    "rotary": {"pos": "rotary"},
    "parallel": {"attn_only": False, "pos": "standard", "parallel": True},
}


@pytest.fixture(scope="module")
def models():
    return {kind: tiny_model(**kw) for kind, kw in MODELS.items()}


def attempt(case, model, tmp_path: Path):
    """Load or validate the case, then check it on a first batch, as a run would before any work."""
    tokens = torch.randint(0, model.cfg.d_vocab, (4, model.cfg.n_ctx), generator=torch.Generator().manual_seed(0))
    if isinstance(case, str):
        path = tmp_path / "bad.py"
        path.write_text(case)
        claim = load_hypothesis(path, model)
    else:
        claim = validate(case(model), model, origin=str(tmp_path / "bad.py"))
    check_on(claim, tokens)


def test_there_are_enough_distinct_cases():
    assert len({c[0] for c in CASES}) == len(CASES) >= 35


@pytest.mark.parametrize("name, kind, case, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_clear_error(name, kind, case, message, models, tmp_path):
    with pytest.raises(HypothesisError) as info:
        attempt(case, models[kind], tmp_path)
    text = str(info.value)
    assert len(text.splitlines()) == 1, text
    assert "bad.py" in text, f"the error names the file: {text}"
    assert re.search(message, text), f"{message!r} not in {text!r}"


# --- what stays legal -------------------------------------------------------------------------------------

@pytest.mark.parametrize("build", [
    lambda m: without_inputs(m, "1.0"),  # a head's inputs resampled
    lambda m: without_inputs(m, "0.0"),  # and one that feeds later heads
    lambda m: g_(["embed", "logits"], ["0.0", "logits"]),  # an unclaimed head read by the logits next to an input path
    # one in-path from an input suffices
    lambda m: g_(["embed", ("0.0", "v"), ("1.0", "q"), "logits"], ["0.1", ("1.0", "k")]),
    lambda m: nx.DiGraph([("embed", "0.0", {"via": ("q", "k")}), ("pos", "0.0", {"via": "QK"}), ("0.0", "logits")]),
    lambda m: nx.DiGraph(),  # the empty hypothesis
    lambda m: with_positions(F.after_earlier_occurrence),
    lambda m: with_feature(lambda t: t[:, -1] % 2 == 0),  # bool codes are classes too
    lambda m: aliased("0.0#q", "0.0"),
    lambda m: with_mask(previous_position()),  # a query-key mask on a v input
    lambda m: two_masks(within(2), within(2), via="kv"),  # equal masks into one input; the kv edge's v is masked too
    lambda m: with_mask(within(1), ["pos", ("0.0", "qk"), "logits"], edge=("pos", "0.0")),
    lambda m: with_mask(None),  # qk_mask=None is no mask
])
def test_legal_graphs_pass(build, models):
    model = models["short"]
    tokens = torch.randint(0, 20, (4, 12), generator=torch.Generator().manual_seed(1))
    claim = validate(build(model), model)
    check_paths(claim)
    check_on(claim, tokens)


def test_positions_are_checked_on_every_call(models):
    """A mask that is only wrong on some batch still fails with the edge's name, not inside the engine."""
    model = models["short"]
    claim = validate(with_positions(lambda t: t > 3 if t.shape[0] == 4 else (t > 3).float()), model, origin="h.py")
    check_on(claim, torch.zeros(4, 12, dtype=torch.long))
    (edge,) = [e for e in claim.edges if e.positions is not None]
    with pytest.raises(HypothesisError, match=r"^h\.py: edge 'embed' -> '0\.0': positions .* float32 mask"):
        edge.positions(torch.zeros(3, 12, dtype=torch.long))


def test_prints_in_a_hypothesis_file_go_to_stderr(models, tmp_path, capfd):
    path = tmp_path / "chatty.py"
    path.write_text('"""Prints while loading."""\nimport networkx as nx\nprint("importing")\n'
                    'def hypothesis(model):\n    print("building")\n    return nx.DiGraph([("embed", "logits")])\n')
    load_hypothesis(path, models["short"])
    out, err = capfd.readouterr()
    assert out == "" and "importing" in err and "building" in err


def test_feature_codes_are_long_on_the_cpu():
    codes = Feature("even", lambda t: t[:, -1] % 2 == 0).codes(torch.tensor([[1, 2], [3, 5]]))
    assert codes.dtype == torch.long and codes.device.type == "cpu" and codes.tolist() == [[1], [0]]
    with pytest.raises(ValueError, match="numpy"):
        Feature("np", lambda t: np.zeros(2, dtype=int)).codes(torch.zeros(2, 3, dtype=torch.long))


# --- through the CLI: exit 2, one line on stderr, no traceback -------------------------------------------

CLI_CASES = [
    ("syntax error", "def hypothesis(model)\n    pass\n", r"bad\.py:1: SyntaxError"),
    ("no model argument", "def hypothesis():\n    pass\n", r"hypothesis\(\) cannot be called with the model"),
    ("misspelt attribute",
     HEADER + "def hypothesis(model):\n    g = nx.DiGraph()\n    add_path(g, 'embed', ('0.0', 'v'), 'logits')\n"
     "    g.nodes['0.0']['features'] = F.current_token()\n    return g\n",
     r"unknown attribute 'features': did you mean 'feature'"),
    ("float feature",
     HEADER + "def hypothesis(model):\n    g = nx.DiGraph()\n    add_path(g, 'embed', ('0.0', 'v'), 'logits')\n"
     "    g.nodes['0.0']['feature'] = lambda t: t.float().mean(1)\n    return g\n", r"returned float32 codes"),
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.mark.parametrize("name, text, message", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_run_reports_bad_hypothesis_in_one_line(name, text, message, checkpoint, tmp_path):
    path = tmp_path / "bad.py"
    path.write_text(text)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "scrub.cli", "run", str(path), "--model", str(checkpoint),
                           "--n", "4", "--seq-len", "16"], check=False, capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and re.search(message, lines[0]), proc.stderr

"""Every shipped hypothesis file loads and validates (on a random-init model of the shipped shape, and on
the shipped model when it is present), states its claim in a docstring, and the induction files have the
structure they claim: Redwood's baseline has no inputs into the induction heads, each "third" changes one
channel only, the roles come from the scores (never hard-coded head numbers)."""

from pathlib import Path

import pytest
import torch
from transformer_lens import HookedTransformer

from hypotheses._build import Mechanism, induction_baseline, mechanism_graph
from hypotheses._heads import HeadRoles, head_roles, roles_from_scores
from scrub.claims.files import load_hypothesis
from scrub.claims.hypothesis import full_graph, validate
from scrub.heads.scores import HeadScores
from scrub.model.loading import SHIPPED_DIR, ArchSpec, load_model

HYPOTHESES = Path(__file__).resolve().parents[1] / "hypotheses"
IOI = HYPOTHESES / "ioi_shape.py"  # names GPT-2 small's heads: tested on a 12 x 12 model below
FILES = sorted(p for p in HYPOTHESES.glob("*.py") if not p.name.startswith("_") and p != IOI)


@pytest.fixture(scope="module", params=["random", "shipped"])
def model_and_roles(request):
    if request.param == "shipped" and not SHIPPED_DIR.exists():
        pytest.skip(f"the shipped model is not at {SHIPPED_DIR} yet")
    model = HookedTransformer(ArchSpec().to_config()) if request.param == "random" else load_model()
    return model, head_roles(model)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_file_loads_validates_and_has_a_docstring(path, model_and_roles):
    model, _ = model_and_roles
    claim = load_hypothesis(path, model)
    assert len(claim.description) > 40, f"{path.name}: state the claim in words in the module docstring"
    if path.stem != "empty":
        assert claim.root == "logits" and claim.n_paths() > 0


def test_baseline_and_thirds_structure(model_and_roles):
    model, roles = model_and_roles
    base = induction_baseline(model, roles)
    for head in roles.induction:
        assert base.in_degree(head) == 0 and base.has_edge(head, "logits")
    full = full_graph(model)
    assert set(full.edges) - set(base.edges) == {e for e in full.edges if e[1] in roles.induction}
    # nothing under test: the mechanism builder gives back the full graph
    same = mechanism_graph(model, roles, Mechanism(q=False, k=False, v=False))
    as_set = lambda g: {(s, t, frozenset(d.get("via", ""))) for s, t, d in g.edges(data=True)}  # noqa: E731
    assert as_set(same) == as_set(full)
    for channel in "qkv":
        keep = "".join(c for c in "qkv" if c != channel)
        graph = mechanism_graph(model, roles, Mechanism(**{c: False for c in keep}))
        validate(graph, model)
        for head in roles.induction:
            full_senders = {s for s, _, d in full.in_edges(head, data=True) if channel in d["via"]}
            claimed = {s for s, _, d in graph.in_edges(head, data=True) if channel in d["via"]}
            assert claimed and claimed != full_senders  # the channel under test is reduced
            for other in keep:
                assert {s for s, _, d in graph.in_edges(head, data=True) if other in d["via"]} == \
                    {s for s, _, d in full.in_edges(head, data=True) if other in d["via"]}


def test_minimal_mechanism_paths(model_and_roles):
    model, roles = model_and_roles
    graph = mechanism_graph(model, roles)
    for head in roles.induction:
        edges = {(s, d["via"]) for s, _, d in graph.in_edges(head, data=True)}
        alias = f"{roles.previous_token}~{head}"
        assert edges == {("embed", "qv"), (alias, "k")}
        assert graph.nodes[alias]["component"] == roles.previous_token
        assert {(s, d["via"]) for s, _, d in graph.in_edges(alias, data=True)} == {("embed", "v"), ("pos", "qk")}


def _scores(prefix, copying, prev):
    z = torch.zeros(2, 4)
    return HeadScores(previous_token=prev, prefix_matching=prefix, duplicate_token=z, copying=copying, ov_eigenvalue=z)


def test_roles_come_from_thresholds():
    prefix = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 0.7, 0.5, 0.9]])
    copying = torch.tensor([[-1.0] * 4, [-1.0, 0.5, 0.3, -0.5]])
    prev = torch.tensor([[0.1, 0.9, 0.35, 0.0], [0.0] * 4])
    back = torch.tensor([[0.0, 0.0, 0.0, 0.6], [0.0] * 4])
    roles = roles_from_scores(_scores(prefix, copying, prev), back)
    assert isinstance(roles, HeadRoles)
    assert roles.behavioral == ("1.1", "1.2") and roles.induction == ("1.1", "1.2")
    assert roles.previous_token == "0.1" and roles.previous_like == ("0.1", "0.2")
    assert roles.further_back == ("0.3",) and roles.other_layer0 == ("0.0",) and roles.fallbacks == ()


def test_roles_fall_back_to_top_scorers():
    z = torch.zeros(2, 4)
    prefix = torch.tensor([[0.0] * 4, [0.0, 0.1, 0.3, 0.2]])
    roles = roles_from_scores(_scores(prefix, z - 1, torch.tensor([[0.1, 0.0, 0.2, 0.0], [0.0] * 4])), z)
    assert roles.induction == ("1.2",) and roles.previous_token == "0.2" and len(roles.fallbacks) == 2


def test_ioi_shape_on_a_12_by_12_model(model_and_roles):
    """The IOI-shaped claim loads on any 12 x 12 model, claims exactly the circuit's paths into its heads, runs
    (every other path kept), and refuses a smaller model with one line."""
    from hypotheses import ioi_shape
    from scrub.experiment.runner import run
    from tests.helpers import tiny_model

    small, _ = model_and_roles
    with pytest.raises(ValueError, match="12 layers x 12 heads"):
        load_hypothesis(IOI, small)
    model = tiny_model(n_layers=12, n_heads=12, attn_only=False, pos="standard", n_ctx=10)
    claim = load_hypothesis(IOI, model)
    assert len(claim.description) > 40 and claim.root == "logits"
    into = lambda head: {(e.source, e.channel.value) for e in claim.inputs_of(head)}  # noqa: E731
    assert into("5.5") == {(h, "k") for h in ioi_shape.PREVIOUS_TOKEN}
    assert into("7.3") == {(h, "v") for h in ioi_shape.INDUCTION + ioi_shape.DUPLICATE_TOKEN}
    assert into("9.9") == {(h, "q") for h in ioi_shape.S_INHIBITION} | {("embed", "k"), ("embed", "v")}
    assert len(into("2.2")) == len(into("2.3")) > 20  # the previous-token heads keep all their inputs
    tokens = torch.randint(0, 20, (4, 10), generator=torch.Generator().manual_seed(0))
    result = run(model, claim, tokens, progress=False, n_bootstrap=20)
    assert result.loss_scrubbed != result.loss_clean

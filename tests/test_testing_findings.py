"""What the kit found, and how it was resolved.

One component claimed twice into one input (the original node ``0.1`` and a ``component=`` copy ``0.1#b`` both
entering 1.0's k): the engine added both claims as differences over the unclaimed read (0.1's output counted
as A + B - U), the naive reference kept one of them, so ``engine_equals_reference`` failed. Neither is a
causal-scrubbing evaluation: in the treeified model 1.0's k input has one child per component that feeds it,
so two hypothesis nodes cannot both correspond to 0.1 there (the correspondence is injective), and no model
run adds a head's output twice. The claim is ill-posed; ``validate`` refuses it in one line, with positions
restrictions too (they are functions of the tokens, so disjointness cannot be known before the run). A copy
entering another input of the receiver, or another receiver, stays legal and exact.
"""

from __future__ import annotations

import networkx as nx
import pytest

from scrub.claims.hypothesis import HypothesisError, add_path, validate
from scrub.errors import ScrubError
from scrub.testing import invariants
from scrub.testing.models import MlpKind, ModelSpec, random_tokens
from scrub.testing.pieces import FromPosition

MODEL = ModelSpec(n_heads=2, mlp=MlpKind.PLAIN, float64=True)


def twice_into(channel: str, positions=None, source: str = "0.1", target: str = "1.0") -> nx.DiGraph:
    """``source`` -> ``target`` (k) -> logits, and a copy of ``source`` (reading the embedding through q) into
    ``target``'s ``channel`` (at ``positions``)."""
    g = nx.DiGraph()
    add_path(g, "embed", (source, "v"), (target, "k"), "logits")
    g.add_node(f"{source}#b", component=source)
    g.add_edge("embed", f"{source}#b", via="q")
    g.add_edge(f"{source}#b", target, via=channel, **({} if positions is None else {"positions": positions}))
    return g


@pytest.mark.parametrize("positions", [None, FromPosition(3)], ids=["unrestricted", "restricted"])
def test_a_component_claimed_twice_into_one_input_is_refused(positions):
    model = MODEL.build()
    with pytest.raises(HypothesisError) as err:
        validate(twice_into("k", positions), model)
    text = str(err.value)
    assert isinstance(err.value, ScrubError) and "\n" not in text
    assert "edges '0.1' -> '1.0' and '0.1#b' -> '1.0' both claim 0.1's output in 'k' of '1.0'" in text
    assert "keep one of the two edges" in text


def test_an_mlp_claimed_twice_into_the_logits_is_refused():
    model = MODEL.build()
    g = nx.DiGraph()
    add_path(g, "embed", "mlp.0", "logits")
    g.add_node("mlp.0#b", component="mlp.0")
    add_path(g, "embed", ("0.0", "v"), "mlp.0#b", "logits")
    with pytest.raises(HypothesisError, match=r"both claim mlp\.0's output in the input of 'logits'"):
        validate(g, model)


def test_a_copy_into_another_input_or_receiver_is_exact():
    """The legal neighbours of the refused shape: the copy into 1.0's q (the original into its k), and the copy
    into 1.1's k; the engine equals the naive reference on both."""
    model = MODEL.build()
    tokens = random_tokens(6, 8)  # [6, 8]
    invariants.engine_equals_reference(model, twice_into("q", FromPosition(3)), tokens)
    g = twice_into("q")
    g.remove_edge("0.1#b", "1.0")
    add_path(g, "0.1#b", ("1.1", "k"), "logits")
    invariants.engine_equals_reference(model, g, tokens)

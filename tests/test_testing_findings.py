"""What the kit found and is not fixed yet, kept as strict expected failures so that a fix shows up as XPASS.

One component claimed twice into one input (the original node and a ``component=`` copy both entering 1.0's k):
the engine adds both claims as differences over the unclaimed read, the naive reference keeps one of them
(``claimed`` is a dict by component), so they disagree; which one ``validate`` should accept is the lead's call
(the strategies do not generate this shape: a copy takes over its original's out-edges)."""

from __future__ import annotations

import networkx as nx
import pytest

from scrub.claims.hypothesis import add_path
from scrub.testing import invariants
from scrub.testing.models import ModelSpec, random_tokens
from scrub.testing.pieces import FromPosition


@pytest.mark.xfail(strict=True, raises=AssertionError, reason="engine and reference disagree on a component "
                   "claimed twice into one input (see the module docstring)")
@pytest.mark.parametrize("positions", [None, FromPosition(3)], ids=["unrestricted", "restricted"])
def test_a_component_claimed_twice_into_one_input(positions):
    model = ModelSpec(n_heads=2, float64=True).build()
    g = nx.DiGraph()
    add_path(g, "embed", ("0.1", "v"), ("1.0", "k"), "logits")
    g.add_node("0.1#b", component="0.1")
    g.add_edge("embed", "0.1#b", via="q")
    g.add_edge("0.1#b", "1.0", via="k", **({} if positions is None else {"positions": positions}))
    invariants.engine_equals_reference(model, g, random_tokens(6, 8))

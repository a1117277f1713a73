"""Refinement: direct path into K. The minimal mechanism, but K also reads the token embedding of
the key position itself (not only the previous token via the previous-token head)."""

from hypotheses._build import Mechanism, mechanism_graph
from hypotheses._heads import head_roles


def hypothesis(model, roles=None):
    roles = roles or head_roles(model)
    return mechanism_graph(model, roles, Mechanism(k_embed=True))

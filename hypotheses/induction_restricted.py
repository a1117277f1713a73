"""Refinement: a position-restricted claim. The minimal mechanism where an induction match is
possible; at key positions whose previous token occurs only once in the sequence (no match can land
there) K and V read all their inputs (edge positions = hypotheses._build.no_match_keys)."""

from hypotheses._build import Mechanism, mechanism_graph
from hypotheses._heads import head_roles


def hypothesis(model, roles=None):
    roles = roles or head_roles(model)
    return mechanism_graph(model, roles, Mechanism(restricted=True))

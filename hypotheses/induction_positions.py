"""Refinement: the minimal mechanism plus the positional embedding into Q and K of the induction
heads. In a shortformer model positions are the same for every example, so this adds nothing by
construction; it is here to show that (the gain must be 0)."""

from hypotheses._build import Mechanism, mechanism_graph
from hypotheses._heads import head_roles


def hypothesis(model, roles=None):
    roles = roles or head_roles(model)
    return mechanism_graph(model, roles, Mechanism(positions=True))

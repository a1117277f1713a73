"""Refinement: the minimal mechanism, but K reads every previous-token-like layer-0 head
(previous-token score >= hypotheses._heads.PREVIOUS_LIKE), not only the strongest one."""

from hypotheses._build import Mechanism, mechanism_graph
from hypotheses._heads import head_roles


def hypothesis(model, roles=None):
    roles = roles or head_roles(model)
    return mechanism_graph(model, roles, Mechanism(k_heads="like"))

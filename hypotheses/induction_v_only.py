"""V only: everything is claimed except that each induction head's V input is reduced to the
token embedding of its key position (the direct embed -> V path); its Q and K keep all their inputs.
Claim: the induction heads copy the attended token's own embedding."""

from hypotheses._build import Mechanism, mechanism_graph
from hypotheses._heads import head_roles


def hypothesis(model, roles=None):
    roles = roles or head_roles(model)
    return mechanism_graph(model, roles, Mechanism(q=False, k=False))

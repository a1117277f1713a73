"""The minimal two-head mechanism (Elhage et al. 2021) for every behavioral induction head at
once: V and Q read the token embedding of their own position, K reads the previous-token head (which
moves the previous token's embedding by position), the head's output goes to the logits. Everything
else of the model is claimed as in the full graph."""

from hypotheses._build import mechanism_graph
from hypotheses._heads import head_roles


def hypothesis(model, roles=None):
    roles = roles or head_roles(model)
    return mechanism_graph(model, roles)

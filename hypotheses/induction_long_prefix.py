"""Refinement: longer-prefix matching. The minimal mechanism, but K also reads the layer-0 heads
that attend 2-4 tokens back (attention >= hypotheses._heads.FURTHER_BACK), so a key can encode more than
the single previous token."""

from hypotheses._build import Mechanism, mechanism_graph
from hypotheses._heads import head_roles


def hypothesis(model, roles=None):
    roles = roles or head_roles(model)
    return mechanism_graph(model, roles, Mechanism(further_back=True))

"""Refinement: other layer-0 heads. The minimal mechanism, but Q and V also read the layer-0 heads that
are not previous-token-like (with all their inputs), not only the direct token embedding. (Reading every
layer-0 head would claim Q and V fully in a 2-layer attention-only model.)"""

from hypotheses._build import Mechanism, mechanism_graph
from hypotheses._heads import head_roles


def hypothesis(model, roles=None):
    roles = roles or head_roles(model)
    return mechanism_graph(model, roles, Mechanism(qv_layer0=True))

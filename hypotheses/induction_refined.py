"""All refinements together: K reads every previous-token-like head, the heads attending further
back and the embedding; Q and V read the embedding and the other layer-0 heads; positions enter Q and K; at
key positions where no match is possible K and V read everything."""

from hypotheses._build import Mechanism, mechanism_graph
from hypotheses._heads import head_roles


def hypothesis(model, roles=None):
    roles = roles or head_roles(model)
    return mechanism_graph(model, roles, Mechanism(k_heads="like", further_back=True, positions=True, qv_layer0=True,
                                                   k_embed=True, restricted=True))

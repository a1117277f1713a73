"""K only: everything is claimed except that each induction head's K input is reduced to the
output of the strongest previous-token head, which itself reads the embedding (V) and attends by
position (Q, K); Q and V keep all their inputs. Claim: keys say which token came just before."""

from hypotheses._build import Mechanism, mechanism_graph
from hypotheses._heads import head_roles


def hypothesis(model, roles=None):
    roles = roles or head_roles(model)
    return mechanism_graph(model, roles, Mechanism(q=False, v=False))

"""Q only: everything is claimed except that each induction head's Q input is reduced to the
token embedding of the current position; its K and V keep all their inputs. Claim: the head looks for
its current token."""

from hypotheses._build import Mechanism, mechanism_graph
from hypotheses._heads import head_roles


def hypothesis(model, roles=None):
    roles = roles or head_roles(model)
    return mechanism_graph(model, roles, Mechanism(k=False, v=False))

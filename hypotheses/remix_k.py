"""REMIX day 3, rung "previous-token head -> key" (Redwood: 0.83 loss recovered): each induction head's K input
reads only its previous-token head, which keeps all its own inputs (and the positions); the direct embedding
path and the other earlier heads into K are resampled. Q and V keep all their inputs, everything else is claimed
as in the full graph. Baseline: hypotheses/induction_baseline.py."""

from hypotheses._build import Remix, remix_graph
from hypotheses._heads import head_roles


def hypothesis(model, roles=None):
    roles = roles or head_roles(model)
    return remix_graph(model, roles, Remix(k=True))

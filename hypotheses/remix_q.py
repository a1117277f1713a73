"""REMIX day 3, rung "embeddings -> query" (Redwood: 0.51 loss recovered): each induction head's Q input reads
only the token embedding (and the positions, identical in every example); the paths into Q through the earlier
heads are resampled. K and V keep all their inputs, everything else is claimed as in the full graph. Baseline:
hypotheses/induction_baseline.py."""

from hypotheses._build import Remix, remix_graph
from hypotheses._heads import head_roles


def hypothesis(model, roles=None):
    roles = roles or head_roles(model)
    return remix_graph(model, roles, Remix(q=True))

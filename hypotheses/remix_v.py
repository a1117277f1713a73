"""REMIX day 3, rung "embeddings -> value" (Redwood: 0.90 loss recovered): each induction head's V input reads
only the token embedding; the paths into V through the earlier heads (and MLPs outside the token embedding) are
resampled. Q and K keep all their inputs, everything else is claimed as in the full graph. Baseline:
hypotheses/induction_baseline.py (every input of the induction heads resampled)."""

from hypotheses._build import Remix, remix_graph
from hypotheses._heads import head_roles


def hypothesis(model, roles=None):
    roles = roles or head_roles(model)
    return remix_graph(model, roles, Remix(v=True))

"""REMIX day 3, "scrubbing them all together" (Redwood: 0.37 loss recovered; the write-up's naive hypothesis,
about 35%): the three rungs at once. Each induction head's V and Q read only the token embedding, its K only its
previous-token head (with all that head's own inputs); everything else is claimed as in the full graph.
Baseline: hypotheses/induction_baseline.py."""

from hypotheses._build import Remix, remix_graph
from hypotheses._heads import head_roles


def hypothesis(model, roles=None):
    roles = roles or head_roles(model)
    return remix_graph(model, roles, Remix(v=True, q=True, k=True))

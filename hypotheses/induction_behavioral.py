"""The behavioral hypothesis: only the heads that pass the behavioral thresholds (prefix matching
and copying, scrub.heads.scores.Thresholds) reach the logits, each with all its inputs claimed; every other
path to the logits (other heads, the direct embedding path) is resampled."""

from hypotheses._build import behavioral_graph
from hypotheses._heads import head_roles


def hypothesis(model, roles=None):
    roles = roles or head_roles(model)
    return behavioral_graph(model, roles)

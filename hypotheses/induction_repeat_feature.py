"""The full model, with one claim on each behavioral induction head: at every position its output depends on
the input only through whether the current token occurred earlier in the sequence (a per-position
``is_repeat`` feature). Each position of the head is computed on another example that agrees there, so the
claim is tested at almost every position (the run reports each node's self-draw rate); the whole-sequence
``is_repeat()`` row would agree with no other natural-text window. Baseline:
hypotheses/induction_baseline.py."""

from hypotheses._heads import head_roles
from scrub.claims.features import is_repeat
from scrub.claims.hypothesis import full_graph


def hypothesis(model, roles=None):
    roles = roles or head_roles(model)
    g = full_graph(model)
    for head in roles.induction:
        g.nodes[head]["feature"] = is_repeat(per_position=True)
    return g

"""Redwood's induction baseline: every path of the model is claimed except the inputs of the
induction heads, which are all resampled (Q, K and V read a random other example). Loss recovered of the
induction hypotheses is measured between this (0) and the full graph (1), as in Chan et al. 2022."""

from hypotheses._build import induction_baseline
from hypotheses._heads import head_roles


def hypothesis(model, roles=None):
    roles = roles or head_roles(model)
    return induction_baseline(model, roles)

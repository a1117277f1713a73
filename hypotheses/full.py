"""Every path of the model is claimed, with no features: scrubbing it must reproduce the clean loss exactly
(loss recovered 1). A sanity check of the engine and the ceiling of every ladder."""

from scrub.claims.hypothesis import full_graph


def hypothesis(model):
    return full_graph(model)

"""REMIX day 3, bonus rung "previous position -> previous-token head value -> key" (Redwood: 0.82 loss
recovered): as hypotheses/remix_k.py, and the previous-token head, as it feeds K, reads its V input only
through the key just before each query (scrub.claims.masks.previous_position: REMIX's attn_probs * mask split);
through every other key its V input is resampled. Its Q and K keep all their inputs. Baseline:
hypotheses/induction_baseline.py."""

from hypotheses._build import Remix, remix_graph
from hypotheses._heads import head_roles
from scrub.claims.masks import previous_position


def hypothesis(model, roles=None):
    roles = roles or head_roles(model)
    return remix_graph(model, roles, Remix(k=True, prev_mask=previous_position()))

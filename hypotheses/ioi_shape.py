"""The indirect-object-identification circuit of Wang et al. (2022), written Redwood's way: the full graph,
with every input of the circuit's induction, S-inhibition and name-mover heads removed (resampled), and
their claimed paths added back: previous-token heads -> induction heads' K; induction and duplicate-token
heads -> S-inhibition heads' V; S-inhibition heads -> name movers' Q; the embeddings -> name movers' K and V.
The previous-token and duplicate-token heads keep all their inputs.

The head numbers are GPT-2 small's and mean something only with GPT-2 small's weights. On any other model
of 12 layers x 12 heads (here: a random-init model of that shape) this file is the scale test of the engine:
about 150 nodes, 30,000 claimed channel edges and more paths than could ever be unrolled.
"""

from hypotheses._build import add_edge, remove_inputs
from scrub.claims.hypothesis import full_graph

PREVIOUS_TOKEN = ("2.2", "4.11")
DUPLICATE_TOKEN = ("0.1", "0.10", "3.0")
INDUCTION = ("5.5", "5.8", "5.9", "6.9")
S_INHIBITION = ("7.3", "7.9", "8.6", "8.10")
NAME_MOVERS = ("9.6", "9.9", "10.0")


def hypothesis(model):
    cfg = model.cfg
    if cfg.n_layers < 11 or cfg.n_heads < 12:
        raise ValueError(f"ioi_shape names GPT-2 small's heads (12 layers x 12 heads, up to '10.0' and '8.10'); "
                         f"this model has {cfg.n_layers} layers x {cfg.n_heads} heads")
    g = remove_inputs(full_graph(model), INDUCTION + S_INHIBITION + NAME_MOVERS)
    for receiver in INDUCTION:
        for sender in PREVIOUS_TOKEN:
            add_edge(g, model, sender, receiver, "k")
    for receiver in S_INHIBITION:
        for sender in INDUCTION + DUPLICATE_TOKEN:
            add_edge(g, model, sender, receiver, "v")
    for receiver in NAME_MOVERS:
        for sender in S_INHIBITION:
            add_edge(g, model, sender, receiver, "q")
        add_edge(g, model, "embed", receiver, "kv")
    return g

"""Context sensitivity of every head (after Redwood's REMIX exercise): resample the part of a head's
input that comes from far-away positions and measure how much the late-position loss goes up.

Written as a hypothesis per head and run by the engine: the full graph, with every edge into the head's
k and v claimed only for keys within ``window`` positions of the query (``scrub.claims.masks.within``). For query
t, keys j with t - j > window read the k and v input of the head's unclaimed draw (another example, same
positions); nearer keys and the query read the clean input; the head's output flows on through the rest
of the model. ``tests/test_context.py`` checks it against the same split done with TransformerLens hooks.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from scrub.claims.hypothesis import full_graph, validate
from scrub.claims.masks import within
from scrub.claims.sites import Head
from scrub.engine.compute import clean_run
from scrub.engine.evaluator import evaluate
from scrub.engine.treeify import assign_data, treeify
from scrub.metrics import token_losses


def far_context_claim(model: HookedTransformer, head: Head, window: int) -> nx.DiGraph:
    """The full graph with every edge into ``head``'s k and v claimed only within ``window`` keys of the query."""
    g = full_graph(model)
    mask = within(window)
    for source in list(g.predecessors(str(head))):
        edge = g.edges[source, str(head)]
        masked = {c: mask for c in edge["via"] if c in "kv"}
        if masked:
            edge["qk_mask"] = masked
    return g


@dataclass(frozen=True)
class Sensitivity:
    """Per head: the increase of the mean loss at late positions when its far-away input is resampled."""

    window: int
    late_start: int
    increase: Tensor  # [n_layers, n_heads] nats
    stderr: Tensor  # [n_layers, n_heads] standard error over examples
    loss_clean: float


@torch.no_grad()
def context_sensitivity(model: HookedTransformer, tokens: Tensor, *, window: int, seed: int = 0,
                        late_start: int | None = None, step=None) -> Sensitivity:
    """Resample far-away K/V input of each head in turn (draws among ``tokens``, seeded by ``seed``); scored
    at prediction positions >= ``late_start`` (default: half the sequence, and always > ``window`` so every
    scored query has far keys)."""
    n, seq = tokens.shape
    late_start = max(window + 1, seq // 2) if late_start is None else late_start
    clean = clean_run(model, tokens)
    clean_loss = token_losses(clean.logits, tokens)[:, late_start:]  # [n, late]
    inc = torch.zeros(model.cfg.n_layers, model.cfg.n_heads, dtype=torch.float64)  # [layer, head]
    err = torch.zeros_like(inc)
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            tree = treeify(validate(far_context_claim(model, Head(layer, head), window), model))
            logits, _ = evaluate(model, tree, assign_data(tree, tokens, seed=seed), clean)  # [n, seq, vocab]
            diff = (token_losses(logits, tokens)[:, late_start:] - clean_loss).mean(1)  # [n]
            inc[layer, head] = diff.mean()
            err[layer, head] = diff.std() / n ** 0.5
            if step:
                step()
    return Sensitivity(window, late_start, inc, err, float(clean_loss.mean()))

"""The arguments of ``run``, checked before any work: one ``RunInputError`` naming the problem and the fix.

The model, the token ids (integers inside the vocabulary, at least two distinct examples of at least two
tokens), the seed, the batch size, the sampling options, the positions (at least one must be scored), the
baseline (not the hypothesis itself) and the memory one batch needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Literal

import networkx as nx
import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from scrub.claims.files import load_hypothesis
from scrub.claims.hypothesis import Claim, HypothesisError, validate
from scrub.data.batches import all_positions, induction_candidates
from scrub.data.candidates import GoodCandidates
from scrub.engine.treeify import SamplingOptions
from scrub.errors import ScrubError
from scrub.metrics import check_metric


class RunInputError(ScrubError):
    """An argument of ``run`` that cannot give a meaningful result; the message names the fix."""


# every prediction position; induction candidates (the current token occurred before); or REMIX-like "good
# induction candidate" tokens (``scrub.data.candidates.good_candidates``)
PositionsMode = Literal["all", "candidates", "good_candidates"]
Positions = PositionsMode | Callable[[Tensor], Tensor]  # or a function tokens -> bool mask, both [batch, seq]


MAX_SEED = 2**63 - 1  # seeds are 0..MAX_SEED: torch generators take 64 bits, and -1 would alias 2**64 - 1


def as_claim(hypothesis: Claim | nx.DiGraph | str | Path, model: HookedTransformer, *, name: str = "graph") -> Claim:
    """Accept a Claim, a graph, or the path of a hypothesis file."""
    if isinstance(hypothesis, Claim):
        return hypothesis
    if isinstance(hypothesis, nx.DiGraph):
        claim = validate(hypothesis, model)
        return Claim(name, claim.nodes, claim.edges, claim.root)
    if isinstance(hypothesis, (str, Path)):
        return load_hypothesis(hypothesis, model)
    raise HypothesisError(f"a hypothesis is a networkx.DiGraph, a hypothesis file path or a Claim, "
                          f"got {type(hypothesis).__name__}")


def score_mask(tokens: Tensor, positions: Positions) -> Tensor:
    """Which prediction positions are scored: [batch, seq-1] bool."""
    if callable(positions):
        name = getattr(positions, "__name__", "positions")
        try:
            mask = positions(tokens)
        except Exception as err:  # the caller's function: one line saying which and why
            raise RunInputError(f"the positions function {name!r} failed on tokens of shape {list(tokens.shape)}: "
                                f"{type(err).__name__}: {err}") from err
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.shape != tokens.shape:
            got = (f"a {str(mask.dtype).replace('torch.', '')} tensor of shape {list(mask.shape)}"
                   if isinstance(mask, Tensor) else f"a {type(mask).__name__}")
            raise RunInputError(f"the positions function {name!r} returned {got}: it must return a bool mask of the "
                                f"tokens' shape {list(tokens.shape)} (e.g. a comparison, or mask.bool())")
    elif positions == "all":
        mask = all_positions(tokens)
    elif positions == "candidates":
        mask = induction_candidates(tokens)  # the current token occurred before: induction can help
    elif positions == "good_candidates":
        mask = GoodCandidates.shipped()(tokens.cpu()).to(tokens.device)  # the current token is a good candidate
    else:
        raise RunInputError(f"positions must be 'all', 'candidates', 'good_candidates' or a function tokens -> bool "
                            f"mask, got {positions!r}")
    return mask[:, :-1]


def check_model(model: object) -> None:
    if not isinstance(model, HookedTransformer):
        hint = (f"load it first: scrub.run(scrub.load_model({model!r}), ...)" if isinstance(model, (str, Path))
                else "load one with scrub.load_model(name or checkpoint directory)")
        raise RunInputError(f"model must be a TransformerLens HookedTransformer, got {type(model).__name__}; {hint}")


def check_tokens(model: HookedTransformer, data: Tensor) -> Tensor:
    if not isinstance(data, Tensor):
        raise RunInputError(f"data must be a torch tensor of token ids [n_examples, seq], got {type(data).__name__}; "
                            f"convert it with torch.as_tensor(data, dtype=torch.long)")
    if data.dim() != 2:
        raise RunInputError(f"data must be a LongTensor of token ids [n_examples, seq], got shape {list(data.shape)}"
                            + ("; add the batch dimension with data[None]" if data.dim() == 1 else ""))
    if data.dtype == torch.bool or data.is_floating_point() or data.is_complex():
        raise RunInputError(f"token ids must be integers, got a {str(data.dtype).replace('torch.', '')} tensor "
                            f"(scrub never rounds ids); convert whole-number ids with data.long()")
    n, seq = data.shape
    if n < 2:
        raise RunInputError(f"need at least 2 examples, got {n}: resampling draws inputs from the other examples")
    if seq < 2:
        raise RunInputError(f"sequences of length {seq} have no next token to predict: the loss needs at least 2 "
                            f"tokens per example (position t predicts token t+1)")
    if seq > model.cfg.n_ctx:
        raise RunInputError(f"sequences of length {seq} are longer than the model's n_ctx {model.cfg.n_ctx}; "
                            f"use sequences of at most {model.cfg.n_ctx} tokens")
    bad = (data < 0) | (data >= model.cfg.d_vocab)  # [n, seq]
    if bool(bad.any()):
        row, col = (int(i) for i in bad.nonzero()[0])
        raise RunInputError(f"token id {int(data[row, col])} (example {row}, position {col}; {int(bad.sum())} such "
                            f"ids) is outside the model's vocabulary of {model.cfg.d_vocab} "
                            f"(ids 0..{model.cfg.d_vocab - 1}): was the data made with another tokenizer?")
    if bool((data == data[:1]).all()):
        raise RunInputError(f"all {n} examples are the same sequence: every resampled input equals the clean one, so "
                            f"there is nothing to measure; use distinct examples")
    return data.long()


def check_seed(seed: object, name: str = "seed") -> int:
    """``seed`` if it is a whole number in 0..MAX_SEED, else ``RunInputError``."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise RunInputError(f"{name} must be a whole number (0 to 2**63 - 1), got {seed!r}: runs are reproducible "
                            f"only from a given seed")
    if not 0 <= seed <= MAX_SEED:
        raise RunInputError(f"{name} must be between 0 and 2**63 - 1 (got {seed})")
    return seed


def check_batch_size(batch_size: object, name: str = "batch_size") -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 2:
        raise RunInputError(f"{name} must be a whole number ≥ 2, got {batch_size!r}: a batch holds at least two "
                            f"examples (default 32; it trades memory for speed, draws come from the whole dataset)")
    return batch_size


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, stop) of every batch: ``batch_size`` examples each; a last batch of a single example (which
    could draw from no other) joins the one before, so no example is dropped."""
    bounds = [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < 2:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def same_claim(a: Claim, b: Claim) -> bool:
    """Whether two claims are the same graph (same nodes, features and edges; names aside)."""
    return a.nodes == b.nodes and set(a.edges) == set(b.edges)


def check_arguments(hypothesis, baseline, seed, batch_size, options, n_bootstrap, metric) -> None:
    check_seed(seed)
    try:
        check_metric(metric)
    except ValueError as err:
        raise RunInputError(f"{err}: 'loss' is next-token cross-entropy, 'kl' the KL divergence from the clean "
                            f"run's predictions") from None
    check_batch_size(batch_size)
    if not isinstance(options, SamplingOptions):
        raise RunInputError(f"options must be a scrub.SamplingOptions, got {type(options).__name__}")
    pool = options.pool
    if pool is not None and (isinstance(pool, bool) or not isinstance(pool, int) or pool < 2):
        raise RunInputError(f"SamplingOptions.pool must be None (the whole dataset) or a whole number ≥ 2, got "
                            f"{pool!r}: a draw needs at least one other example to come from")
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, int) or n_bootstrap < 1:
        raise RunInputError(f"n_bootstrap must be a whole number ≥ 1, got {n_bootstrap!r}")
    if baseline is not None and (baseline is hypothesis or (
            isinstance(baseline, (str, Path)) and isinstance(hypothesis, (str, Path))
            and Path(baseline).resolve() == Path(hypothesis).resolve())):
        raise RunInputError("the baseline is the hypothesis itself: scrubbed and baseline losses would be equal and "
                            "loss recovered 0 (or 0/0); pass another baseline, or none for the empty hypothesis")


"""Behavioral head scores (Olsson et al. 2022, "In-context Learning and Induction Heads", Methods).

Owns the score definitions as pure functions on attention patterns / logit tensors (exact, testable on
hand-built inputs), thin wrappers that run a model to get those tensors, ``HeadScores``/``Thresholds``
and the head classifications built on them. Heads are ``scrub.claims.sites.Head`` and print as ``"L.H"``.

Pattern tensors are ``[batch, ..., q, k]`` (``...`` is e.g. ``head`` or ``layer, head``); query masks are
``[batch, q]``. Every score averages over the batch and the selected query positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
from transformer_lens import HookedTransformer

from scrub.claims.sites import Head, hook_name
from scrub.data.batches import check_length, natural_batch, repeat_positions, repeated_random_tokens
from scrub.engine.compute import norm_linear
from scrub.errors import ScrubError
from scrub.metrics import token_losses
from scrub.model.finite import check_weights
from scrub.model.loading import check_model

SCORE_NAMES = ("previous_token", "prefix_matching", "duplicate_token", "copying", "ov_eigenvalue")


# --- pure functions on attention patterns -------------------------------------------------------------

def attention_to(pattern: torch.Tensor, target: torch.Tensor, query_mask: torch.Tensor) -> torch.Tensor:
    """Mean over selected queries of the attention summed over that query's target keys.

    pattern [batch, ..., q, k]; target bool [batch, q, k]; query_mask bool [batch, q]. Returns [...].
    """
    batch, q, k = pattern.shape[0], pattern.shape[-2], pattern.shape[-1]
    flat = pattern.reshape(batch, -1, q, k)  # [batch, heads, q, k]
    on_target = (flat * target[:, None].to(flat.dtype)).sum(-1)  # [batch, heads, q]
    weights = query_mask[:, None, :].to(flat.dtype)  # [batch, 1, q]
    count = query_mask.sum()
    if count == 0:
        raise ScrubError("no query positions selected: the mask is empty (is the sequence too short?)")
    score = (on_target * weights).sum((0, 2)) / count  # [heads]
    return score.reshape(pattern.shape[1:-2])  # [...]


def previous_token_score(pattern: torch.Tensor, query_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean attention from position t to t-1 over t ≥ 1 (position 0 has no previous token).

    A perfect previous-token head scores 1; uniform causal attention scores mean_{t=1..S-1} 1/(t+1).
    """
    batch, seq = pattern.shape[0], pattern.shape[-1]
    pos = torch.arange(seq)
    target = (pos[None, :] == pos[:, None] - 1).expand(batch, seq, seq)  # [batch, q, k]
    mask = torch.ones(batch, seq, dtype=torch.bool) if query_mask is None else query_mask.clone()  # [batch, q]
    mask[:, 0] = False
    return attention_to(pattern, target, mask)


def prefix_matching_target(tokens: torch.Tensor) -> torch.Tensor:
    """True at (q, k) if key k directly FOLLOWS an earlier occurrence of the query's token (k-1 < q, k ≤ q)."""
    prev_key = torch.roll(tokens, 1, dims=1)  # [batch, seq]: tokens[k-1]
    same = tokens[:, :, None] == prev_key[:, None, :]  # [batch, q, k]
    seq = tokens.shape[1]
    causal = torch.tril(torch.ones(seq, seq, dtype=torch.bool))  # [q, k]: k ≤ q
    causal[:, 0] = False  # key 0 has no predecessor (roll wraps around)
    return same & causal


def duplicate_token_target(tokens: torch.Tensor) -> torch.Tensor:
    """True at (q, k) if k < q and tokens[k] == tokens[q]."""
    same = tokens[:, :, None] == tokens[:, None, :]  # [batch, q, k]
    earlier = torch.tril(torch.ones_like(same[0]), diagonal=-1)  # [q, k]
    return same & earlier


def prefix_matching_score(pattern: torch.Tensor, tokens: torch.Tensor,
                          query_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean attention from each query to the token(s) that followed earlier occurrences of its token.

    Olsson et al.'s Methods text says the head attends to the token that *preceded* the earlier copy;
    we follow their main text, their figures and public reproductions: the "+1 offset" token that
    FOLLOWED it, which is what an induction head attends to. Attention to all such earlier copies is
    summed, so a perfect induction pattern scores 1. Queries default to positions whose token occurred
    before; the model wrapper selects repeats 2..k of a repeated random sequence instead.
    """
    target = prefix_matching_target(tokens)  # [batch, q, k]
    mask = target.any(-1) if query_mask is None else query_mask & target.any(-1)  # [batch, q]
    return attention_to(pattern, target, mask)


def duplicate_token_score(pattern: torch.Tensor, tokens: torch.Tensor,
                          query_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean attention from each query to earlier occurrences of its own token (queries that have one)."""
    target = duplicate_token_target(tokens)  # [batch, q, k]
    mask = target.any(-1) if query_mask is None else query_mask & target.any(-1)  # [batch, q]
    return attention_to(pattern, target, mask)


# --- pure functions on logits / matrices --------------------------------------------------------------

def copying_ratio(logit_raise: torch.Tensor, src_tokens: torch.Tensor) -> torch.Tensor:
    """Copying score from direct-path logit effects: logit_raise [..., src, candidates], src_tokens [src]
    (the index of each source's own token among the candidates) -> [...].

    For each source: subtract the mean over the candidates, apply ReLU, take the attended token's share
    of the total (r ∈ [0, 1]); average over sources; map linearly [0, 0.5] -> [-1, 1] (score = 4r - 1,
    as Olsson et al. did). A head that raises only the attended token scores 3; one that does not
    favour it scores about -1. Sources whose raises are all equal count as r = 0.
    """
    centred = logit_raise - logit_raise.mean(-1, keepdim=True)  # [..., src, vocab]
    pos = centred.clamp(min=0)  # [..., src, vocab]
    index = src_tokens.expand(pos.shape[:-1])[..., None]  # [..., src, 1]
    own = pos.gather(-1, index)[..., 0]  # [..., src]
    ratio = torch.nan_to_num(own / pos.sum(-1), nan=0.0)  # [..., src]
    return 4 * ratio.mean(-1) - 1  # [...]


def eigenvalue_positivity(eigenvalues: torch.Tensor) -> torch.Tensor:
    """Σλ / Σ|λ| over the last dimension: 1 if all eigenvalues are positive reals, -1 if all negative."""
    total = eigenvalues.sum(-1).real  # [...]
    return total / eigenvalues.abs().sum(-1).clamp(min=1e-30)  # [...]


def icl_from_losses(losses: torch.Tensor, early: int, late: int) -> tuple[float, float]:
    """(mean loss at prediction position ``early``, at ``late``) from per-token losses [batch, seq]."""
    return float(losses[:, early].mean()), float(losses[:, late].mean())


# --- results and thresholds ---------------------------------------------------------------------------

@dataclass(frozen=True)
class HeadScores:
    """All behavioral scores, each a [n_layers, n_heads] tensor; ``data`` names the prev/dup batch."""

    previous_token: torch.Tensor
    prefix_matching: torch.Tensor
    duplicate_token: torch.Tensor
    copying: torch.Tensor
    ov_eigenvalue: torch.Tensor
    data: str = "natural"

    def score(self, name: str) -> torch.Tensor:
        if name not in SCORE_NAMES:
            raise ScrubError(f"unknown score {name!r}; scores are {', '.join(SCORE_NAMES)}")
        return getattr(self, name)

    def heads(self) -> list[Head]:
        n_layers, n_heads = self.previous_token.shape
        return [Head(layer, head) for layer in range(n_layers) for head in range(n_heads)]

    def per_head(self) -> dict[str, dict[str, float]]:
        """JSON form: ``{"L.H": {score_name: value}}`` (an output format, not a data structure)."""
        return {str(h): {name: float(self.score(name)[h.layer, h.head]) for name in SCORE_NAMES}
                for h in self.heads()}

    def _repr_html_(self) -> str:
        """The notebook view: a layer x head heatmap per score (``scrub.views.report``)."""
        from scrub.views.report import heads_html

        return heads_html(self)

    def to_html(self, path: str | Path) -> Path:
        """The notebook view as one self-contained HTML page at ``path``."""
        from scrub.views.report import write_heads

        return write_heads(self, path)


@dataclass(frozen=True)
class Thresholds:
    """Cut-offs for naming heads. Olsson et al. publish none; these are our documented defaults.

    previous_token 0.5: most of the head's attention goes to t-1 (uniform attention over 128 positions
        scores ~0.04). prefix_matching 0.4: ten times chance on a 25-token sequence repeated 4 times
        (~1/25), below the >0.5 that clear induction heads reach. copying 0.0: the middle of the
        rescaled range, i.e. the attended token gets a quarter of all positive logit raise (a head
        that does not copy scores about -1).
    """

    previous_token: float = 0.5
    prefix_matching: float = 0.4
    copying: float = 0.0


@dataclass(frozen=True)
class IclScore:
    """In-context-learning score: loss at prediction position ``late`` minus at ``early`` (negative = ICL)."""

    early: int
    late: int
    loss_early: float
    loss_late: float

    @property
    def score(self) -> float:
        return self.loss_late - self.loss_early


def previous_token_heads(scores: HeadScores, thresholds: Thresholds = Thresholds()) -> list[Head]:
    return [h for h in scores.heads() if scores.previous_token[h.layer, h.head] >= thresholds.previous_token]


def behavioral_induction_heads(scores: HeadScores, thresholds: Thresholds = Thresholds()) -> list[Head]:
    """Heads with prefix-matching ≥ threshold AND copying > threshold (Olsson's behavioral definition)."""
    return [h for h in scores.heads()
            if scores.prefix_matching[h.layer, h.head] >= thresholds.prefix_matching
            and scores.copying[h.layer, h.head] > thresholds.copying]


# --- model wrappers -----------------------------------------------------------------------------------

@torch.inference_mode()
def attention_patterns(model: HookedTransformer, tokens: torch.Tensor) -> torch.Tensor:
    """Every head's attention pattern on ``tokens``: [batch, layer, head, q, k]."""
    check_length(tokens, model)
    names = [hook_name(Head(layer, 0), "pattern") for layer in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names)
    return torch.stack([cache[name] for name in names], dim=1)  # [batch, layer, head, q, k]


@torch.inference_mode()
def ov_eigenvalue_scores(model: HookedTransformer) -> torch.Tensor:
    """Σλ/Σ|λ| of each head's full OV circuit W_E·N1·W_OV·Nf·W_U (token -> logit), [layer, head].

    N1, Nf are the linear parts of ln1 and ln_final (see ``compute.norm_linear``); positional embeddings and
    earlier layers are ignored (direct path from tokens). Eigenvalues come from ``FactoredMatrix``.
    """
    w_e, w_u = model.W_E.double(), model.W_U.double()  # [vocab, d_model], [d_model, vocab]
    right = norm_linear(model, getattr(model, "ln_final", None)) @ w_u  # [d_model, vocab]
    out = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)  # [layer, head]
    for layer in range(model.cfg.n_layers):
        left = w_e @ norm_linear(model, model.blocks[layer].ln1)  # [vocab, d_model]
        for head in range(model.cfg.n_heads):
            ov = model.OV[layer, head]  # FactoredMatrix [d_model, d_model]
            ov = type(ov)(ov.A.double(), ov.B.double())
            full = (left @ ov) @ right  # FactoredMatrix [vocab, vocab], rank d_head
            out[layer, head] = float(eigenvalue_positivity(full.eigenvalues))
    return out


@torch.inference_mode()
def copying_scores(model: HookedTransformer, tokens: torch.Tensor) -> torch.Tensor:
    """Copying score of every head, [layer, head], with ``tokens`` = BOS + random tokens [batch, 1+n].

    For each source position (all but BOS) and head: the head's output if it attended fully there,
    (ln1(resid_pre) W_V + b_V) W_O, read through the direct path Nf·W_U (linear part of ln_final, see
    ``compute.norm_linear``) -> logit raise of the tokens in the sample (Olsson et al.: "the raise of all tokens in
    the sample", not the whole vocabulary) -> ``copying_ratio`` with the source token.
    """
    check_length(tokens, model)
    names = [hook_name(Head(layer, 0), "resid_pre") for layer in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names)
    unembed = (norm_linear(model, getattr(model, "ln_final", None)) @ model.W_U.double()).float()  # [d_model, vocab]
    out = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)  # [layer, head]
    for layer, name in enumerate(names):
        block = model.blocks[layer]
        x = block.ln1(cache[name])[:, 1:]  # [batch, src, d_model]
        v = torch.einsum("bsd,hde->bshe", x, block.attn.W_V) + block.attn.b_V  # [batch, src, head, d_head]
        head_out = torch.einsum("bshe,hed->bhsd", v, block.attn.W_O)  # [batch, head, src, d_model]
        total = torch.zeros(model.cfg.n_heads)  # [head]
        for row in range(tokens.shape[0]):  # one sequence at a time bounds memory for big vocabularies
            sample, own = torch.unique(tokens[row, 1:], return_inverse=True)  # [n_unique], [src]
            raise_ = head_out[row].float() @ unembed[:, sample]  # [head, src, n_unique]: raises among the sample
            total += copying_ratio(raise_, own)  # [head]
        out[layer] = total / tokens.shape[0]
    return out


@torch.inference_mode()
def in_context_learning(model: HookedTransformer, tokens: torch.Tensor, *, early: int | None = None,
                        late: int | None = None) -> IclScore:
    """Loss at prediction position ``late`` (default min(200, last)) minus at ``early`` (default
    min(50, late // 4)), on natural text ``tokens`` [batch, seq]. Olsson et al. used 500 and 50."""
    check_model(model, "in_context_learning")
    check_length(tokens, model)
    last = tokens.shape[1] - 2  # the last position with a label
    late = min(200, last) if late is None else late
    early = min(50, late // 4) if early is None else early
    if not 0 <= early < late <= last:
        raise ScrubError(f"ICL positions need 0 ≤ early < late ≤ {last} (got early={early}, late={late})")
    losses = token_losses(model(tokens), tokens)  # [batch, seq-1]
    loss_early, loss_late = icl_from_losses(losses, early, late)
    return IclScore(early=early, late=late, loss_early=loss_early, loss_late=loss_late)


def head_scores(model: HookedTransformer, *, data: str = "natural", n: int = 32, seq_len: int | None = None,
                seed: int = 0, repeat_length: int = 25, exclude_common: int = 0,
                natural_tokens: torch.Tensor | None = None,
                progress: Callable[[Iterable[str]], Iterable[str]] | None = None) -> HeadScores:
    """Run every behavioral score on ``model``.

    prefix-matching: BOS + ``repeat_length`` random tokens x 4 (queries in repeats 2..4), excluding the
    ``exclude_common`` most and least frequent tokens; previous-token and duplicate-token: on natural
    text windows of ``seq_len`` (``data="natural"``) or on that same repeated batch (``data="rrt"``);
    copying: BOS + 25 random tokens per sequence; OV eigenvalues: weights only.
    ``progress`` wraps the list of step names (e.g. ``tqdm``) to report progress.
    """
    if data not in ("natural", "rrt"):
        raise ScrubError(f"unknown data {data!r}: use 'natural' (validation text) or 'rrt' (repeated random tokens)")
    check_model(model, "head_scores")  # not a model, meta weights, model.half(): refused naming the fix
    check_weights(model, "the model")  # a NaN weight would end in an eigenvalue traceback, not a score
    cfg = model.cfg
    seq_len = min(128, cfg.n_ctx) if seq_len is None else seq_len
    repeat_length = min(repeat_length, (cfg.n_ctx - 1) // 4)
    check_length(1 + 4 * repeat_length, model)
    check_length(seq_len, model)
    rrt = repeated_random_tokens(n, repeat_length, 4, seed=seed, vocab_size=cfg.d_vocab,
                                 exclude_common=exclude_common)  # [n, 1 + 4L]
    copy_tokens = repeated_random_tokens(n, 25, 1, seed=seed + 1, vocab_size=cfg.d_vocab,
                                         exclude_common=exclude_common)  # [n, 26]
    results: dict[str, torch.Tensor] = {}
    steps = ("repeated random tokens", "natural text", "copying", "OV eigenvalues")
    for step in (progress(steps) if progress else steps):
        if step == "repeated random tokens":
            pattern = attention_patterns(model, rrt)  # [n, layer, head, q, k]
            later = repeat_positions(rrt, repeat_length, first_repeat=1)  # [n, seq]
            results["prefix_matching"] = prefix_matching_score(pattern, rrt, later)
            if data == "rrt":
                results["previous_token"] = previous_token_score(pattern)
                results["duplicate_token"] = duplicate_token_score(pattern, rrt, later)
        elif step == "natural text" and data == "natural":
            tokens = natural_batch(n, seq_len, seed=seed, tokens=natural_tokens)  # [n, seq_len]
            pattern = attention_patterns(model, tokens)  # [n, layer, head, q, k]
            results["previous_token"] = previous_token_score(pattern)
            results["duplicate_token"] = duplicate_token_score(pattern, tokens)
        elif step == "copying":
            results["copying"] = copying_scores(model, copy_tokens)
        elif step == "OV eigenvalues":
            results["ov_eigenvalue"] = ov_eigenvalue_scores(model)
    return HeadScores(**{name: results[name] for name in SCORE_NAMES}, data=data)

"""Token batches and position masks: natural-text windows, repeated random tokens, induction candidates.

Every function is pure (seeded ``torch.Generator``, no module state). Batches are ``LongTensor[batch, seq]``
and always start with BOS.

Position convention: a mask over positions marks *prediction positions*. Position ``t`` is where the
model predicts token ``t + 1``, so the loss at ``t`` is ``-log p(tokens[t+1] | tokens[:t+1])``. The last
position has no label; ``loss_mask`` removes it before a mask is used to average losses.
"""

from __future__ import annotations

import numbers
from pathlib import Path

import numpy as np
import torch
from transformer_lens import HookedTransformer

from scrub.errors import ScrubError
from scrub.memory import check_memory
from scrub.model.loading import ASSETS
from scrub.model.tokenizer import load_tokenizer

VAL_TOKENS_PATH = ASSETS / "val_tokens.npy"


def load_val_tokens(path: str | Path = VAL_TOKENS_PATH) -> torch.Tensor:
    """The validation stream as a 1-D LongTensor (documents concatenated, each preceded by BOS)."""
    path = Path(path)
    if not path.exists():
        raise ScrubError(f"no validation tokens at {path}; rebuild them with `python training/prepare_corpus.py`")
    return torch.from_numpy(np.load(path).astype(np.int64))  # [stream]


def _check_count(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ScrubError(f"{name} must be a whole number ≥ {low} (got {value!r})")


def check_length(tokens: torch.Tensor | int, model: HookedTransformer) -> None:
    """Raise ``ValueError`` if a batch (or a length) does not fit in the model's context window."""
    length = tokens if isinstance(tokens, int) else int(tokens.shape[-1])
    n_ctx = model.cfg.n_ctx
    if length > n_ctx:
        raise ScrubError(
            f"sequence of length {length} is longer than the model's n_ctx {n_ctx}; use --seq-len ≤ {n_ctx}"
        )


def natural_batch(n: int, seq_len: int = 128, *, seed: int = 0, tokens: torch.Tensor | None = None,
                  bos_id: int = 0) -> torch.Tensor:
    """``n`` windows of the validation stream, each BOS + ``seq_len - 1`` stream tokens.

    Windows are cut from a fixed non-overlapping tiling of the stream and ``n`` of them are drawn without
    replacement (seeded); only when ``n`` exceeds the number of tiles are random, possibly overlapping
    starts added. ``tokens`` overrides the stream (1-D); by default it is ``scrub/assets/val_tokens.npy``.
    """
    _check_count("natural_batch: n", n, 1)
    _check_count("natural_batch: seq_len", seq_len, 2)
    check_memory(4 * 8 * n * seq_len, f"{n} windows of {seq_len} tokens", "ask for fewer or shorter windows")
    stream = load_val_tokens() if tokens is None else torch.as_tensor(tokens, dtype=torch.long).flatten()
    body = seq_len - 1
    if body > len(stream):
        raise ScrubError(f"seq_len {seq_len} is longer than the token stream ({len(stream)} tokens)")
    gen = torch.Generator().manual_seed(seed)
    n_tiles = len(stream) // body
    starts = torch.randperm(n_tiles, generator=gen)[:n] * body  # [min(n, n_tiles)]
    if n > n_tiles:
        extra = torch.randint(0, len(stream) - body + 1, (n - n_tiles,), generator=gen)  # [n - n_tiles]
        starts = torch.cat([starts, extra])
    offsets = starts[:, None] + torch.arange(body)[None, :]  # [n, body]
    bos = torch.full((n, 1), bos_id, dtype=torch.long)  # [n, 1]
    return torch.cat([bos, stream[offsets]], dim=1)  # [n, seq_len]


def token_frequencies(tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Count of every token id below ``vocab_size`` in ``tokens`` (any shape)."""
    flat = tokens.flatten()
    return torch.bincount(flat[flat < vocab_size], minlength=vocab_size)  # [vocab]


def allowed_random_tokens(vocab_size: int, *, bos_id: int = 0, exclude_common: int = 0,
                          tokens: torch.Tensor | None = None) -> torch.Tensor:
    """Token ids random sequences may use: all but BOS and, if ``exclude_common = k > 0``, the ``k`` most
    and the ``k`` least frequent tokens of the validation stream (ties broken by id)."""
    keep = torch.ones(vocab_size, dtype=torch.bool)  # [vocab]
    if 0 <= bos_id < vocab_size:
        keep[bos_id] = False
    if exclude_common > 0:
        stream = load_val_tokens() if tokens is None else torch.as_tensor(tokens, dtype=torch.long)
        counts = token_frequencies(stream, vocab_size).double()  # [vocab]
        counts[~keep] = float("nan")
        candidates = torch.nonzero(keep).flatten()  # [n_keep]
        order = candidates[torch.argsort(counts[candidates], stable=True)]  # ascending frequency
        keep[order[:exclude_common]] = False
        keep[order[-exclude_common:]] = False
    allowed = torch.nonzero(keep).flatten()  # [n_allowed]
    if len(allowed) == 0:
        raise ScrubError(f"excluding {exclude_common} most and least common tokens leaves none of {vocab_size}")
    return allowed


def default_exclude_common(model: HookedTransformer) -> int:
    """How many most and least frequent tokens random sequences leave out by default: ``d_vocab // 20`` for
    models that use the scrub tokenizer (the frequencies come from its validation stream), else 0."""
    return model.cfg.d_vocab // 20 if load_tokenizer().vocab_size == model.cfg.d_vocab else 0


def repeated_random_tokens(n: int, length: int, repeats: int = 2, *, seed: int = 0, vocab_size: int,
                           bos_id: int = 0, exclude_common: int = 0,
                           tokens: torch.Tensor | None = None) -> torch.Tensor:
    """BOS then a uniform random sequence of ``length`` tokens repeated ``repeats`` times.

    Tokens are drawn with replacement from ``allowed_random_tokens`` (never BOS; ``exclude_common = k``
    also drops the k most and k least frequent tokens of the validation stream, or of ``tokens``).
    Returns ``LongTensor[n, 1 + length * repeats]``; repeat ``r`` (0-based) occupies positions
    ``1 + r*length`` to ``(r+1)*length``.
    """
    for name, value in (("n", n), ("length", length), ("repeats", repeats)):
        _check_count(f"repeated_random_tokens: {name}", value, 1)
    check_memory(3 * 8 * n * (1 + length * repeats), f"{n} sequences of 1 + {length} x {repeats} tokens",
                 "ask for fewer or shorter sequences")
    allowed = allowed_random_tokens(vocab_size, bos_id=bos_id, exclude_common=exclude_common, tokens=tokens)
    gen = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, len(allowed), (n, length), generator=gen)  # [n, length]
    body = allowed[picks].repeat(1, repeats)  # [n, length * repeats]
    bos = torch.full((n, 1), bos_id, dtype=torch.long)  # [n, 1]
    return torch.cat([bos, body], dim=1)  # [n, 1 + length * repeats]


def induction_candidates(tokens: torch.Tensor) -> torch.Tensor:
    """True at prediction position ``t`` if ``tokens[t]`` occurred earlier in the same sequence.

    These are the positions where an induction head can help: it looks up what followed the earlier
    occurrence and predicts it for ``t + 1``.
    """
    same = tokens[:, :, None] == tokens[:, None, :]  # [batch, q, k]
    earlier = torch.tril(torch.ones_like(same[0]), diagonal=-1)  # [q, k]: k < q
    return (same & earlier).any(dim=-1)  # [batch, seq]


def all_positions(tokens: torch.Tensor) -> torch.Tensor:
    """Every position (combine with ``loss_mask`` to average losses)."""
    return torch.ones_like(tokens, dtype=torch.bool)  # [batch, seq]


def repeat_positions(tokens: torch.Tensor, length: int, first_repeat: int = 1) -> torch.Tensor:
    """True at positions in repeat ``first_repeat`` (0-based) or later of a repeated-random-token batch."""
    mask = torch.zeros(tokens.shape, dtype=torch.bool)  # [batch, seq]
    mask[:, 1 + first_repeat * length:] = True
    return mask


def loss_mask(mask: torch.Tensor) -> torch.Tensor:
    """``mask`` with the last position cleared: it predicts a token beyond the sequence, so has no loss."""
    out = mask.clone()  # [batch, seq]
    out[..., -1] = False
    return out


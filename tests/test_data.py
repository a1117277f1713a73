"""Tests for scrub.data.batches: batch shapes, BOS, determinism, exclusions and position masks."""

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from scrub.data.batches import (
    all_positions,
    allowed_random_tokens,
    check_length,
    induction_candidates,
    load_val_tokens,
    loss_mask,
    natural_batch,
    repeat_positions,
    repeated_random_tokens,
)


def test_natural_batch_windows_come_from_the_stream():
    stream = load_val_tokens()
    batch = natural_batch(4, 32, seed=3)
    assert batch.shape == (4, 32) and batch.dtype == torch.long
    assert (batch[:, 0] == 0).all()
    for row in batch:
        body = row[1:]
        starts = [s for s in range(0, len(stream) - 31, 31) if torch.equal(stream[s:s + 31], body)]
        assert starts, "each window is a tile of the stream"
    assert torch.equal(batch, natural_batch(4, 32, seed=3))
    assert not torch.equal(batch, natural_batch(4, 32, seed=4))


def test_natural_batch_is_non_overlapping_then_overlapping():
    stream = torch.arange(1, 31)  # 30 tokens -> 3 tiles of 10
    batch = natural_batch(3, 11, tokens=stream)
    assert sorted(batch[:, 1].tolist()) == [1, 11, 21]
    more = natural_batch(5, 11, tokens=stream)
    assert more.shape == (5, 11)
    with pytest.raises(ValueError, match="longer than the token stream"):
        natural_batch(1, 40, tokens=stream)


def test_check_length_message():
    cfg = HookedTransformerConfig(n_layers=1, n_heads=1, d_model=8, d_head=8, n_ctx=16, d_vocab=32,
                                  attn_only=True, act_fn="gelu")
    model = HookedTransformer(cfg)
    check_length(torch.zeros(2, 16, dtype=torch.long), model)
    message = r"sequence of length 17 is longer than the model.s n_ctx 16; use --seq-len ≤ 16"
    with pytest.raises(ValueError, match=message):
        check_length(torch.zeros(2, 17, dtype=torch.long), model)
    with pytest.raises(ValueError):
        check_length(20, model)


def test_repeated_random_tokens_structure():
    tokens = repeated_random_tokens(3, 7, 4, seed=1, vocab_size=50)
    assert tokens.shape == (3, 1 + 28)
    assert (tokens[:, 0] == 0).all() and (tokens[:, 1:] != 0).all()
    for r in range(1, 4):
        assert torch.equal(tokens[:, 1:8], tokens[:, 1 + 7 * r:8 + 7 * r])
    assert torch.equal(tokens, repeated_random_tokens(3, 7, 4, seed=1, vocab_size=50))


def test_exclude_common_drops_most_and_least_frequent():
    stream = torch.tensor([0] + [1] * 9 + [2] * 8 + [3] * 5 + [4] * 3 + [5] * 2 + [6])  # 7 ids, 6 = rarest
    allowed = allowed_random_tokens(8, exclude_common=2, tokens=stream)
    # by frequency (BOS excluded): 7 (0) < 6 (1) < 5 < 4 < 3 < 2 < 1: drop 7, 6 and 1, 2
    assert allowed.tolist() == [3, 4, 5]
    tokens = repeated_random_tokens(20, 10, seed=0, vocab_size=8, exclude_common=2, tokens=stream)
    assert set(tokens[:, 1:].unique().tolist()) <= {3, 4, 5}
    with pytest.raises(ValueError, match="leaves none"):
        allowed_random_tokens(4, exclude_common=2, tokens=stream)


def test_induction_candidates_and_masks():
    tokens = torch.tensor([[0, 5, 6, 5, 7, 6]])
    assert induction_candidates(tokens).tolist() == [[False, False, False, True, False, True]]
    assert all_positions(tokens).all()
    assert loss_mask(all_positions(tokens)).tolist() == [[True] * 5 + [False]]
    rrt = repeated_random_tokens(1, 3, 3, vocab_size=100)
    assert repeat_positions(rrt, 3, first_repeat=1).tolist() == [[False] * 4 + [True] * 6]
    # in a repeated random sequence every token of repeats 2.. occurred earlier
    assert (induction_candidates(rrt)[:, 4:]).all()


def test_sizes_that_cannot_fit_are_refused_before_allocating(monkeypatch):
    import scrub.memory as memory

    monkeypatch.setattr(memory, "available_memory", lambda device="cpu": 2**20)  # 1 MB
    with pytest.raises(ValueError, match=r"1000000 windows of 128 tokens needs about [\d.]+ GB of memory but 1 MB"):
        natural_batch(10**6, 128, tokens=torch.arange(1, 1000))
    with pytest.raises(ValueError, match=r"needs about .* of memory .* ask for fewer or shorter sequences"):
        repeated_random_tokens(10**6, 50, vocab_size=100)
    assert natural_batch(2, 8, tokens=torch.arange(1, 100)).shape == (2, 8)  # small batches still fit
    monkeypatch.setattr(memory, "available_memory", lambda device="cpu": None)  # unknown: no guard
    memory.check_memory(10**15, "anything", "no fix")


@pytest.mark.parametrize("call, message", [
    (lambda: natural_batch(2.5, 8), r"natural_batch: n must be a whole number ≥ 1 \(got 2.5\)"),
    (lambda: natural_batch(0, 8), r"natural_batch: n must be a whole number ≥ 1 \(got 0\)"),
    (lambda: natural_batch(2, 1), r"natural_batch: seq_len must be a whole number ≥ 2 \(got 1\)"),
    (lambda: natural_batch(True, 8), r"natural_batch: n must be a whole number"),
    (lambda: repeated_random_tokens(2, 0, vocab_size=10), r"repeated_random_tokens: length must be a whole number ≥ 1"),
    (lambda: repeated_random_tokens(2, 3.0, vocab_size=10), r"repeated_random_tokens: length must be a whole number"),
])
def test_bad_sizes_are_one_line_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_numpy_integers_are_sizes():
    import numpy as np

    assert natural_batch(np.int64(2), np.int64(8), tokens=torch.arange(1, 100)).shape == (2, 8)

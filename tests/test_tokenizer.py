"""Tests for scrub.model.tokenizer: round trips, BOS, and the vocabulary check against a model."""

import pytest
from transformer_lens import HookedTransformer, HookedTransformerConfig

from scrub.model.tokenizer import check_compatible, load_tokenizer


def tiny_model(d_vocab: int) -> HookedTransformer:
    cfg = HookedTransformerConfig(n_layers=1, n_heads=2, d_model=16, d_head=8, n_ctx=16, d_vocab=d_vocab,
                                  attn_only=True, act_fn="gelu", seed=0)
    return HookedTransformer(cfg)


def test_shipped_tokenizer_basics():
    tok = load_tokenizer()
    assert tok.bos_id == 0
    assert tok.vocab_size == 2048
    text = "To be, or not to be: that is the question."
    ids = tok.encode(text)
    assert ids and tok.bos_id not in ids  # encode never adds BOS
    assert tok.decode(ids) == text
    assert tok.decode([tok.bos_id] + ids, skip_special=True) == text
    assert tok.decode([tok.bos_id]) == "<|bos|>"


def test_check_compatible_accepts_matching_model():
    check_compatible(load_tokenizer(), tiny_model(2048))


def test_check_compatible_names_both_sizes():
    with pytest.raises(ValueError) as err:
        check_compatible(load_tokenizer(), tiny_model(512))
    message = str(err.value)
    assert "2048" in message and "d_vocab=512" in message and "--data rrt" in message


def test_missing_tokenizer_file(tmp_path):
    with pytest.raises(ValueError, match="no tokenizer file"):
        load_tokenizer(tmp_path / "nope.json")

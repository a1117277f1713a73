"""Tests for scrub.heads.scores: exact answers on hand-built patterns, constructed weights, detect_head cross-checks."""

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.head_detector import detect_head

from scrub.claims.sites import Head
from scrub.data.batches import natural_batch, repeat_positions, repeated_random_tokens
from scrub.heads.scores import (
    SCORE_NAMES,
    HeadScores,
    Thresholds,
    attention_patterns,
    attention_to,
    behavioral_induction_heads,
    copying_ratio,
    copying_scores,
    duplicate_token_score,
    eigenvalue_positivity,
    head_scores,
    icl_from_losses,
    in_context_learning,
    ov_eigenvalue_scores,
    prefix_matching_score,
    previous_token_heads,
    previous_token_score,
)
from scrub.model.loading import SHIPPED_DIR, TOKENIZER_PATH, load_model

SHIPPED = pytest.mark.skipif(not (SHIPPED_DIR / "config.json").exists(),
                             reason=f"shipped model not trained yet ({SHIPPED_DIR} missing)")


def small_model(**overrides) -> HookedTransformer:
    kwargs = dict(n_layers=2, n_heads=4, d_model=32, d_head=8, n_ctx=64, d_vocab=2048, attn_only=True,
                  act_fn="gelu", seed=0, normalization_type="LN", positional_embedding_type="shortformer",
                  default_prepend_bos=True)
    return HookedTransformer(HookedTransformerConfig(**(kwargs | overrides))).eval()


def one_hot_pattern(batch: int, seq: int, key_of) -> torch.Tensor:
    """[batch, 1, q, k] pattern putting all attention of query q on key_of(q)."""
    pattern = torch.zeros(batch, 1, seq, seq)
    for q in range(seq):
        pattern[:, 0, q, key_of(q)] = 1.0
    return pattern


# --- pure functions, exact answers --------------------------------------------------------------------

def test_perfect_previous_token_pattern_scores_one():
    assert previous_token_score(one_hot_pattern(2, 10, lambda q: max(q - 1, 0))).item() == pytest.approx(1.0)
    assert previous_token_score(one_hot_pattern(2, 10, lambda q: q)).item() == 0.0


def test_uniform_causal_attention_scores_mean_inverse_position():
    seq = 12
    pattern = torch.tril(torch.ones(seq, seq)) / torch.arange(1, seq + 1)[:, None]  # [q, k]
    expected = sum(1 / (t + 1) for t in range(1, seq)) / (seq - 1)
    assert previous_token_score(pattern[None, None]).item() == pytest.approx(expected)


def test_perfect_induction_pattern_scores_one_on_prefix_matching():
    length = 6
    tokens = repeated_random_tokens(3, length, 4, seed=0, vocab_size=500)  # [3, 25]
    seq = tokens.shape[1]
    induction = one_hot_pattern(3, seq, lambda q: q - length + 1 if q > length else 0)
    later = repeat_positions(tokens, length)
    assert prefix_matching_score(induction, tokens, later).item() == pytest.approx(1.0)
    assert prefix_matching_score(induction, tokens).item() == pytest.approx(1.0)
    previous = one_hot_pattern(3, seq, lambda q: max(q - 1, 0))
    assert prefix_matching_score(previous, tokens, later).item() == pytest.approx(0.0)
    duplicate = one_hot_pattern(3, seq, lambda q: q - length if q > length else 0)
    assert duplicate_token_score(duplicate, tokens, later).item() == pytest.approx(1.0)
    assert prefix_matching_score(duplicate, tokens, later).item() == pytest.approx(0.0)


def test_attention_to_keeps_leading_dims():
    pattern = torch.rand(2, 3, 4, 5, 5)  # [batch, layer, head, q, k]
    target = torch.eye(5, dtype=torch.bool).expand(2, 5, 5)
    out = attention_to(pattern, target, torch.ones(2, 5, dtype=torch.bool))
    assert out.shape == (3, 4)
    assert out[1, 2].item() == pytest.approx(pattern[:, 1, 2].diagonal(dim1=-2, dim2=-1).mean().item(), rel=1e-6)


def test_copying_ratio_exact_values():
    src = torch.tensor([0])
    assert copying_ratio(torch.tensor([[3.0, 0, 0, 1]]), src).item() == pytest.approx(3.0)  # only token 0 raised
    assert copying_ratio(torch.tensor([[1.0, 0, 0, 1]]), src).item() == pytest.approx(1.0)  # half the raise
    assert copying_ratio(torch.tensor([[0.0, 1, 1, 1]]), src).item() == pytest.approx(-1.0)  # lowered
    assert copying_ratio(torch.ones(1, 4), src).item() == pytest.approx(-1.0)  # no preference


def test_eigenvalue_positivity():
    assert eigenvalue_positivity(torch.linalg.eigvals(torch.eye(3))).item() == pytest.approx(1.0)
    assert eigenvalue_positivity(torch.linalg.eigvals(-torch.eye(3))).item() == pytest.approx(-1.0)
    rotation = torch.tensor([[0.0, -1.0], [1.0, 0.0]])  # eigenvalues ±i
    assert eigenvalue_positivity(torch.linalg.eigvals(rotation)).item() == pytest.approx(0.0, abs=1e-6)


def test_icl_from_losses():
    losses = torch.tensor([[4.0, 3.0, 2.0, float("nan")], [2.0, 1.0, 0.0, float("nan")]])
    assert icl_from_losses(losses, 0, 2) == (3.0, 1.0)


def test_thresholds_select_heads():
    zeros = torch.zeros(2, 2)
    scores = HeadScores(previous_token=torch.tensor([[0.9, 0.1], [0.5, 0.0]]),
                        prefix_matching=torch.tensor([[0.0, 0.0], [0.8, 0.8]]),
                        duplicate_token=zeros, copying=torch.tensor([[1.0, 1.0], [0.5, -0.5]]), ov_eigenvalue=zeros)
    assert [str(h) for h in previous_token_heads(scores)] == ["0.0", "1.0"]
    assert behavioral_induction_heads(scores) == [Head(1, 0)]
    assert behavioral_induction_heads(scores, Thresholds(copying=-1.0)) == [Head(1, 0), Head(1, 1)]
    assert set(scores.per_head()["1.1"]) == set(SCORE_NAMES)


# --- constructed weights --------------------------------------------------------------------------------

def identity_copier(sign: float = 1.0) -> HookedTransformer:
    """One head whose full OV circuit is sign * identity on tokens: no LayerNorm, W_E = W_U = W_V = I."""
    model = small_model(n_layers=1, n_heads=1, d_model=16, d_head=16, d_vocab=16, n_ctx=32,
                        normalization_type=None)
    eye = torch.eye(16)
    with torch.no_grad():
        model.embed.W_E.copy_(eye)
        model.unembed.W_U.copy_(eye)
        model.blocks[0].attn.W_V.copy_(eye[None])
        model.blocks[0].attn.W_O.copy_(sign * eye[None])
        model.blocks[0].attn.b_V.zero_()
    return model


def test_identity_ov_circuit_scores():
    tokens = repeated_random_tokens(3, 25, 1, vocab_size=16)
    assert ov_eigenvalue_scores(identity_copier()).item() == pytest.approx(1.0)
    assert ov_eigenvalue_scores(identity_copier(-1.0)).item() == pytest.approx(-1.0)
    assert copying_scores(identity_copier(), tokens).item() == pytest.approx(3.0)
    assert copying_scores(identity_copier(-1.0), tokens).item() == pytest.approx(-1.0)


def test_ov_eigenvalues_match_dense_computation_with_layernorm():
    model = small_model(d_vocab=64)
    got = ov_eigenvalue_scores(model)
    d = model.cfg.d_model
    centre = torch.eye(d, dtype=torch.float64) - 1.0 / d
    for layer, head in [(0, 1), (1, 3)]:
        n1 = centre * model.blocks[layer].ln1.w.double()
        nf = centre * model.ln_final.w.double()
        dense = (model.W_E.double() @ n1 @ model.W_V[layer, head].double() @ model.W_O[layer, head].double()
                 @ nf @ model.W_U.double())
        eig = torch.linalg.eigvals(dense)
        assert got[layer, head].item() == pytest.approx((eig.sum().real / eig.abs().sum()).item(), abs=1e-5)


# --- cross-check against transformer_lens.head_detector -------------------------------------------------

def with_tokenizer(model: HookedTransformer, tmp_path) -> HookedTransformer:
    """Attach the scrub tokenizer as a Hugging Face tokenizer so detect_head can tokenize strings."""
    from transformers import PreTrainedTokenizerFast

    PreTrainedTokenizerFast(tokenizer_file=str(TOKENIZER_PATH), bos_token="<|bos|>", eos_token="<|bos|>",
                            pad_token="<|bos|>").save_pretrained(tmp_path)
    model.set_tokenizer(PreTrainedTokenizerFast.from_pretrained(tmp_path))
    return model


def check_against_detect_head(model: HookedTransformer, text: str) -> None:
    """detect_head ("mul", no exclusions) sums attention on the detection pattern over ALL S query rows
    and divides by the total attention S; our scores average over the rows that have a target.
    So detect = ours * (rows with a target) / S, exactly."""
    tokens = model.to_tokens(text)  # [1, S], BOS prepended
    seq = tokens.shape[1]
    pattern = attention_patterns(model, tokens)  # [1, layer, head, q, k]
    prev = previous_token_score(pattern) * (seq - 1) / seq
    torch.testing.assert_close(detect_head(model, text, "previous_token_head"), prev, atol=1e-5, rtol=0)
    from scrub.heads.scores import duplicate_token_target, prefix_matching_target

    rows = prefix_matching_target(tokens).any(-1).sum().item()
    induction = prefix_matching_score(pattern, tokens) * rows / seq
    torch.testing.assert_close(detect_head(model, text, "induction_head"), induction, atol=1e-5, rtol=0)
    rows = duplicate_token_target(tokens).any(-1).sum().item()
    duplicate = duplicate_token_score(pattern, tokens) * rows / seq
    torch.testing.assert_close(detect_head(model, text, "duplicate_token_head"), duplicate, atol=1e-5, rtol=0)


TEXT = "But soft, what light through yonder window breaks? It is the east, and Juliet is the sun. " * 2


def test_matches_detect_head_on_random_init_model(tmp_path):
    check_against_detect_head(with_tokenizer(small_model(n_ctx=128), tmp_path), TEXT)


# --- whole-model wrappers ---------------------------------------------------------------------------------

def test_head_scores_on_random_init_model():
    model = small_model(default_prepend_bos=False)
    for data in ("natural", "rrt"):
        scores = head_scores(model, data=data, n=4, exclude_common=50)
        for name in SCORE_NAMES:
            assert scores.score(name).shape == (2, 4), name
        for name in ("previous_token", "prefix_matching", "duplicate_token"):
            assert ((scores.score(name) >= 0) & (scores.score(name) <= 1)).all()
        assert (scores.copying < -0.6).all()  # random heads do not copy: chance is 4/25 - 1 = -0.84
    with pytest.raises(ValueError, match="n_ctx 64"):
        head_scores(model, seq_len=65)
    icl = in_context_learning(model, natural_batch(2, 64))
    assert (icl.early, icl.late) == (15, 62)
    assert icl.score == pytest.approx(icl.loss_late - icl.loss_early)


@SHIPPED
def test_shipped_model_scores(tmp_path):
    model = load_model()
    scores = head_scores(model, n=8, exclude_common=100)
    assert scores.previous_token.shape == (model.cfg.n_layers, model.cfg.n_heads)
    # the first half of the mechanism: a layer-0 previous-token head (layer 1 may have one too: 1.5 is)
    assert scores.previous_token[0].max() >= Thresholds().previous_token, "a layer-0 previous-token head"
    assert scores.prefix_matching[1].max() > scores.prefix_matching[0].max(), "induction heads live in layer 1"
    check_against_detect_head(with_tokenizer(model, tmp_path), TEXT)


@SHIPPED
def test_shipped_model_has_induction_heads():
    """What the model card claims: layer-1 heads with prefix matching >= 0.4 that copy, and in-context
    copying of random tokens (second-repeat loss far below the first)."""
    model = load_model()
    scores = head_scores(model, n=16, exclude_common=model.cfg.d_vocab // 20)
    induction = behavioral_induction_heads(scores, Thresholds())
    assert induction and all(h.layer == 1 for h in induction)
    rrt = repeated_random_tokens(16, 100, 2, vocab_size=model.cfg.d_vocab, exclude_common=model.cfg.d_vocab // 20)
    logprobs = model(rrt).log_softmax(-1)[:, :-1].gather(-1, rrt[:, 1:, None])[..., 0]  # [16, 200]
    first, second = -logprobs[:, 1:100].mean(), -logprobs[:, 100:].mean()
    assert second < first / 4

"""Component maths: the fused LayerNorm equals TransformerLens' own module, and recomputed heads and MLPs
equal TransformerLens' own forward pass on every supported architecture; unsupported ones are named. Heads
with per-(query, key) alternative inputs (query-key masks) read the main or the alternative input exactly
as their masks say."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor
from transformer_lens.components import RMSNorm

import scrub
from scrub.claims.masks import within
from scrub.claims.sites import Channel
from scrub.engine.compute import (
    UnsupportedModelError,
    check_supported,
    clean_run,
    heads_z_normed,
    mlp_forward,
    normalise,
)
from tests.helpers import tiny_model
from tests.test_context import far_mixed_z

# A representative set of the supported architectures (every model has 2 layers, 4 query heads and MLPs).
ARCHS = {
    "standard-LN": dict(pos="standard"),
    "shortformer-LN": dict(),
    "shortformer-RMS-gated-relu": dict(norm="RMS", gated=True, act_fn="relu"),
    "shortformer-no-attn-scale": dict(use_attn_scale=False),
    "rotary-LN": dict(pos="rotary"),
    "rotary-partial-RMS-GQA-gated": dict(pos="rotary", rotary_dim=2, norm="RMS", n_kv_heads=2, gated=True,
                                         act_fn="silu"),
    "rotary-adjacent-RMSPre-MQA-parallel-gated": dict(pos="rotary", rotary_adjacent_pairs=True, rotary_base=100,
                                                     norm="RMSPre", n_kv_heads=1, parallel=True, gated=True,
                                                     act_fn="silu"),
    "rotary-partial-LNPre-parallel": dict(pos="rotary", rotary_dim=2, norm="LNPre", parallel=True),
    "standard-no-norm-GQA-parallel": dict(pos="standard", norm=None, n_kv_heads=2, parallel=True),
    "standard-softcap-clip-layer-scale": dict(pos="standard", attn_scores_soft_cap=2.0, clip_qkv=1.0,
                                              scale_attn_by_inverse_layer_idx=True),
    "shortformer-solu-ln": dict(act_fn="solu_ln"),
    "rotary-RMS-MoE": dict(pos="rotary", norm="RMS", num_experts=3, experts_per_token=2, act_fn="silu"),
}


def arch_model(arch: dict):
    """float64 throughout (.double(): TransformerLens 3.9 builds MoE experts in float32 whatever cfg.dtype says)."""
    return tiny_model(attn_only=False, n_heads=4, dtype=torch.float64, **arch).double()


def test_normalise_equals_the_module_forward():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 5, 16, generator=gen, dtype=torch.float64) * 4 + 1  # [copy, batch, seq, d_model]
    for norm in ("LN", "LNPre"):
        module = tiny_model(norm=norm, dtype=torch.float64).blocks[1].ln1
        assert torch.allclose(normalise(module, x), module(x), atol=1e-12, rtol=1e-12), norm


def test_normalise_falls_back_to_other_modules():
    model = tiny_model(norm="RMS", dtype=torch.float64)
    module = model.blocks[0].ln1
    assert isinstance(module, RMSNorm)
    x = torch.randn(2, 5, 16, dtype=torch.float64)  # [batch, seq, d_model]
    assert torch.equal(normalise(module, x), module(x))


@pytest.mark.parametrize("norm", ["RMS", "RMSPre"])
def test_rms_normalise_of_stacked_copies_is_the_module_on_each(norm):
    module = tiny_model(norm=norm, dtype=torch.float64).blocks[1].ln1
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 5, 16, generator=gen, dtype=torch.float64) * 4 + 1  # [copy, batch, seq, d_model]
    stacked = normalise(module, x)  # [copy, batch, seq, d_model]
    for c in range(3):
        assert torch.equal(stacked[c], module(x[c]))


@pytest.mark.parametrize("arch", ARCHS.values(), ids=ARCHS.keys())
def test_heads_and_mlps_equal_the_forward_pass(arch):
    """Each copy reads the clean inputs of a different permutation of the batch, so copies are checked to be
    independent; the shared 3-D input form is checked too."""
    model = arch_model(arch)
    check_supported(model)
    tokens = torch.randint(0, 20, (3, 12), generator=torch.Generator().manual_seed(1))  # [batch, seq]
    _, cache = model.run_with_cache(tokens)
    heads = torch.tensor([3, 0, 1, 2, 1])  # [copy]
    perms = torch.stack([torch.randperm(3, generator=torch.Generator().manual_seed(c))
                         for c in range(5)])  # [copy, batch]
    shortformer = model.cfg.positional_embedding_type == "shortformer"
    pos = cache["hook_pos_embed"][0] if shortformer else None  # [seq, d_model]
    for layer in range(model.cfg.n_layers):
        block = model.blocks[layer]
        x = normalise(block.ln1, cache[f"blocks.{layer}.hook_resid_pre"])  # [batch, seq, d_model]
        z_clean = cache[f"blocks.{layer}.attn.hook_z"]  # [batch, seq, head, d_head]
        stacked = x[perms]  # [copy, batch, seq, d_model]
        z = heads_z_normed(model, layer, heads, stacked, stacked, stacked, pos)  # [copy, batch, seq, d_head]
        for c in range(5):
            assert torch.allclose(z[c], z_clean[perms[c], :, heads[c]], atol=1e-10, rtol=0), (layer, c)
        shared = heads_z_normed(model, layer, heads, x, x, x, pos)  # [copy, batch, seq, d_head]
        assert torch.allclose(shared, z_clean[:, :, heads].permute(2, 0, 1, 3), atol=1e-10, rtol=0), layer
        hook = "hook_resid_pre" if model.cfg.parallel_attn_mlp else "hook_resid_mid"
        mlp_in = cache[f"blocks.{layer}.{hook}"]
        out = mlp_forward(model, layer, mlp_in[perms])  # [copy, batch, seq, d_model]
        assert torch.allclose(out, cache[f"blocks.{layer}.hook_mlp_out"][perms], atol=1e-10, rtol=0), layer


def test_grouped_query_heads_take_their_own_key_and_value_inputs():
    """Two query heads of one key/value group, given k/v inputs from different data, each attend as its own
    key/value head would on that datum (a finer intervention than the model's grouping)."""
    model = arch_model(ARCHS["rotary-partial-RMS-GQA-gated"])
    tokens = torch.randint(0, 20, (2, 12), generator=torch.Generator().manual_seed(3))  # [batch, seq]
    _, cache = model.run_with_cache(tokens)
    x = normalise(model.blocks[0].ln1, cache["blocks.0.hook_resid_pre"])  # [batch, seq, d_model]
    kv = torch.stack([x, x.flip(0)])  # [copy, batch, seq, d_model]: head 1 reads the other datum's k and v
    z = heads_z_normed(model, 0, torch.tensor([0, 1]), torch.stack([x, x]), kv, kv, None)  # [copy, batch, seq, d_head]
    assert torch.allclose(z[0], cache["blocks.0.attn.hook_z"][:, :, 0], atol=1e-10, rtol=0)
    assert not torch.allclose(z[1], cache["blocks.0.attn.hook_z"][:, :, 1], atol=1e-3)


def test_clean_run_of_a_rotary_model_has_zero_positions():
    model = arch_model(ARCHS["rotary-LN"])
    tokens = torch.randint(0, 20, (3, 12), generator=torch.Generator().manual_seed(1))  # [batch, seq]
    clean = clean_run(model, tokens)
    assert clean.pos.shape == clean.embed.shape and not clean.pos.any()
    assert torch.equal(clean.logits, model(tokens))


REFUSED = {
    "ALiBi": dict(positional_embedding_type="alibi"),
    "relative_positional_bias": dict(positional_embedding_type="relative_positional_bias"),
    "use_qk_norm": dict(use_qk_norm=True),
    "OLMo q/k normalisation": dict(original_architecture="OlmoeForCausalLM"),
    "post-norm": dict(original_architecture="Olmo2ForCausalLM"),
    "use_normalization_before_and_after": dict(use_normalization_before_and_after=True),
    "bidirectional": dict(attention_dir="bidirectional"),
    "local attention": dict(use_local_attn=True, window_size=4, attn_types=["global", "local"]),
    "use_logn_attn": dict(use_logn_attn=True),
    "attention sinks": dict(use_attention_sinks=True),
    "load_in_4bit": dict(load_in_4bit=True),
    "output logit soft-capping": dict(output_logits_soft_cap=30.0),
    "final_rms": dict(final_rms=True),
}


@pytest.mark.parametrize("name, fields", REFUSED.items(), ids=REFUSED.keys())
def test_unsupported_features_are_refused_by_name(name, fields):
    model = tiny_model(attn_only=False)
    for key, value in fields.items():
        setattr(model.cfg, key, value)
    with pytest.raises(UnsupportedModelError, match=name):
        check_supported(model)


def test_global_only_local_attention_config_is_accepted():
    model = tiny_model(use_local_attn=True, window_size=4, attn_types=["global", "global"])
    check_supported(model)


# --- query-key masks: per-(query, key) alternative inputs -------------------------------------------------

def _inputs(model, tokens: Tensor, layer: int, perms: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
    """The layer's normalised clean input x [batch, seq, d_model], stacked per copy from permuted batches
    [copy, batch, seq, d_model], and the shortformer positions (else None)."""
    _, cache = model.run_with_cache(tokens)
    x = normalise(model.blocks[layer].ln1, cache[f"blocks.{layer}.hook_resid_pre"])  # [batch, seq, d_model]
    pos = cache["hook_pos_embed"][0] if model.cfg.positional_embedding_type == "shortformer" else None  # [seq, d_model]
    return x, x[perms], pos


@pytest.mark.parametrize("arch", ARCHS.values(), ids=ARCHS.keys())
def test_all_true_masks_read_the_main_input_and_all_false_masks_the_alternative(arch):
    """Bit for bit: a mask that is True everywhere is the unmasked computation, one that is False everywhere
    is the computation with the alternative input, for each channel alone and all three at once, with
    stacked and shared inputs and broadcast or full masks."""
    model = arch_model(arch)
    tokens = torch.randint(0, 20, (3, 12), generator=torch.Generator().manual_seed(2))  # [batch, seq]
    heads = torch.tensor([3, 0, 1, 2])  # [copy]
    perms = torch.stack([torch.randperm(3, generator=torch.Generator().manual_seed(c)) for c in range(4)])
    x, stacked, pos = _inputs(model, tokens, 1, perms)
    other = stacked.flip(0)  # [copy, batch, seq, d_model]: each copy's alternative is another copy's input
    for xs in ((x, x, x), (stacked, x, stacked)):
        plain = heads_z_normed(model, 1, heads, *xs, pos)  # [copy, batch, seq, d_head]
        assert torch.equal(heads_z_normed(model, 1, heads, *xs, pos, alt={}), plain)
        for shape in ((1, 1, 12, 12), (4, 3, 12, 12)):
            yes, no = torch.ones(shape, dtype=torch.bool), torch.zeros(shape, dtype=torch.bool)  # [c|1, b|1, q, k]
            for channels in ("q", "k", "v", "qkv"):
                z = heads_z_normed(model, 1, heads, *xs, pos, alt={Channel(c): (other, yes) for c in channels})
                assert torch.equal(z, plain), (channels, shape)
                swapped = [other if "qkv"[i] in channels else xs[i] for i in range(3)]
                z = heads_z_normed(model, 1, heads, *xs, pos, alt={c: (other, no) for c in channels})  # letters as keys
                assert torch.equal(z, heads_z_normed(model, 1, heads, *swapped, pos)), (channels, shape)


def test_mixed_masks_choose_query_key_and_value_per_pair():
    """Random masks on q, k and v at once against a per-pair reference: the score of (q, k) uses the main or
    alternative query and key as their masks say, and key k passes its main or alternative value."""
    model = arch_model(ARCHS["standard-LN"])
    attn = model.blocks[0].attn
    tokens = torch.randint(0, 20, (2, 12), generator=torch.Generator().manual_seed(4))  # [batch, seq]
    heads = torch.tensor([2, 0])  # [copy]
    x, _, _ = _inputs(model, tokens, 0, torch.zeros(2, 2, dtype=torch.long))
    x_alt = x.flip(0)  # [batch, seq, d_model]
    gen = torch.Generator().manual_seed(5)
    mq, mk, mv = (torch.rand(2, 2, 12, 12, generator=gen) < 0.5 for _ in range(3))  # [copy, batch, q, k] x3
    z = heads_z_normed(model, 0, heads, x, x, x, None, alt={Channel.Q: (x_alt, mq), Channel.K: (x_alt, mk),
                                                            Channel.V: (x_alt, mv)})  # [copy, batch, seq, d_head]

    def proj(inp: Tensor, w: Tensor, b: Tensor) -> Tensor:  # [batch, seq, d_model] -> [copy, batch, seq, d_head]
        return torch.einsum("bsd,cdh->cbsh", inp, w[heads]) + b[heads][:, None, None]

    q, qa, k, ka, v, va = (proj(i, w, b) for w, b in ((attn.W_Q, attn.b_Q), (attn.W_K, attn.b_K), (attn.W_V, attn.b_V))
                           for i in (x, x_alt))
    q_pair = torch.where(mq[..., None], q[:, :, :, None], qa[:, :, :, None])  # [copy, batch, q, k, d_head]
    k_pair = torch.where(mk[..., None], k[:, :, None], ka[:, :, None])  # [copy, batch, q, k, d_head]
    v_pair = torch.where(mv[..., None], v[:, :, None], va[:, :, None])  # [copy, batch, q, k, d_head]
    scores = (q_pair * k_pair).sum(-1) / attn.attn_scale  # [copy, batch, q, k]
    pattern = scores.masked_fill(~torch.ones(12, 12, dtype=torch.bool).tril(), float("-inf")).softmax(-1)
    expected = (pattern[..., None] * v_pair).sum(-2)  # [copy, batch, q, d_head]
    assert torch.allclose(z, expected, atol=1e-12, rtol=0)
    assert not torch.allclose(z, heads_z_normed(model, 0, heads, x, x, x, None), atol=1e-3)


def test_within_window_on_k_and_v_is_the_context_sensitivity_maths():
    """On the shipped model (float64), keys more than W back reading another example's k and v input is
    ``tests.test_context.far_mixed_z`` (the hook-based REMIX split) for every head of every layer."""
    model = scrub.load_model().double()
    model.cfg.dtype = torch.float64
    tokens = scrub.natural_batch(4, seq_len=24)  # [batch, seq]
    other = tokens.roll(1, 0)  # [batch, seq]
    _, cache = model.run_with_cache(tokens)
    _, cache_other = model.run_with_cache(other)
    window = 3
    mask = within(window).matrix(24)[None, None]  # [1, 1, q, k]
    heads = torch.arange(model.cfg.n_heads)  # [copy]
    pos = cache["hook_pos_embed"][0]  # [seq, d_model]
    for layer in range(model.cfg.n_layers):
        ln, name = model.blocks[layer].ln1, f"blocks.{layer}.hook_resid_pre"
        x, x_other = normalise(ln, cache[name]), normalise(ln, cache_other[name])  # [batch, seq, d_model] x2
        alt = {Channel.K: (x_other, mask), Channel.V: (x_other, mask)}
        z = heads_z_normed(model, layer, heads, x, x, x, pos, alt=alt)  # [head, batch, seq, d_head]
        q, k, v = (cache[f"blocks.{layer}.attn.hook_{n}"] for n in "qkv")  # [batch, seq, head, d_head] x3
        k_far, v_far = (cache_other[f"blocks.{layer}.attn.hook_{n}"] for n in "kv")  # [batch, seq, head, d_head] x2
        scale = float(model.blocks[layer].attn.attn_scale)
        for h in range(model.cfg.n_heads):
            expected = far_mixed_z(*(t[:, :, h] for t in (q, k, v, k_far, v_far)), window, scale)  # [batch, seq, d_h]
            assert torch.allclose(z[h], expected, atol=1e-12, rtol=0), (layer, h)
            assert not torch.allclose(z[h], cache[f"blocks.{layer}.attn.hook_z"][:, :, h], atol=1e-6), (layer, h)


def test_alt_rejects_a_non_bool_mask_and_the_in_channel():
    model = arch_model(ARCHS["standard-LN"])
    x = torch.zeros(2, 12, 16, dtype=torch.float64)  # [batch, seq, d_model]
    heads = torch.tensor([0])
    ones = torch.ones(1, 1, 12, 12)  # [1, 1, q, k]
    with pytest.raises(ValueError, match="mask is bool"):
        heads_z_normed(model, 0, heads, x, x, x, None, alt={Channel.K: (x, ones)})
    with pytest.raises(ValueError, match="not 'in'"):
        heads_z_normed(model, 0, heads, x, x, x, None, alt={Channel.IN: (x, ones.bool())})

"""Model loading: checkpoints round-trip for every architecture family, broken checkpoints fail with a
message naming the file and the problem, and every way of naming a missing model fails fast and clearly."""

from __future__ import annotations

import json

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

import scrub.model.loading
from scrub.model.loading import (
    CONFIG_FIELDS,
    SHIPPED_DIR,
    ArchSpec,
    ModelLoadError,
    load_model,
    save_checkpoint,
    shipped_models,
)

BASE = dict(n_layers=2, n_heads=4, d_model=32, d_head=8, n_ctx=16, d_vocab=50, seed=0)
CONFIGS = {
    "attn-only shortformer LN (the shipped shape)": dict(
        BASE, attn_only=True, act_fn="gelu", positional_embedding_type="shortformer", default_prepend_bos=False),
    "standard positions, gelu MLP, LN": dict(BASE, d_mlp=64, act_fn="gelu"),
    "Llama-like: RMSNorm, rotary, gated silu MLP": dict(
        BASE, d_mlp=48, act_fn="silu", gated_mlp=True, normalization_type="RMS", final_rms=True,
        positional_embedding_type="rotary", rotary_base=500, eps=1e-6, original_architecture="LlamaForCausalLM"),
    "Pythia-like: parallel attn+MLP, partial rotary": dict(
        BASE, d_mlp=64, act_fn="gelu_new", parallel_attn_mlp=True, positional_embedding_type="rotary", rotary_dim=4,
        original_architecture="GPTNeoXForCausalLM"),
    "grouped-query attention": dict(
        BASE, n_layers=1, d_mlp=64, act_fn="silu", n_key_value_heads=2, normalization_type="RMS",
        positional_embedding_type="rotary"),
}


def random_model(**fields) -> HookedTransformer:
    """A model whose every parameter (LayerNorm weights and biases too) is random and float16-exact."""
    torch.manual_seed(0)
    model = HookedTransformer(HookedTransformerConfig(**fields)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 1.0 if name.endswith(("ln1.w", "ln2.w", "ln_final.w")) else 0.0  # norm gains around 1
            p.copy_((scale + 0.3 * torch.randn_like(p)).half())
    return model


@pytest.mark.parametrize("name", list(CONFIGS))
def test_checkpoint_round_trip(name, tmp_path):
    model = random_model(**CONFIGS[name])
    save_checkpoint(model, str(tmp_path / "ckpt"), meta={"note": name})  # str paths are accepted
    loaded = load_model(tmp_path / "ckpt")
    assert not loaded.training
    tokens = torch.randint(0, 50, (2, 16))
    with torch.no_grad():
        # the weights are float16-exact, so storing them in float16 loses nothing: same logits, bit for bit
        assert torch.equal(loaded(tokens), model(tokens))
    for field in CONFIG_FIELDS:
        if field != "tokenizer_name":
            assert getattr(loaded.cfg, field) == getattr(model.cfg, field), field
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["meta"] == {"note": name}


def test_float32_round_trip_is_exact(tmp_path):
    torch.manual_seed(0)
    model = HookedTransformer(HookedTransformerConfig(**CONFIGS["standard positions, gelu MLP, LN"])).eval()
    save_checkpoint(model, tmp_path, dtype=torch.float32)
    loaded = load_model(tmp_path)
    for (k, v), (k2, v2) in zip(model.named_parameters(), loaded.named_parameters(), strict=True):
        assert k == k2 and torch.equal(v, v2), k


def test_float16_round_trip_rounds(tmp_path):
    torch.manual_seed(0)
    model = HookedTransformer(ArchSpec(d_model=32, d_head=8, n_heads=2, n_ctx=16, d_vocab=50).to_config())
    save_checkpoint(model, tmp_path / "ckpt", meta={"note": "test"})
    loaded = load_model(tmp_path / "ckpt")
    tokens = torch.randint(0, 50, (2, 16))
    # weights are stored in float16: the loaded model is the rounded one
    assert torch.allclose(loaded(tokens), model(tokens), atol=5e-2)
    assert loaded.cfg.positional_embedding_type == "shortformer" and loaded.cfg.n_ctx == 16


def test_first_format_still_loads(tmp_path):
    """``{"arch": ...}`` checkpoints (the shipped scrub-attn-2l) keep loading, buffers in weights.pt included."""
    spec = ArchSpec(n_layers=1, d_model=32, d_head=8, n_heads=2, n_ctx=16, d_vocab=50)
    model = random_model(**{**spec.to_config().to_dict(), "device": None})
    (tmp_path / "config.json").write_text(json.dumps({"arch": spec.__dict__, "meta": {}}))
    torch.save({k: v.half() for k, v in model.state_dict().items() if v.is_floating_point()}, tmp_path / "weights.pt")
    loaded = load_model(tmp_path)
    tokens = torch.randint(0, 50, (2, 16))
    assert torch.equal(loaded(tokens), model(tokens))


@pytest.mark.skipif(not (SHIPPED_DIR / "config.json").exists(), reason="shipped model not trained")
def test_shipped_model_loads_as_before():
    model = load_model()
    assert model.cfg.attn_only and model.cfg.n_layers == 2 and model.cfg.positional_embedding_type == "shortformer"
    raw = torch.load(SHIPPED_DIR / "weights.pt", weights_only=True)
    for k, v in model.named_parameters():
        assert torch.equal(v, raw[k].float()), k
    assert "scrub-attn-2l" in shipped_models()


def test_any_assets_folder_is_a_model_name(tmp_path, monkeypatch):
    monkeypatch.setattr(scrub.model.loading, "ASSETS", tmp_path)
    model = random_model(**CONFIGS["standard positions, gelu MLP, LN"])
    save_checkpoint(model, tmp_path / "scrub-tiny-mlp")
    (tmp_path / "not-a-model").mkdir()
    assert shipped_models() == ["scrub-tiny-mlp"]
    assert load_model("scrub-tiny-mlp").cfg.d_mlp == 64
    with pytest.raises(ModelLoadError, match="unknown model 'scrub-nope'.*'scrub-tiny-mlp'"):
        load_model("scrub-nope")


@pytest.fixture
def ckpt(tmp_path):
    return save_checkpoint(random_model(**CONFIGS["standard positions, gelu MLP, LN"]), tmp_path / "ckpt")


def edit_config(ckpt, **changes):
    payload = json.loads((ckpt / "config.json").read_text())
    payload["config"].update(changes)
    (ckpt / "config.json").write_text(json.dumps(payload))


def load_fails(ckpt, file, *messages):
    with pytest.raises(ModelLoadError) as err:
        load_model(ckpt)
    text = str(err.value)
    assert str(ckpt / file) in text, text
    for message in messages:
        assert message in text, text
    assert "Traceback" not in text


def test_missing_weights(ckpt):
    (ckpt / "weights.pt").unlink()
    load_fails(ckpt, "", "has no weights.pt")


def test_missing_config(ckpt):
    (ckpt / "config.json").unlink()
    load_fails(ckpt, "", "has no config.json")


def test_empty_weights(ckpt):
    (ckpt / "weights.pt").write_bytes(b"")
    load_fails(ckpt, "weights.pt", "is empty")


def test_truncated_weights(ckpt):
    data = (ckpt / "weights.pt").read_bytes()
    (ckpt / "weights.pt").write_bytes(data[: len(data) // 2])
    load_fails(ckpt, "weights.pt", "could not be read", "truncated")


def test_weights_not_a_state_dict(ckpt):
    torch.save([1, 2, 3], ckpt / "weights.pt")
    load_fails(ckpt, "weights.pt", "does not hold a state dict")


def test_config_not_json(ckpt):
    (ckpt / "config.json").write_text("{'n_layers': 2,")
    load_fails(ckpt, "config.json", "not a readable JSON file")


def test_config_not_a_checkpoint_config(ckpt):
    (ckpt / "config.json").write_text(json.dumps({"n_layers": 2}))
    load_fails(ckpt, "config.json", "neither a 'config' nor an 'arch'")


def test_config_invalid_fields(ckpt):
    edit_config(ckpt, act_fn="swish-ish")
    load_fails(ckpt, "config.json", "does not describe a valid model", "act_fn")


def test_config_unknown_field(ckpt):
    edit_config(ckpt, n_wings=2)
    load_fails(ckpt, "config.json", "fields this TransformerLens does not know", "n_wings")


def test_fewer_layers_than_weights(ckpt):
    edit_config(ckpt, n_layers=1)
    load_fails(ckpt, "weights.pt", "unexpected weights", "blocks.1.")


def test_more_layers_than_weights(ckpt):
    edit_config(ckpt, n_layers=3)
    load_fails(ckpt, "weights.pt", "missing weights", "blocks.2.")


def test_shapes_do_not_match(ckpt):
    edit_config(ckpt, d_mlp=128)
    load_fails(ckpt, "weights.pt", "shapes that do not match", "blocks.0.mlp.W_in (32, 64)", "(32, 128)")


def test_mlp_weights_under_attn_only_config(ckpt):
    edit_config(ckpt, attn_only=True)
    load_fails(ckpt, "weights.pt", "unexpected weights", "mlp.W_in")


@pytest.mark.parametrize("name, message", [
    ("gpt9", "unknown model 'gpt9'"),
    ("no/such/dir", "no checkpoint directory"),
    ("redwood_attn_2l", "not in the local Hugging Face cache"),
])
def test_missing_models_fail_with_the_fix(name, message, monkeypatch, tmp_path):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelLoadError, match=message):
        load_model(name)


def test_directory_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="has no weights.pt"):
        load_model(tmp_path)


@pytest.mark.parametrize("d_mlp", [0, 64])
def test_training_twin_matches_the_hooked_transformer(d_mlp):
    """training/fast_model.py (the CPU training twin) computes what the HookedTransformer it is copied into
    computes, attention-only and with GELU MLPs, for random weights everywhere (LayerNorms included)."""
    from training.fast_model import FastTransformer, to_hooked
    from training.train_model import hooked_config

    cfg = hooked_config(ArchSpec(n_layers=2, n_heads=4, d_model=32, d_head=8, n_ctx=24, d_vocab=50), d_mlp)
    hooked = HookedTransformer(cfg).eval()
    fast = FastTransformer(2, 32, 4, 8, 24, 50, d_mlp=d_mlp).eval()
    assert (hasattr(fast, "mlps"), cfg.attn_only, cfg.act_fn) == (bool(d_mlp), not d_mlp, "gelu")
    with torch.no_grad():
        for p in fast.parameters():
            p.add_(0.3 * torch.randn_like(p))
    to_hooked(fast, hooked)
    tokens = torch.randint(0, 50, (3, 24))
    with torch.no_grad():
        torch.testing.assert_close(hooked(tokens), fast(tokens), atol=1e-5, rtol=1e-5)

"""Model loading: checkpoints round-trip, and every way of naming a missing model fails fast and clearly."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import HookedTransformer

from scrub.model import ArchSpec, ModelLoadError, load_model, save_checkpoint


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = HookedTransformer(ArchSpec(d_model=32, d_head=8, n_heads=2, n_ctx=16, d_vocab=50).to_config())
    save_checkpoint(model, tmp_path / "ckpt", meta={"note": "test"})
    loaded = load_model(tmp_path / "ckpt")
    tokens = torch.randint(0, 50, (2, 16))
    # weights are stored in float16: the loaded model is the rounded one
    assert torch.allclose(loaded(tokens), model(tokens), atol=5e-2)
    assert loaded.cfg.positional_embedding_type == "shortformer" and loaded.cfg.n_ctx == 16


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

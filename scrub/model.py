"""Model loading: the shipped checkpoint, a checkpoint directory, or a TransformerLens pretrained name.

Owns the shipped model's architecture (``ArchSpec``) and the checkpoint format: a directory with
``config.json`` (the HookedTransformerConfig fields we set) and ``weights.pt`` (a float16 state dict).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

ASSETS = Path(__file__).resolve().parent / "assets"
SHIPPED_NAME = "scrub-attn-2l"
SHIPPED_DIR = ASSETS / SHIPPED_NAME
TOKENIZER_PATH = ASSETS / "tokenizer.json"


class ModelLoadError(ValueError):
    """A model could not be loaded; the message says why and what to do."""


@dataclass(frozen=True)
class ArchSpec:
    """The architecture of the shipped model: Redwood's ``redwood_attn_2l`` shape, smaller vocabulary."""

    n_layers: int = 2
    n_heads: int = 8
    d_model: int = 256
    d_head: int = 32
    n_ctx: int = 256
    d_vocab: int = 2048
    positional_embedding_type: str = "shortformer"
    normalization_type: str = "LN"
    seed: int = 0

    def to_config(self) -> HookedTransformerConfig:
        return HookedTransformerConfig(
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            d_model=self.d_model,
            d_head=self.d_head,
            n_ctx=self.n_ctx,
            d_vocab=self.d_vocab,
            act_fn="gelu",  # unused: attention-only
            attn_only=True,
            positional_embedding_type=self.positional_embedding_type,
            normalization_type=self.normalization_type,
            seed=self.seed,
            default_prepend_bos=False,
        )


def save_checkpoint(model: HookedTransformer, directory: Path, *, meta: dict | None = None) -> None:
    """Write ``config.json`` + ``weights.pt`` (float16) so ``load_model(directory)`` restores the model."""
    directory.mkdir(parents=True, exist_ok=True)
    cfg = model.cfg
    spec = ArchSpec(
        n_layers=cfg.n_layers, n_heads=cfg.n_heads, d_model=cfg.d_model, d_head=cfg.d_head,
        n_ctx=cfg.n_ctx, d_vocab=cfg.d_vocab,
        positional_embedding_type=cfg.positional_embedding_type,
        normalization_type=cfg.normalization_type or "none",
    )
    payload = {"arch": spec.__dict__, "meta": meta or {}}
    (directory / "config.json").write_text(json.dumps(payload, indent=2) + "\n")
    state = {k: v.detach().to(torch.float16).cpu() for k, v in model.state_dict().items()
             if v.is_floating_point()}
    torch.save(state, directory / "weights.pt")


def _load_checkpoint_dir(directory: Path, device: str) -> HookedTransformer:
    config_path, weights_path = directory / "config.json", directory / "weights.pt"
    for path in (config_path, weights_path):
        if not path.exists():
            raise ModelLoadError(
                f"checkpoint directory {directory} has no {path.name}; a scrub checkpoint holds "
                f"config.json and weights.pt (written by training/train_model.py)"
            )
    arch = json.loads(config_path.read_text())["arch"]
    if arch.get("normalization_type") == "none":
        arch["normalization_type"] = None
    model = HookedTransformer(ArchSpec(**arch).to_config())
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    missing = [k for k, v in model.state_dict().items() if k not in state and v.is_floating_point()]
    if missing:
        raise ModelLoadError(f"checkpoint {weights_path} lacks weights {missing[:3]}...; it does not match config.json")
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    return model.to(device, print_details=False).eval()


def load_model(name_or_path: str | Path = SHIPPED_NAME, *, device: str = "cpu") -> HookedTransformer:
    """Load the shipped model (default), a scrub checkpoint directory, or a TransformerLens pretrained name.

    Pretrained names (e.g. ``"redwood_attn_2l"``, ``"attn-only-2l"``) need the weights in the local
    Hugging Face cache; without them this raises ``ModelLoadError`` instead of trying the network.
    """
    if str(name_or_path) == SHIPPED_NAME:
        if not SHIPPED_DIR.exists():
            raise ModelLoadError(
                f"the shipped checkpoint is missing from {SHIPPED_DIR}; reinstall scrub or retrain it "
                f"with `python training/train_model.py`"
            )
        return _load_checkpoint_dir(SHIPPED_DIR, device)
    path = Path(name_or_path)
    if path.is_dir():
        return _load_checkpoint_dir(path, device)
    if path.suffix or "/" in str(name_or_path) and not _is_pretrained_name(str(name_or_path)):
        raise ModelLoadError(f"no checkpoint directory at {path}; pass a directory holding config.json and weights.pt")
    return _load_pretrained(str(name_or_path), device)


def _is_pretrained_name(name: str) -> bool:
    from transformer_lens.loading_from_pretrained import OFFICIAL_MODEL_NAMES, MODEL_ALIASES

    aliases = {a for names in MODEL_ALIASES.values() for a in names}
    return name in OFFICIAL_MODEL_NAMES or name in aliases


def _load_pretrained(name: str, device: str) -> HookedTransformer:
    """TransformerLens' own loader, forced offline so a missing cache fails fast with a clear message."""
    import os

    if not _is_pretrained_name(name):
        raise ModelLoadError(
            f"unknown model {name!r}: pass {SHIPPED_NAME!r} (the shipped model), a checkpoint directory, "
            f"or a TransformerLens pretrained name such as 'redwood_attn_2l' or 'attn-only-2l'"
        )
    from huggingface_hub.constants import HF_HUB_CACHE
    from transformer_lens.loading_from_pretrained import get_official_model_name

    repo = get_official_model_name(name)
    if not (Path(HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}").is_dir():
        raise ModelLoadError(
            f"pretrained model {name!r} ({repo}) is not in the local Hugging Face cache {HF_HUB_CACHE}; download "
            f"its weights on a machine with hub access, or use the shipped model {SHIPPED_NAME!r}"
        )
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    try:
        return HookedTransformer.from_pretrained(name, device=device).eval()
    except Exception as err:  # noqa: BLE001 - any failure here means "weights not available"
        raise ModelLoadError(
            f"could not load pretrained model {name!r} from the local Hugging Face cache ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}). Download its weights on a machine with hub access "
            f"into ~/.cache/huggingface, or use the shipped model {SHIPPED_NAME!r}"
        ) from None
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

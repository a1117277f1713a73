"""Model loading: a shipped checkpoint, a checkpoint directory, or a TransformerLens pretrained name.

Owns the shipped models' location (``scrub/assets/<name>/``) and the checkpoint format: a directory with
``config.json`` and ``weights.pt`` (a state dict of the model's parameters, in the model's dtype by default;
the shipped ones are float16). A checkpoint whose weights hold NaN or infinity is refused on load.
``config.json`` holds ``{"format": 2, "config": {...}, "meta": {...}}`` where ``config`` is every plain
``HookedTransformerConfig`` field needed to rebuild the model (``CONFIG_FIELDS``). The first format,
``{"arch": {...}, "meta": {...}}`` with the attention-only ``ArchSpec`` fields, is still read (the
shipped ``scrub-attn-2l`` uses it).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from scrub.errors import ScrubError
from scrub.model import SHIPPED_NAME  # noqa: F401 (defined there, where the command line reads it without torch)
from scrub.model.finite import check_weights

ASSETS = Path(__file__).resolve().parents[1] / "assets"
SHIPPED_DIR = ASSETS / SHIPPED_NAME
TOKENIZER_PATH = ASSETS / "tokenizer.json"
CHECKPOINT_FORMAT = 2

# HookedTransformerConfig fields a checkpoint does not record: where and in which precision the model
# runs (chosen when loading), what __post_init__ derives (n_params), and the hook switches that the
# analysis code turns on and off at run time (they change which hooks exist, never the logits).
RUNTIME_FIELDS = frozenset({
    "device", "dtype", "n_devices", "n_params", "use_attn_result", "use_split_qkv_input", "use_hook_mlp_in",
    "use_attn_in", "use_hook_tokens",
})
# Every other init field is recorded: architecture (n_layers, n_heads, d_model, d_head, d_mlp, d_vocab,
# d_vocab_out, n_ctx, act_fn, attn_only, normalization_type, positional_embedding_type, rotary_dim,
# rotary_base, n_key_value_heads, parallel_attn_mlp, gated_mlp, final_rms, eps, use_attn_scale,
# attn_scale, original_architecture, ...) and the defaults that change behaviour (default_prepend_bos).
CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(HookedTransformerConfig)
                      if f.init and f.name not in RUNTIME_FIELDS)


class ModelLoadError(ScrubError):
    """A model could not be loaded; the message says why and what to do."""


@dataclass(frozen=True)
class ArchSpec:
    """The architecture of the shipped model: Redwood's ``redwood_attn_2l`` shape, smaller vocabulary.

    Also the first checkpoint format (``{"arch": ArchSpec fields}``), still read by ``load_model``."""

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


def _plain(name: str, value):
    """A config value as JSON (numpy scalars become Python numbers); anything else is refused."""
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        value = value.item()
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ScrubError(f"config field {name}={value!r} is not finite; it cannot be written to config.json")
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(name, v) for v in value]
    raise ScrubError(f"config field {name}={value!r} ({type(value).__name__}) is not a plain JSON value; "
                     f"save_checkpoint cannot record it")


def config_to_dict(cfg: HookedTransformerConfig) -> dict:
    """The ``CONFIG_FIELDS`` of ``cfg`` as plain JSON values."""
    return {name: _plain(name, getattr(cfg, name)) for name in CONFIG_FIELDS}


def save_dtype(dtype: torch.dtype | str | None, model: HookedTransformer) -> torch.dtype:
    """The floating-point dtype weights are saved in: ``dtype`` (a torch dtype or its name, e.g. "float16")
    or, for None, the model's own; anything else is refused before a file is written."""
    if dtype is None:
        return next(model.parameters()).dtype
    if isinstance(dtype, str):
        name = dtype.removeprefix("torch.")
        found = getattr(torch, name, None)
        if not isinstance(found, torch.dtype):
            raise ScrubError(f"save_checkpoint: dtype {dtype!r} is not a torch dtype; use e.g. 'float32', 'float16' "
                             f"or 'bfloat16' (or None: the model's own)")
        dtype = found
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        shown = str(dtype).removeprefix("torch.")
        raise ScrubError(f"save_checkpoint: dtype {shown} is not a floating-point dtype: weights would be rounded to "
                         f"integers; use float32, float16 or bfloat16 (or None: the model's own)")
    return dtype


def save_checkpoint(model: HookedTransformer, directory: str | Path, *, meta: dict | None = None,
                    dtype: torch.dtype | str | None = None) -> Path:
    """Write ``config.json`` + ``weights.pt`` so that ``load_model(directory)`` rebuilds the model.

    ``weights.pt`` holds the model's parameters in ``dtype`` (default: the model's own, so a save and a load
    change no logit; float16 halves the file, as for the shipped models, and the loaded model is the rounded
    one); buffers (attention masks, rotary tables) are rebuilt from the config. Returns the directory.
    """
    if not isinstance(model, HookedTransformer):
        raise ScrubError(f"save_checkpoint takes a HookedTransformer (e.g. from scrub.load_model), got "
                         f"{type(model).__name__}")
    if any(p.device.type == "meta" for p in model.parameters()):
        raise ScrubError("save_checkpoint: the model's weights are on the meta device (shapes without values), so "
                         "there is nothing to save: load or train real weights first")
    dtype = save_dtype(dtype, model)
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ScrubError(f"save_checkpoint: {directory} is a file; a checkpoint is a folder (config.json and "
                         f"weights.pt): choose a folder path")
    config = config_to_dict(model.cfg)
    payload = {"format": CHECKPOINT_FORMAT, "config": config, "meta": meta or {}}
    text = json.dumps(payload, indent=2, default=str) + "\n"
    state = {k: v.detach().to(dtype).cpu().clone() for k, v in model.named_parameters()}
    _check_rounding(model, state, dtype)
    directory.mkdir(parents=True, exist_ok=True)
    # write then rename, so an interrupted save never leaves a truncated weights.pt behind a good config
    for name, write in (("weights.pt", lambda tmp: torch.save(state, tmp)),
                        ("config.json", lambda tmp: tmp.write_text(text))):
        tmp = directory / f"{name}.tmp"
        write(tmp)
        os.replace(tmp, directory / name)
    return directory


def _check_rounding(model: HookedTransformer, state: dict[str, torch.Tensor], dtype: torch.dtype) -> None:
    """Refuse a save whose rounding to ``dtype`` turns finite weights into infinities (float16 tops out at
    65504): the checkpoint could not be loaded."""
    for name, param in model.named_parameters():
        was = torch.isfinite(param.detach())  # [...]
        now = torch.isfinite(state[name])  # [...]
        if bool((was & ~now).any()):
            biggest = float(param.detach().abs()[was].max())
            raise ScrubError(f"save_checkpoint: weight {name} holds values up to {biggest:.3g}, beyond the range of "
                             f"{str(dtype).removeprefix('torch.')} (largest {torch.finfo(dtype).max:.3g}); save in "
                             f"float32 or bfloat16 (dtype=None keeps the model's own)")


def _read_config(config_path: Path) -> HookedTransformerConfig:
    try:
        payload = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"{config_path} is not a readable JSON file ({type(err).__name__}: {err}); "
                             f"re-save the checkpoint with scrub.save_checkpoint") from None
    if not isinstance(payload, dict) or not ({"arch", "config"} & payload.keys()):
        raise ModelLoadError(f"{config_path} has neither a 'config' nor an 'arch' object; it is not a scrub "
                             f"checkpoint config (write one with scrub.save_checkpoint)")
    try:
        if "config" in payload:
            fields = payload["config"]
            if not isinstance(fields, dict):
                raise ModelLoadError(f"{config_path}: 'config' is not an object")
            unknown = sorted(set(fields) - set(CONFIG_FIELDS) - RUNTIME_FIELDS)
            if unknown:
                raise ModelLoadError(f"{config_path} has fields this TransformerLens does not know: {unknown}")
            # the tokenizer is not part of a scrub checkpoint (scrub uses its own); loading one by name
            # would reach for the network
            fields = {k: v for k, v in fields.items() if k not in RUNTIME_FIELDS} | {"tokenizer_name": None}
            return HookedTransformerConfig(**fields)
        arch = dict(payload["arch"])  # the first format: ArchSpec fields
        if arch.get("normalization_type") == "none":
            arch["normalization_type"] = None
        return ArchSpec(**arch).to_config()
    except ModelLoadError:
        raise
    except Exception as err:  # noqa: BLE001 - a bad field surfaces as TypeError/AssertionError/ValueError
        raise ModelLoadError(f"{config_path} does not describe a valid model ({type(err).__name__}: {err})") from None


def _read_weights(weights_path: Path) -> dict[str, torch.Tensor]:
    if weights_path.stat().st_size == 0:
        raise ModelLoadError(f"{weights_path} is empty (0 bytes); the checkpoint was not written completely")
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for truncated or foreign files
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ModelLoadError(f"{weights_path} could not be read as a torch state dict; it is truncated or not a "
                             f"scrub checkpoint ({type(err).__name__}: {first[:200]})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"{weights_path} does not hold a state dict of tensors (found {type(state).__name__})")
    return state


def _load_checkpoint_dir(directory: Path, device: str) -> HookedTransformer:
    config_path, weights_path = directory / "config.json", directory / "weights.pt"
    for path in (config_path, weights_path):
        if not path.is_file():
            raise ModelLoadError(
                f"checkpoint directory {directory} has no {path.name}; a scrub checkpoint holds "
                f"config.json and weights.pt (written by scrub.save_checkpoint or training/train_model.py)"
            )
    cfg = _read_config(config_path)
    state = _read_weights(weights_path)
    model = HookedTransformer(cfg)
    expected = model.state_dict()
    params = {k for k, _ in model.named_parameters()}
    missing = sorted(params - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    shapes = [f"{k} {tuple(v.shape)} (config.json needs {tuple(expected[k].shape)})"
              for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    problems = []
    if missing:
        more = ", ..." if len(missing) > 4 else ""
        problems.append(f"{len(missing)} missing weights ({', '.join(missing[:4])}{more})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected weights ({', '.join(unexpected[:4])}"
                        f"{', ...' if len(unexpected) > 4 else ''})")
    if shapes:
        more = "; ..." if len(shapes) > 3 else ""
        problems.append(f"{len(shapes)} shapes that do not match ({'; '.join(shapes[:3])}{more})")
    not_float = sorted(k for k in params & state.keys() if not state[k].is_floating_point())
    if not_float:
        problems.append(f"non-float weights ({', '.join(not_float[:4])})")
    if problems:
        raise ModelLoadError(f"{weights_path} does not match {config_path}: " + "; ".join(problems))
    # parameters come from the file; buffers (masks, rotary tables, IGNORE) are rebuilt from the config
    model.load_state_dict({k: state[k].to(v.dtype) if k in params else v for k, v in expected.items()}, strict=True)
    check_weights(model, f"checkpoint {directory}")
    return model.to(device, print_details=False).eval()


def check_model(model: object, who: str) -> None:
    """Refuse a model no computation can run, naming the fix: not a ``HookedTransformer``, weights on the
    meta device, or weights in another dtype than ``model.cfg.dtype`` (``model.half()`` leaves the config)."""
    if not isinstance(model, HookedTransformer):
        raise ScrubError(f"{who} takes a HookedTransformer (e.g. from scrub.load_model), got {type(model).__name__}")
    if any(p.device.type == "meta" for p in model.parameters()):
        raise ScrubError("the model's weights are on the meta device (shapes without values), so nothing can be "
                         "computed: load real weights (scrub.load_model, or model.to_empty(device='cpu') then "
                         "load_state_dict)")
    dtypes = {p.dtype for p in model.parameters()}
    if dtypes != {model.cfg.dtype}:
        names = sorted(str(d).removeprefix("torch.") for d in dtypes)
        want = str(model.cfg.dtype).removeprefix("torch.")
        raise ScrubError(f"the model's weights are {', '.join(names)} but model.cfg.dtype is {want} (model.half() "
                         f"or a submodule's .to() changes the weights, not the config), so TransformerLens mixes "
                         f"dtypes: convert the whole model with model.to(torch.{names[0]})")


def shipped_models() -> list[str]:
    """The names of the checkpoints shipped in ``scrub/assets/`` (each a folder holding config.json)."""
    if not ASSETS.is_dir():
        return []
    return sorted(p.name for p in ASSETS.iterdir() if (p / "config.json").is_file())


def load_model(name_or_path: str | Path = SHIPPED_NAME, *, device: str = "cpu") -> HookedTransformer:
    """Load a shipped model by name (default ``"scrub-attn-2l"``; see ``shipped_models()``), a scrub
    checkpoint directory, or a TransformerLens pretrained name.

    Pretrained names (e.g. ``"redwood_attn_2l"``, ``"attn-only-2l"``) need the weights in the local
    Hugging Face cache; without them this raises ``ModelLoadError`` instead of trying the network. ``device``
    must exist on this machine (else ``ModelLoadError`` naming the fix).
    """
    if not isinstance(name_or_path, (str, Path)):
        raise ModelLoadError(f"load_model takes a model name or a checkpoint directory (a str or Path), got "
                             f"{type(name_or_path).__name__ if name_or_path is not None else None}; call "
                             f"load_model() for the shipped model {SHIPPED_NAME!r}")
    device = check_device(device)
    name = str(name_or_path)
    if "/" not in name and "\\" not in name and name not in ("", ".", ".."):
        if (ASSETS / name / "config.json").is_file():
            return _load_checkpoint_dir(ASSETS / name, device)
        if name == SHIPPED_NAME:
            raise ModelLoadError(
                f"the shipped checkpoint is missing from {SHIPPED_DIR}; reinstall scrub or retrain it "
                f"with `python training/train_model.py`"
            )
    path = Path(name_or_path)
    if path.is_dir():
        return _load_checkpoint_dir(path, device)
    if path.suffix or "/" in name and not _is_pretrained_name(name):
        raise ModelLoadError(f"no checkpoint directory at {path}; pass a directory holding config.json and weights.pt")
    return _load_pretrained(name, device)


def check_device(device: str | torch.device) -> str:
    """``device`` as a string if this machine has it, else ``ModelLoadError`` naming the fix."""
    try:
        where = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ModelLoadError(f"device {str(device)!r} is not a torch device; use 'cpu', or 'cuda' (or 'cuda:N') on "
                             f"a machine with a GPU") from None
    if where.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {str(device)!r} is not available on this machine (torch.cuda.is_available() is "
                             f"False: no GPU, or a CPU-only torch); use device='cpu'")
    if where.type == "cuda" and where.index is not None and where.index >= torch.cuda.device_count():
        raise ModelLoadError(f"device {str(device)!r} does not exist: this machine has {torch.cuda.device_count()} "
                             f"GPU(s); use 'cuda:0' to 'cuda:{torch.cuda.device_count() - 1}'")
    if where.type == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError(f"device {str(device)!r} is not available on this machine; use device='cpu'")
    return str(device)


def _is_pretrained_name(name: str) -> bool:
    from transformer_lens.loading_from_pretrained import MODEL_ALIASES, OFFICIAL_MODEL_NAMES

    aliases = {a for names in MODEL_ALIASES.values() for a in names}
    return name in OFFICIAL_MODEL_NAMES or name in aliases


def _load_pretrained(name: str, device: str) -> HookedTransformer:
    """TransformerLens' own loader, forced offline so a missing cache fails fast with a clear message."""
    if not _is_pretrained_name(name):
        shipped = ", ".join(repr(n) for n in shipped_models()) or repr(SHIPPED_NAME)
        raise ModelLoadError(
            f"unknown model {name!r}: pass a shipped model ({shipped}), a checkpoint directory, "
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
        model = HookedTransformer.from_pretrained(name, device=device).eval()
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
    check_weights(model, f"pretrained model {name!r}")
    return model

"""The model layer: loading and saving checkpoints (``loading``) and the tokenizer (``tokenizer``). The names
load on first use (PEP 562), so the command line can name the shipped model without importing torch."""

from __future__ import annotations

from typing import TYPE_CHECKING

from scrub.lazy import exports

SHIPPED_NAME = "scrub-attn-2l"  # the default model of every command

EXPORTS: dict[str, tuple[str, ...]] = {  # module -> the public names it defines
    "scrub.model.loading": ("ModelLoadError", "load_model", "save_checkpoint", "shipped_models"),
    "scrub.model.tokenizer": ("Tokenizer", "check_compatible", "load_tokenizer"),
}
_names, __getattr__, __dir__ = exports("scrub.model", EXPORTS, globals())
__all__ = ["SHIPPED_NAME", *_names]


if TYPE_CHECKING:  # what type checkers see; tests/test_layout.py checks it equals EXPORTS
    from scrub.model.loading import ModelLoadError, load_model, save_checkpoint, shipped_models  # noqa: F401
    from scrub.model.tokenizer import Tokenizer, check_compatible, load_tokenizer  # noqa: F401

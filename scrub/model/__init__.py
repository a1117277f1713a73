"""The model layer: loading and saving checkpoints (``loading``) and the tokenizer (``tokenizer``)."""

from scrub.model.loading import ModelLoadError, load_model, save_checkpoint, shipped_models
from scrub.model.tokenizer import Tokenizer, check_compatible, load_tokenizer

__all__ = ["ModelLoadError", "load_model", "save_checkpoint", "shipped_models", "Tokenizer", "check_compatible",
           "load_tokenizer"]

"""The tokenizer: a thin wrapper over the shipped byte-level BPE (``tokenizers``), and its model check.

Owns ``Tokenizer`` (encode/decode, ``bos_id``, ``vocab_size``), ``load_tokenizer`` and ``check_compatible``,
which refuses to pair a tokenizer with a model whose vocabulary has a different size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import tokenizers
from transformer_lens import HookedTransformer

from scrub.errors import ScrubError
from scrub.model.loading import TOKENIZER_PATH

BOS_TOKEN = "<|bos|>"


@dataclass(frozen=True)
class Tokenizer:
    """A loaded tokenizer. ``encode`` never adds BOS; data functions prepend ``bos_id`` themselves."""

    inner: tokenizers.Tokenizer
    bos_id: int
    path: Path | None = None

    @property
    def vocab_size(self) -> int:
        """Number of token ids, special tokens included (what the model's d_vocab must equal)."""
        return self.inner.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return list(self.inner.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Iterable[int], *, skip_special: bool = False) -> str:
        """Text of ``ids`` (a list or a 1-D tensor); BOS is rendered as ``<|bos|>`` unless ``skip_special``."""
        return self.inner.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    def token_str(self, token_id: int) -> str:
        """The text of one token, for tables (e.g. ``' the'``)."""
        return self.decode([token_id])


def load_tokenizer(path: str | Path = TOKENIZER_PATH) -> Tokenizer:
    """Load a ``tokenizers`` JSON file that has the ``<|bos|>`` special token (the shipped one by default)."""
    path = Path(path)
    if not path.exists():
        raise ScrubError(f"no tokenizer file at {path}; the shipped one is {TOKENIZER_PATH} "
                         f"(rebuild it with `python training/prepare_corpus.py`)")
    inner = tokenizers.Tokenizer.from_file(str(path))
    bos_id = inner.token_to_id(BOS_TOKEN)
    if bos_id is None:
        raise ScrubError(f"tokenizer {path} has no {BOS_TOKEN!r} token; scrub prepends it to every sequence")
    return Tokenizer(inner=inner, bos_id=bos_id, path=path)


def check_compatible(tokenizer: Tokenizer, model: HookedTransformer) -> None:
    """Raise ``ValueError`` unless the tokenizer's vocabulary size equals the model's ``d_vocab``."""
    d_vocab = model.cfg.d_vocab
    if tokenizer.vocab_size != d_vocab:
        raise ScrubError(
            f"tokenizer {tokenizer.path or ''} has {tokenizer.vocab_size} tokens but the model has d_vocab="
            f"{d_vocab}; they do not belong together. Use the scrub tokenizer only with scrub checkpoints "
            f"(d_vocab={tokenizer.vocab_size}), or use repeated random tokens (--data rrt) with this model"
        )

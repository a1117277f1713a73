"""How much memory there is and about how much each kind of work needs: one module for every guard that
refuses, before any work, sizes that cannot fit (which would otherwise fail deep in torch, or swap for hours).
Each estimate is a guard, not a measurement: it counts the large tensors of the work's peak."""

from __future__ import annotations

import os

import torch

from scrub.errors import ScrubError
from scrub.metrics import MetricName


def available_memory(device: torch.device | str = "cpu") -> int | None:
    """Bytes that may still be allocated on ``device`` (free GPU memory, or the system's available memory);
    None when it cannot be told."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(needed: int, what: str, fix: str, device: torch.device | str = "cpu") -> None:
    """``ScrubError`` naming ``what`` and ``fix`` if about ``needed`` bytes exceed what ``device`` has free."""
    have = available_memory(device)
    if have is not None and needed > have:
        raise ScrubError(f"{what} needs about {_size(needed)} of memory but {_size(have)} is available; {fix}")


def _size(n: int) -> str:
    gb = n / 2**30
    return f"{gb:,.0f} GB" if gb >= 100 else f"{gb:.3g} GB" if gb >= 0.125 else f"{n / 2**20:.3g} MB"


def _itemsize(cfg, at_least: int = 1) -> int:
    return max(at_least, torch.empty((), dtype=cfg.dtype, device="meta").element_size())


def token_bytes(n: int, seq_len: int, copies: int = 4) -> int:
    """A batch of ``n`` x ``seq_len`` int64 tokens built in ``copies`` copies, and a little per example."""
    return n * seq_len * 8 * copies + n * 256


def clean_run_bytes(cfg, n: int, seq: int) -> int:
    """A ``CleanRun`` of ``n`` sequences of ``seq`` tokens (every source's output, z, logits, the cached
    residuals each receiver reads): whether a whole dataset's clean run may be kept."""
    mlps = 0 if cfg.attn_only else cfg.n_layers * cfg.d_model
    residuals = (cfg.n_layers * (1 if cfg.attn_only else 2) + 1) * cfg.d_model
    per_position = (2 * cfg.d_model + cfg.n_layers * cfg.n_heads * (cfg.d_model + cfg.d_head) + mlps + cfg.d_vocab
                    + residuals)
    return n * seq * per_position * _itemsize(cfg)


def run_batch_bytes(cfg, batch_size: int, seq_len: int, metric: MetricName = "loss") -> int:
    """One batch of ``scrub.run`` at its peak: the clean run's component outputs, the clean, scrubbed and
    baseline logits and a log-softmax (with "kl": three more vocabulary-wide tensors), attention patterns."""
    vocab_wide = 7 if metric == "kl" else 4  # logits and log-softmaxes (KL: both distributions, a product)
    per_position = vocab_wide * cfg.d_vocab + cfg.n_layers * (cfg.n_heads + 4) * cfg.d_model + 2 * cfg.n_heads * seq_len
    return batch_size * seq_len * per_position * _itemsize(cfg)


def head_scores_bytes(cfg, n: int, seq_len: int) -> int:
    """The behavioral head scores at their peak: every head's attention pattern on the largest batch, held
    twice (the cache and the stacked copy), and the in-context-learning logits (at least float32)."""
    itemsize = _itemsize(cfg, at_least=4)
    patterns = 2 * n * cfg.n_layers * cfg.n_heads * seq_len * seq_len * itemsize
    return patterns + 2 * n * cfg.n_ctx * cfg.d_vocab * itemsize

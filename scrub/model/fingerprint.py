"""A model's fingerprint (every weight's shape, dtype, device and a checksum of its bytes; the config; the hooks
attached), taken before and checked after code that must not change the model, such as a hypothesis file."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

import torch
from transformer_lens import HookedTransformer

_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}  # element size -> integer view
_PERIOD = 65521  # the position weights of ``checksum`` repeat with this period (a prime)


def checksum(tensor: torch.Tensor) -> tuple[int, int]:
    """Two integer sums of ``tensor``'s bytes (plain and position-weighted), computed where it lies: any
    change of a value changes them (except by constructed collision). The bytes are read as 8-byte words
    (the few left over as their own integers): a quarter of the additions of 4-byte reads."""
    flat = tensor.detach().contiguous().reshape(-1)  # [numel]
    if flat.is_complex():
        flat = torch.view_as_real(flat).reshape(-1)
    small = flat.view(_INT_VIEW[flat.element_size()])  # [numel] the bytes as integers
    whole = small.numel() // (8 // flat.element_size()) * (8 // flat.element_size())  # entries filling words
    words = small[:whole].view(torch.int64)  # [whole * size / 8]
    # Σ bits[i] and Σ bits[i] (i mod P + 1) in int64 (wrapping as int64 does), in one pass over the words: the
    # position weight repeats every P entries, so whole blocks of P are summed column by column first
    full = words.numel() // _PERIOD * _PERIOD
    tail = torch.cat([words[full:], small[whole:].long()])  # [< P + 8] the last words and the bytes left over
    weights = torch.arange(1, _PERIOD + 1, device=flat.device)  # [P]
    plain, weighted = tail.sum(), (tail * weights[: tail.numel()]).sum()
    if full:
        columns = words[:full].view(-1, _PERIOD).sum(0)  # [P]
        plain, weighted = plain + columns.sum(), weighted + (columns * weights).sum()
    return int(plain), int(weighted)


@dataclass(frozen=True)
class ModelFingerprint:
    """What a model is, as comparable values: ``weights`` per parameter name, ``config`` field by field
    (as repr), and how many hook functions its modules hold."""

    weights: dict[str, tuple]
    config: dict[str, str]
    hooks: int
    training: bool

    @classmethod
    def of(cls, model: HookedTransformer) -> Self:
        with torch.no_grad():
            weights = {name: (tuple(p.shape), p.dtype, p.device, checksum(p)) for name, p in model.named_parameters()}
        hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                    for m in model.modules())
        config = {k: repr(v) for k, v in vars(model.cfg).items()}
        return cls(weights, config, hooks, model.training)

    def changes(self, after: ModelFingerprint) -> list[str]:
        """What differs in ``after``, one phrase each (weights first, then the config, the hooks, the mode)."""
        out = []
        for name in sorted(self.weights.keys() | after.weights.keys()):
            if name not in after.weights:
                out.append(f"weight {name} removed")
            elif name not in self.weights:
                out.append(f"weight {name} added")
            elif self.weights[name] != after.weights[name]:
                moved = self.weights[name][:3] != after.weights[name][:3]  # shape, dtype or device
                out.append(f"weight {name} {'reshaped or moved' if moved else 'changed'}")
        for key in sorted(self.config.keys() | after.config.keys()):
            if self.config.get(key) != after.config.get(key):
                out.append(f"model.cfg.{key} ({self.config.get(key, 'unset')} -> {after.config.get(key, 'unset')})")
        if self.hooks != after.hooks:
            out.append(f"hooks attached ({self.hooks} -> {after.hooks}; remove them with model.reset_hooks())")
        if self.training != after.training:
            out.append(f"mode ({'train' if self.training else 'eval'} -> {'train' if after.training else 'eval'})")
        return out

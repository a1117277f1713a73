"""Finite or refused: a model whose weights or logits hold NaN or infinity gives no meaningful number, so it is
refused with one line naming the model (or checkpoint) and the first bad tensor, before any work is blamed on
a hypothesis file or a nan result is printed."""

from __future__ import annotations

import torch
from torch import Tensor

from scrub.errors import ScrubError


class NonFiniteError(ScrubError):
    """Weights, logits or losses hold NaN or infinity; the message names where and the first bad tensor."""


def _count(tensor: Tensor) -> int:
    """How many entries of ``tensor`` are NaN or infinite (0 for a non-float tensor). A finite sum
    proves every entry finite, since a NaN or infinity makes any sum NaN or infinite: the elementwise count
    runs only when the sum is not finite (a bad entry, or a sum that overflowed). Halves sum in float32."""
    if not (tensor.is_floating_point() or tensor.is_complex()):
        return 0
    t = tensor.detach()
    if bool(torch.isfinite(t.sum(dtype=torch.float32) if t.element_size() < 4 and not t.is_complex() else t.sum())):
        return 0
    return int((~torch.isfinite(t)).sum())


def check_weights(model: torch.nn.Module, where: str) -> None:
    """Refuse ``model`` (called ``where`` in the message) if a parameter holds NaN or infinity."""
    if any(p.device.type == "meta" for p in model.parameters()):
        return  # no values to check (``check_on_device`` refuses meta models where they would be run)
    for name, param in model.named_parameters():
        bad = _count(param)
        if bad:
            raise NonFiniteError(f"{where}: weight {name} {list(param.shape)} holds {bad} non-finite value(s) (NaN "
                                 f"or infinity) of {param.numel()}; every number computed from it would be "
                                 f"meaningless: restore or retrain the checkpoint")


def check_logits(logits: Tensor, where: str) -> None:
    """Refuse ``logits`` [batch, seq, d_vocab] of the model's clean run that hold NaN or infinity."""
    bad = ~torch.isfinite(logits)  # [batch, seq, d_vocab]
    if bool(bad.any()):
        example, position = (int(i) for i in bad.nonzero()[0][:2])
        raise NonFiniteError(f"{where}: the clean run's logits hold {int(bad.sum())} non-finite value(s) (first: "
                             f"example {example}, position {position}) although every weight is finite: the model "
                             f"overflows on these inputs (in float16? load it in float32)")

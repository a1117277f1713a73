"""Literal oracles the engine is checked against: slow, obvious, and sharing no code with it.

- ``naive_logits`` (``scrub.testing.reference``): a treeified claim evaluated copy by copy with full forward passes.
- ``hooked_patch_logits`` (on a ``split_qkv_copy`` of the model): path patching of one path with plain
  TransformerLens hooks (cache both runs, freeze
  every component at its clean value, recompute the receiver with the sender's corrupted-minus-clean output added).
- ``activation_patch_logits``: TransformerLens activation patching of one head's or one MLP's output.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from scrub.claims.sites import Component, FwdHook, Head, Mlp, hook_name
from scrub.errors import ScrubError
from scrub.patching.paths import PatchPath, split_qkv_copy
from scrub.testing.reference import naive_logits

__all__ = ["activation_patch_logits", "hooked_patch_logits", "naive_logits", "split_qkv_copy"]


def _part(component: Component) -> tuple:
    """The index of ``component``'s own slice of its output hook (a head's z is [batch, pos, head, d_head])."""
    return (slice(None), slice(None), component.head) if isinstance(component, Head) else (...,)


@torch.no_grad()
def activation_patch_logits(model: HookedTransformer, tokens: Tensor, source: Tensor, component: Head | Mlp) -> Tensor:
    """Logits [batch, seq, d_vocab] of the model on ``tokens`` with ``component``'s output (a head's z, an MLP's
    output) replaced by its output on ``source`` [batch, seq], row by row; everything downstream recomputed."""
    name = hook_name(component)
    _, cache = model.run_with_cache(source, names_filter=lambda n: n == name)

    def patch(act, hook):
        act[_part(component)] = cache[name][_part(component)]
        return act

    return model.run_with_hooks(tokens, fwd_hooks=[(name, patch)])


@torch.no_grad()
def hooked_patch_logits(hooked: HookedTransformer, reference: Tensor, corrupted: Tensor, path: PatchPath,
                        clean_cache=None, corrupted_cache=None, downstream: bool = False) -> Tensor:
    """Patch one path ``sender -> logits`` or ``sender -> R:c -> logits`` with plain hooks: cache both runs,
    freeze every head (and MLP) output at its clean value except the receiver, which is recomputed with
    the sender's corrupted-minus-clean output added to its input ``c``. Senders and receivers are heads or
    MLPs (an MLP receiver's input is ``hook_mlp_in``). ``downstream=True`` recomputes the components after
    the receiver instead of freezing them (edge patching). ``hooked``: ``split_qkv_copy``."""
    cfg = hooked.cfg
    if (len(path.via) > 1 or not isinstance(path.sender, (Head, Mlp))
            or any(not isinstance(r, (Head, Mlp)) for r, _ in path.via)):
        raise ScrubError("hooked_patch_logits handles sender -> logits and sender -> receiver:channel -> logits "
                         "for heads and MLPs only")
    outs = [hook_name(Head(layer, 0)) for layer in range(cfg.n_layers)]
    outs += [] if cfg.attn_only else [hook_name(Mlp(layer)) for layer in range(cfg.n_layers)]
    if clean_cache is None:
        _, clean_cache = hooked.run_with_cache(reference, names_filter=lambda n: n in outs)
    if corrupted_cache is None:
        _, corrupted_cache = hooked.run_with_cache(corrupted, names_filter=lambda n: n in outs)
    s = path.sender
    receiver = path.via[0][0] if path.via else None

    def freeze(act, hook):
        frozen = clean_cache[hook.name].clone()
        if receiver is not None and hook.name == hook_name(receiver):
            frozen[_part(receiver)] = act[_part(receiver)]  # recomputed
        if receiver is None and hook.name == hook_name(s):
            frozen[_part(s)] = corrupted_cache[hook.name][_part(s)]
        return frozen

    hooks: list[FwdHook] = [] if downstream and receiver is not None else [(name, freeze) for name in outs]
    if receiver is not None:
        delta = corrupted_cache[hook_name(s)][_part(s)] - clean_cache[hook_name(s)][_part(s)]
        if isinstance(s, Head):
            delta = delta @ hooked.blocks[s.layer].attn.W_O[s.head]  # [batch, seq, d_model]

        def add(act, hook):
            act[_part(receiver)] = act[_part(receiver)] + delta
            return act

        kind = "mlp_in" if isinstance(receiver, Mlp) else f"{path.via[0][1].value}_input"
        hooks.append((hook_name(receiver, kind), add))
    return hooked.run_with_hooks(reference, fwd_hooks=hooks)

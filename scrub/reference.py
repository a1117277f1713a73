"""The naive, literal evaluator of a treeified claim: slow and obviously correct, for tests only.

Every copy's input residual is summed source by source from separate runs of the real TransformerLens
model on the data each source reads, and every copy is computed by a full forward pass of (a copy of)
the model with its per-head q/k/v input hooks overwritten. It shares nothing with ``engine.py`` except
the tree and the data assignments.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from scrub.sites import Channel, Component, Embed, Head, Logits, Mlp, Pos, hook_name
from scrub.treeify import Assignments, TreeNode


def _sources(model: HookedTransformer, receiver: Component) -> list[Component]:
    cfg = model.cfg
    out: list[Component] = [Embed()]
    if cfg.positional_embedding_type == "standard":
        out.append(Pos())
    for layer in range(cfg.n_layers):
        out += [Head(layer, h) for h in range(cfg.n_heads) if layer < getattr(receiver, "layer", cfg.n_layers)]
        if not cfg.attn_only and (isinstance(receiver, Logits) or layer < receiver.layer):
            out.append(Mlp(layer))
    if isinstance(receiver, Mlp):
        out += [Head(receiver.layer, h) for h in range(cfg.n_heads)]
    return out


def _biases(model: HookedTransformer, receiver: Component) -> Tensor:
    cfg = model.cfg
    total = torch.zeros(cfg.d_model, dtype=model.blocks[0].attn.b_O.dtype)
    for layer in range(cfg.n_layers):
        if isinstance(receiver, Logits) or layer < receiver.layer or (isinstance(receiver, Mlp) and layer == receiver.layer):
            total = total + model.blocks[layer].attn.b_O.detach()
    return total


@torch.no_grad()
def _clean_out(model: HookedTransformer, tokens: Tensor, source: Component) -> Tensor:
    """One source's output on ``tokens`` from a fresh plain run: [batch, seq, d_model]."""
    _, cache = model.run_with_cache(tokens)
    match source:
        case Head(layer=layer, head=head):
            z = cache[hook_name(source)][:, :, head]  # [batch, seq, d_head]
            return z @ model.blocks[layer].attn.W_O[head]
        case Pos():
            return cache[hook_name(source)].expand(tokens.shape[0], -1, -1)
    return cache[hook_name(source)]


@torch.no_grad()
def naive_logits(model: HookedTransformer, root: TreeNode, data: Assignments, tokens: Tensor) -> Tensor:
    """Logits [batch, seq, d_vocab] of the treeified claim, computed literally."""
    patched = copy.deepcopy(model)
    patched.cfg.use_split_qkv_input = True
    patched.cfg.use_hook_mlp_in = True
    patched.setup()

    def input_of(node: TreeNode, channel: Channel) -> Tensor:
        total = _biases(model, node.component).expand(tokens.shape[0], tokens.shape[1], -1).clone()
        claimed = {i.child.component: i for i in node.inputs if i.channel == channel}
        for source in _sources(model, node.component):
            other = data.unclaimed(node, channel, str(source))
            unclaimed = _clean_out(model, tokens[other], source)
            if source not in claimed:
                total += unclaimed
                continue
            inp = claimed[source]
            value = value_of(inp.child)
            if inp.positions is not None:
                mask = inp.positions(tokens[data[node].datum])[..., None]  # [batch, seq, 1]
                value = torch.where(mask, value, unclaimed)
            total += value
        return total

    def value_of(node: TreeNode) -> Tensor:
        comp = node.component
        datum = data[node].datum
        if isinstance(comp, (Embed, Pos)):
            return _clean_out(model, tokens[datum], comp)
        if isinstance(comp, Head):
            inputs = {c: input_of(node, c) for c in (Channel.Q, Channel.K, Channel.V)}
            captured = {}

            def put(c):
                def hook(act, hook):
                    act[:, :, comp.head] = inputs[c]
                    return act
                return hook

            hooks = [(hook_name(comp, f"{c.value}_input"), put(c)) for c in inputs]
            hooks.append((hook_name(comp), lambda act, hook: captured.update(z=act[:, :, comp.head].clone())))
            patched.run_with_hooks(tokens[datum], fwd_hooks=hooks)
            return captured["z"] @ model.blocks[comp.layer].attn.W_O[comp.head]
        if isinstance(comp, Mlp):
            x = input_of(node, Channel.IN)
            captured = {}
            patched.run_with_hooks(tokens[datum], fwd_hooks=[
                (hook_name(comp, "mlp_in"), lambda act, hook: x),
                (hook_name(comp), lambda act, hook: captured.update(out=act.clone())),
            ])
            return captured["out"]
        raise AssertionError(comp)

    final = input_of(root, Channel.IN)
    last = Head(model.cfg.n_layers - 1, 0)  # the residual after the last block is what the logits read
    return patched.run_with_hooks(tokens, fwd_hooks=[(hook_name(last, "resid_post"), lambda act, hook: final)])

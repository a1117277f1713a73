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
from transformer_lens import ActivationCache, HookedTransformer

from scrub.sites import Channel, Component, Embed, FwdHook, Head, Mlp, Pos, hook_name
from scrub.structure import Structure
from scrub.treeify import Assignments, TreeNode, unroll


def _biases(model: HookedTransformer, receiver: Component) -> Tensor:
    """The attention output biases b_O in ``receiver``'s residual input: those of the layers whose heads feed it."""
    total = torch.zeros(model.cfg.d_model, dtype=model.blocks[0].attn.b_O.dtype)
    for layer in Structure.of(model).bias_layers(receiver):
        total = total + model.blocks[layer].attn.b_O.detach()
    return total


def _source_out(model: HookedTransformer, cache: ActivationCache, source: Component) -> Tensor:
    """One source's output in the cache of a plain run: [batch, seq, d_model]."""
    match source:
        case Head(layer=layer, head=head):
            z = cache[hook_name(source)][:, :, head]  # [batch, seq, d_head]
            return z @ model.blocks[layer].attn.W_O[head]
        case Pos():
            return cache[hook_name(source)].expand(cache[hook_name(Embed())].shape[0], -1, -1)
    return cache[hook_name(source)]


@torch.no_grad()
def naive_logits(model: HookedTransformer, root: TreeNode, data: Assignments, tokens: Tensor) -> Tensor:
    """Logits [batch, seq, d_vocab] of the treeified claim, computed literally (a node-mode graph is first
    unrolled into one copy per path, each on the data its node's draws give it). ``tokens`` are the run's
    data [data, seq] that the assignments index (the batch first)."""
    if root.shared:
        root, data = unroll(root, data)
    patched = copy.deepcopy(model)
    patched.cfg.use_split_qkv_input = True
    patched.cfg.use_hook_mlp_in = True
    patched.cfg.ungroup_grouped_query_attention = True  # k/v inputs per query head (same maths), as scrub claims them
    patched.setup()
    runs: dict[tuple[int, ...], ActivationCache] = {}  # plain runs of the model, by the data rows they ran on
    values: dict[tuple[str, ...], Tensor] = {}  # each node's value, by path (a shared node is computed once)

    def clean_out(rows: Tensor, source: Component) -> Tensor:
        key = tuple(rows.tolist())
        if key not in runs:
            runs[key] = model.run_with_cache(tokens[rows])[1]
        return _source_out(model, runs[key], source)  # [batch, seq, d_model]

    def input_of(node: TreeNode, channel: Channel) -> Tensor:
        rows = data[node].datum.shape[0]
        total = _biases(model, node.component).expand(rows, tokens.shape[1], -1).clone()
        claimed = {i.child.component: i for i in node.inputs if i.channel == channel}
        for source in Structure.of(model).residual_senders(node.component):
            other = data.unclaimed(node, channel, str(source))
            unclaimed = clean_out(other, source)
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
        if node.pieces:  # a per-position node: position s is position s of its own copy
            return torch.stack([value_of(piece)[:, s] for s, piece in enumerate(node.pieces)], 1)
        if node.path not in values:
            values[node.path] = compute(node)
        return values[node.path]

    def compute(node: TreeNode) -> Tensor:
        comp = node.component
        datum = data[node].datum
        if isinstance(comp, (Embed, Pos)):
            return clean_out(datum, comp)
        if isinstance(comp, Head):
            inputs = {c: input_of(node, c) for c in (Channel.Q, Channel.K, Channel.V)}
            captured: dict[str, Tensor] = {}

            def put(c):
                def hook(act, hook):
                    act[:, :, comp.head] = inputs[c]
                    return act
                return hook

            hooks: list[FwdHook] = [(hook_name(comp, f"{c.value}_input"), put(c)) for c in inputs]
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
    return patched.run_with_hooks(tokens[data[root].datum],
                                  fwd_hooks=[(hook_name(last, "resid_post"), lambda act, hook: final)])

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

from scrub.claims.sites import Channel, Component, Embed, FwdHook, Head, Mlp, Pos, hook_name
from scrub.claims.structure import Structure
from scrub.engine.treeify import Assignments, TreeNode, unroll


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
    data [data, seq] that the assignments index (the batch first). Long on purpose: the oracle reads top to
    bottom like the write-up, one hooked forward per copy, with no helper shared with the engine."""
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

    def input_of(node: TreeNode, channel: Channel, masked: bool = False) -> Tensor:
        """The node's input on ``channel``; ``masked``: with its query-key masked claims left unclaimed."""
        rows = data[node].datum.shape[0]
        total = _biases(model, node.component).expand(rows, tokens.shape[1], -1).clone()
        claimed = {i.child.component: i for i in node.inputs
                   if i.channel == channel and not (masked and i.qk_mask is not None)}
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

    def run_head(comp: Head, rows: Tensor, inputs: dict[Channel, Tensor], scores: Tensor | None = None):
        """One run of the model with the head's q/k/v inputs overwritten (and, given ``scores``, its attention
        scores): its attention scores, pattern, values and z, all for that head."""
        captured: dict[str, Tensor] = {}

        def put(c):
            def hook(act, hook):
                act[:, :, comp.head] = inputs[c]
                return act
            return hook

        def keep(name: str, head_axis: int):  # scores, pattern: [batch, head, q, k]; v, z: [batch, pos, head, d]
            return lambda act, hook: captured.update({name: act.select(head_axis, comp.head).clone()})

        def set_scores(act, hook):
            act[:, comp.head] = scores
            return act

        hooks: list[FwdHook] = [(hook_name(comp, f"{c.value}_input"), put(c)) for c in inputs]
        if scores is not None:
            hooks.append((hook_name(comp, "attn_scores"), set_scores))
        hooks += [(hook_name(comp, "attn_scores"), keep("scores", 1)), (hook_name(comp, "pattern"), keep("pattern", 1)),
                  (hook_name(comp, "v"), keep("v", 2)), (hook_name(comp), keep("z", 2))]
        patched.run_with_hooks(rows, fwd_hooks=hooks)
        return captured

    def head_out(node: TreeNode, comp: Head, rows: Tensor) -> Tensor:
        """The head's z [rows, seq, d_head]. With query-key masks, literally: attention scores from every
        combination of main and resampled q/k inputs, each pair taking the combination its masks say; then the
        pattern, and each key's value from the main or the resampled v input as the v mask says."""
        inputs = {c: input_of(node, c) for c in (Channel.Q, Channel.K, Channel.V)}
        masks = {i.channel: i.qk_mask.matrix(tokens.shape[1]) for i in node.inputs if i.qk_mask is not None}
        if not masks:
            return run_head(comp, rows, inputs)["z"]
        alt = {c: input_of(node, c, masked=True) for c in masks}
        scores = torch.zeros(rows.shape[0], tokens.shape[1], tokens.shape[1], dtype=inputs[Channel.V].dtype)
        for q_alt in ([False, True] if Channel.Q in masks else [False]):
            for k_alt in ([False, True] if Channel.K in masks else [False]):
                pick = {Channel.Q: alt[Channel.Q] if q_alt else inputs[Channel.Q],
                        Channel.K: alt[Channel.K] if k_alt else inputs[Channel.K], Channel.V: inputs[Channel.V]}
                chosen = torch.ones(tokens.shape[1], tokens.shape[1], dtype=torch.bool)  # [q, k]
                for c, use_alt in ((Channel.Q, q_alt), (Channel.K, k_alt)):
                    if c in masks:
                        chosen &= ~masks[c] if use_alt else masks[c]
                scores = torch.where(chosen, run_head(comp, rows, pick)["scores"], scores)  # [rows, q, k]
        main = run_head(comp, rows, inputs, scores)
        if Channel.V not in masks:
            return main["z"]
        v_alt = run_head(comp, rows, {**inputs, Channel.V: alt[Channel.V]})["v"]  # [rows, seq, d_head]
        p, m = main["pattern"], masks[Channel.V].to(main["pattern"].dtype)  # [rows, q, k], [q, k]
        return torch.einsum("bqk,bkh->bqh", p * m, main["v"]) + torch.einsum("bqk,bkh->bqh", p * (1 - m), v_alt)

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
            return head_out(node, comp, tokens[datum]) @ model.blocks[comp.layer].attn.W_O[comp.head]
        if isinstance(comp, Mlp):
            x = input_of(node, Channel.IN)
            captured: dict[str, Tensor] = {}
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

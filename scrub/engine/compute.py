"""Component maths on a HookedTransformer's own weights and modules, batched over many copies at once.

Owns the clean run (``CleanRun``: every component's output on a batch, split per source), the functions
that recompute heads and MLPs from arbitrary input residuals, and the linear part of a LayerNorm
(``norm_linear``; the unembedding is in ``unembed.py``). LayerNorms and MLPs are the model's own modules;
attention is re-derived from its weights because TransformerLens only takes per-head inputs when config
flags are switched on, and scrub never changes the user's model. ``check_supported`` names the architectures
this does not cover.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Mapping, TypeGuard, cast

import einops
import torch
import torch.nn.functional as F
from torch import Tensor
from transformer_lens import HookedTransformer
from transformer_lens.components import AbstractAttention, GroupedQueryAttention, LayerNorm, LayerNormPre
from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

from scrub.claims.sites import Channel, Component, Embed, Head, Mlp, Pos, hook_name, parse_channel
from scrub.claims.structure import Structure
from scrub.errors import ScrubError

_QK_NORM_ARCHITECTURES = ("OlmoeForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM")  # q/k norm in attention


class UnsupportedModelError(ScrubError):
    """The model uses an architecture feature the engine does not implement."""


def check_supported(model: HookedTransformer) -> None:
    """Raise ``UnsupportedModelError`` naming every feature whose maths scrub does not reproduce (supported:
    standard/shortformer/rotary positions, GQA, any norm and MLP module, parallel blocks, soft-cap, clip_qkv)."""
    cfg = model.cfg
    arch = getattr(cfg, "original_architecture", None)
    problems = []
    kind = cfg.positional_embedding_type
    if kind == "alibi":
        problems.append("ALiBi attention biases (positional_embedding_type='alibi')")
    elif kind not in ("standard", "shortformer", "rotary"):
        problems.append(f"positional_embedding_type={kind!r} (standard, shortformer and rotary are supported)")
    if getattr(cfg, "use_qk_norm", False):
        problems.append("q/k normalisation (use_qk_norm)")
    if arch in _QK_NORM_ARCHITECTURES:
        problems.append(f"OLMo q/k normalisation ({arch})")
    if arch in POST_NORM_ARCHITECTURES:
        problems.append(f"post-norm blocks ({arch})")
    if getattr(cfg, "use_normalization_before_and_after", False):
        problems.append("normalisation after attention and MLP (use_normalization_before_and_after)")
    if getattr(cfg, "attention_dir", "causal") != "causal":
        problems.append("bidirectional attention")
    if getattr(cfg, "use_local_attn", False) and any(t != "global" for t in cfg.attn_types or ["local"]):
        problems.append("local attention (use_local_attn)")
    if getattr(cfg, "use_logn_attn", False):
        problems.append("log-n query scaling (use_logn_attn)")
    if getattr(cfg, "use_attention_sinks", False):
        problems.append("attention sinks (use_attention_sinks)")
    if getattr(cfg, "load_in_4bit", False):
        problems.append("4-bit quantised weights (load_in_4bit)")
    if _enabled(getattr(cfg, "output_logits_soft_cap", None)):
        problems.append("output logit soft-capping (output_logits_soft_cap)")
    if getattr(cfg, "final_rms", False) and cfg.normalization_type in ("LN", "LNPre"):
        problems.append("an RMS final norm after LayerNorm blocks (final_rms)")
    if problems:
        raise UnsupportedModelError(f"scrub cannot scrub this model: it uses {', '.join(problems)}")


def _enabled(cap: float | None) -> TypeGuard[float]:
    """TransformerLens' soft-cap convention: a cap is on only when strictly positive."""
    return cap is not None and cap > 0


@dataclass(frozen=True)
class CleanRun:
    """Every component's output on one batch, so any datum's contribution is an index away."""

    tokens: Tensor  # [batch, seq]
    embed: Tensor  # [batch, seq, d_model]
    pos: Tensor  # [batch, seq, d_model]
    heads: tuple[Tensor, ...]  # per layer [batch, seq, head, d_model] (without b_O)
    z: tuple[Tensor, ...]  # per layer [batch, seq, head, d_head]: heads = z @ W_O
    attn_bias: tuple[Tensor, ...]  # per layer [d_model]
    mlps: tuple[Tensor, ...]  # per layer [batch, seq, d_model] (empty tuple if attention-only)
    logits: Tensor  # [batch, seq, d_vocab]
    shortformer: bool
    structure: Structure
    _resid: dict = field(default_factory=dict, repr=False, compare=False)  # receiver slot -> residual

    def resid_before(self, receiver: Component) -> Tensor:
        """The clean residual ``receiver`` reads, before its normalisation and with the attention biases:
        [batch, seq, d_model]. Every receiver's is summed once, cumulatively in computation order."""
        if not self._resid:
            total, included = torch.zeros_like(self.embed), set()  # [batch, seq, d_model]
            for r in self.structure.receivers:
                new = [s for s in self.structure.residual_senders(r) if s not in included]
                if new:
                    total = total + self.sum_outputs(new)
                    included.update(new)
                self._resid.setdefault(residual_slot(r), total + self.bias_before(r))
        return self._resid[residual_slot(receiver)]

    def bias_before(self, receiver: Component) -> Tensor:
        """The attention output biases in ``receiver``'s input: [d_model]."""
        total = torch.zeros_like(self.embed[0, 0])  # [d_model]
        for layer in self.structure.bias_layers(receiver):
            total = total + self.attn_bias[layer]
        return total

    def sum_outputs(self, sources: list[Component]) -> Tensor:
        """Σ of the clean outputs of ``sources`` (no biases), whole layers of heads at once: [batch, seq, d_model]."""
        total = torch.zeros_like(self.embed)
        by_layer: dict[int, list[int]] = {}
        for s in sources:
            if isinstance(s, Head):
                by_layer.setdefault(s.layer, []).append(s.head)
            else:
                total = total + self.out(s)
        for layer, heads in by_layer.items():
            out = self.heads[layer]  # [batch, seq, head, d_model]
            total = total + (out.sum(2) if len(heads) == out.shape[2] else out[:, :, heads].sum(2))
        return total

    @staticmethod
    def cat(parts: list[CleanRun]) -> CleanRun:
        """One clean run of the data of ``parts``, in order."""
        first = parts[0]
        return replace(first, tokens=torch.cat([p.tokens for p in parts]), embed=torch.cat([p.embed for p in parts]),
                       pos=torch.cat([p.pos for p in parts]),
                       heads=tuple(torch.cat(h) for h in zip(*(p.heads for p in parts), strict=True)),
                       z=tuple(torch.cat(z) for z in zip(*(p.z for p in parts), strict=True)),
                       mlps=tuple(torch.cat(m) for m in zip(*(p.mlps for p in parts), strict=True)),
                       logits=torch.cat([p.logits for p in parts]), _resid={})

    def out(self, component: Component) -> Tensor:
        """The clean output of a source component, [batch, seq, d_model]."""
        match component:
            case Embed():
                return self.embed
            case Pos():
                return self.pos
            case Head(layer=layer, head=head):
                return self.heads[layer][:, :, head]
            case Mlp(layer=layer):
                return self.mlps[layer]
        raise ScrubError(f"{component} is not a source")


@torch.no_grad()
def clean_run(model: HookedTransformer, tokens: Tensor) -> CleanRun:
    """One plain forward pass, caching each source's output."""
    cfg = model.cfg
    rotary = cfg.positional_embedding_type == "rotary"  # no positional embedding: ``pos`` is zeros
    names = {hook_name(Embed())} | (set() if rotary else {hook_name(Pos())})
    names |= {hook_name(Head(layer, 0)) for layer in range(cfg.n_layers)}
    if not cfg.attn_only:
        names |= {hook_name(Mlp(layer)) for layer in range(cfg.n_layers)}
    output, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    # TransformerLens types the output as Output (logits, loss); with the default return_type it is the logits
    logits = cast(Tensor, output)  # [batch, seq, d_vocab]
    heads = tuple(
        einops.einsum(cache[hook_name(Head(layer, 0))], model.blocks[layer].attn.W_O,
                      "batch seq head d_head, head d_head d_model -> batch seq head d_model")
        for layer in range(cfg.n_layers)
    )
    mlps = () if cfg.attn_only else tuple(cache[hook_name(Mlp(layer))] for layer in range(cfg.n_layers))
    embed = cache[hook_name(Embed())]  # [batch, seq, d_model]
    pos = torch.zeros_like(embed) if rotary else cache[hook_name(Pos())]  # [batch or 1, seq, d_model]
    return CleanRun(
        tokens=tokens,
        embed=embed,
        pos=pos.expand(tokens.shape[0], -1, -1) if pos.shape[0] == 1 else pos,
        heads=heads,
        z=tuple(cache[hook_name(Head(layer, 0))] for layer in range(cfg.n_layers)),
        attn_bias=tuple(model.blocks[layer].attn.b_O.detach() for layer in range(cfg.n_layers)),
        mlps=mlps,
        logits=logits,
        shortformer=cfg.positional_embedding_type == "shortformer",
        structure=Structure.of(model),
    )


@torch.no_grad()
def clean_run_batched(model: HookedTransformer, tokens: Tensor, batch_size: int) -> CleanRun:
    """``clean_run`` of many sequences, ``batch_size`` at a time (bounding the forward pass's own memory)."""
    parts = [clean_run(model, tokens[i : i + batch_size]) for i in range(0, tokens.shape[0], batch_size)]
    return parts[0] if len(parts) == 1 else CleanRun.cat(parts)


def residual_slot(receiver: Component) -> tuple[bool, float]:
    """Receivers in one slot (the heads of a layer; its MLP; the logits) read the same residual senders."""
    return isinstance(receiver, Mlp), getattr(receiver, "layer", float("inf"))


def normalise(norm: torch.nn.Module, x: Tensor) -> Tensor:
    """``norm(x)`` for a TransformerLens LayerNorm module; the same maths as its ``forward`` in one fused
    kernel (many stacked copies pass through it), the module itself for any other normalisation."""
    if x.dtype in (torch.float32, torch.float64):
        if isinstance(norm, LayerNorm):
            return F.layer_norm(x, x.shape[-1:], norm.w, norm.b, norm.eps)
        if isinstance(norm, LayerNormPre):
            return F.layer_norm(x, x.shape[-1:], None, None, norm.eps)
    return norm(x)


def norm_linear(model: HookedTransformer, module: torch.nn.Module | None) -> torch.Tensor:
    """The linear part of a normalization layer as a float64 [d_model, d_model] matrix (centring and scale w),
    applied as ``x @ norm_linear``. The division by the per-position scale is left out: it is one positive
    factor per position, which ``unembed.FactoredUnembed`` applies itself and the scores in ``scores``
    can ignore (it cancels in the copying ratio and only reweights rows of the OV circuit)."""
    d_model, norm = model.cfg.d_model, model.cfg.normalization_type
    eye = torch.eye(d_model, dtype=torch.float64, device=next(model.parameters()).device)  # [d_model, d_model]
    mat = eye - 1.0 / d_model if norm in ("LN", "LNPre") else eye  # centring
    w = getattr(module, "w", None)
    return mat * w.detach().double()[None, :] if w is not None else mat  # [d_model, d_model]


def head_out(model: HookedTransformer, layer: int, head_index: Tensor, z: Tensor) -> Tensor:
    """Heads' outputs z [copy, batch, seq, d_head] through their W_O -> [copy, batch, seq, d_model]."""
    w_o = model.blocks[layer].attn.W_O[head_index]  # [copy, d_head, d_model]
    return einops.einsum(z, w_o, "c b s h, c h d -> c b s d")  # [copy, batch, seq, d_model]


@torch.no_grad()
def heads_z_normed(model: HookedTransformer, layer: int, head_index: Tensor, xq: Tensor, xk: Tensor, xv: Tensor,
                   pos: Tensor | None, *, alt: Mapping[Channel, tuple[Tensor, Tensor]] | None = None) -> Tensor:
    """Attention-weighted values z [copy, batch, seq, d_head] (before W_O) of many copies of heads in one
    layer, each with its own inputs already passed through the layer's ``ln1`` (so an input shared by many
    copies is normalised once). head_index [copy]; xq, xk, xv [copy, batch, seq, d_model], or [batch, seq,
    d_model] when every copy reads the same input (projected without stacking); pos [seq, d_model] for
    shortformer models (added to the normalised q and k inputs), else None. With grouped-query attention
    each copy projects its own k and v input through its query head's key/value head.

    ``alt`` splits inputs by (query, key) pair (query–key masks, ``scrub.claims.masks``): ``alt[c] = (x_alt, mask)``
    for a channel c in q, k, v (a ``Channel`` or its letter), x_alt an alternative normalised input of the
    same form as xq/xk/xv, mask bool [copy or 1, batch or 1, q, k] (True: the pair reads the main input).
    Every transform of the main input (projection, shortformer positions, clip_qkv, rotary) is applied to
    x_alt too. The score of pair (q, k) uses query q from xq if mask_q[q, k] else from alt q, and key k from
    xk if mask_k[q, k] else from alt k (then scale, soft-cap, causal softmax as usual); the value key k
    passes to query q is v[k] from xv if mask_v[q, k] else from alt v:
    z[q] = Σ_k p[q, k] · (mask_v[q, k] ? v[k] : v_alt[k]). Without ``alt`` (or with an empty one) this is the
    plain computation, unchanged."""
    attn, cfg = model.blocks[layer].attn, model.cfg
    alts = _check_alt(alt)
    if pos is not None:
        xq, xk = xq + pos, xk + pos
        alts = {c: (x + pos if c != Channel.V else x, m) for c, (x, m) in alts.items()}
    w_k: Tensor
    w_v: Tensor
    b_k: Tensor
    b_v: Tensor
    if isinstance(attn, GroupedQueryAttention):  # key/value weights stored once per group of query heads
        w_k, w_v, b_k, b_v = attn._W_K, attn._W_V, attn._b_K, attn._b_V
        kv_index = head_index // attn.repeat_kv_heads  # [copy]
    else:
        w_k, w_v, b_k, b_v = attn.W_K, attn.W_V, attn.b_K, attn.b_V
        kv_index = head_index  # [copy]
    w_q, w_k, w_v = attn.W_Q[head_index], w_k[kv_index], w_v[kv_index]  # [copy, d_model, d_head] x3
    # [copy, 1, 1, d_head] x3
    b_q, b_k, b_v = (b[i][:, None, None] for b, i in ((attn.b_Q, head_index), (b_k, kv_index), (b_v, kv_index)))
    clip = getattr(cfg, "clip_qkv", None)
    rotary = cfg.positional_embedding_type == "rotary"

    def project(x: Tensor, w: Tensor, b: Tensor, rotate: bool) -> Tensor:
        """x through one projection, then clip_qkv and (for queries and keys) rotary: [copy, batch, seq, d_head]."""
        out = _project(x, w) + b  # [copy, batch, seq, d_head]
        if clip is not None:
            out = out.clamp(min=-clip, max=clip)
        return _rotate(attn, out) if rotate and rotary else out

    q = project(xq, w_q, b_q, True)  # [copy, batch, seq, d_head]
    k = project(xk, w_k, b_k, True)  # [copy, batch, seq, d_head]
    v = project(xv, w_v, b_v, False)  # [copy, batch, seq, d_head]
    if Channel.Q in alts or Channel.K in alts:
        q_alt = (project(alts[Channel.Q][0], w_q, b_q, True), alts[Channel.Q][1]) if Channel.Q in alts else None
        k_alt = (project(alts[Channel.K][0], w_k, b_k, True), alts[Channel.K][1]) if Channel.K in alts else None
        dots = _mixed_dots(q, k, q_alt, k_alt)  # [copy, batch, q, k]
    else:
        dots = einops.einsum(q, k, "c b q h, c b k h -> c b q k")  # [copy, batch, q, k]
    scores = dots / attn.attn_scale  # [copy, batch, q, k]
    cap = getattr(cfg, "attn_scores_soft_cap", None)
    if _enabled(cap):
        scores = cap * torch.tanh(scores / cap)  # [copy, batch, q, k]
    seq = scores.shape[-1]
    causal = torch.ones(seq, seq, dtype=torch.bool, device=scores.device).tril()  # [q, k]
    pattern = scores.masked_fill(~causal, float("-inf")).softmax(-1)  # [copy, batch, q, k]
    if Channel.V in alts:
        x_v, mask_v = alts[Channel.V]
        v_alt = project(x_v, w_v, b_v, False)  # [copy, batch, seq, d_head]
        return (einops.einsum(pattern.masked_fill(~mask_v, 0.0), v, "c b q k, c b k h -> c b q h")
                + einops.einsum(pattern.masked_fill(mask_v, 0.0), v_alt, "c b q k, c b k h -> c b q h"))
    return einops.einsum(pattern, v, "c b q k, c b k h -> c b q h")  # [copy, batch, seq, d_head]


def _check_alt(alt: Mapping[Channel, tuple[Tensor, Tensor]] | None) -> dict[Channel, tuple[Tensor, Tensor]]:
    """``alt`` keyed by ``Channel`` (letters accepted), each (x_alt, bool mask of at most 4 dims)."""
    out: dict[Channel, tuple[Tensor, Tensor]] = {}
    for key, value in (alt or {}).items():
        channel = parse_channel(key)
        if channel == Channel.IN:
            raise ScrubError("heads_z_normed alt: keys are the head inputs 'q', 'k', 'v', not 'in'")
        if not (isinstance(value, tuple) and len(value) == 2 and all(isinstance(t, Tensor) for t in value)):
            raise ScrubError(f"heads_z_normed alt[{channel.value!r}] is (x_alt, mask), two tensors")
        x_alt, mask = value
        if mask.dtype != torch.bool or mask.dim() > 4:
            raise ScrubError(f"heads_z_normed alt[{channel.value!r}]: the mask is bool [copy or 1, batch or 1, q, k], "
                             f"got {mask.dtype} {list(mask.shape)}")
        out[channel] = (x_alt, mask)
    return out


def _mixed_dots(q: Tensor, k: Tensor, q_alt: tuple[Tensor, Tensor] | None,
                k_alt: tuple[Tensor, Tensor] | None) -> Tensor:
    """q·k [copy, batch, q, k] where pair (q, k) takes the main query (key) if its mask is True there, else the
    alternative one; q, k [copy, batch, seq, d_head], q_alt/k_alt (projected input, bool mask) or None."""
    def dot(a: Tensor, b: Tensor) -> Tensor:
        return einops.einsum(a, b, "c b q h, c b k h -> c b q k")  # [copy, batch, q, k]

    def with_key(query: Tensor) -> Tensor:
        main = dot(query, k)  # [copy, batch, q, k]
        return main if k_alt is None else torch.where(k_alt[1], main, dot(query, k_alt[0]))

    main_q = with_key(q)  # [copy, batch, q, k]
    return main_q if q_alt is None else torch.where(q_alt[1], main_q, with_key(q_alt[0]))


def _rotate(attn: AbstractAttention, x: Tensor) -> Tensor:
    """The layer's own rotary embedding (``apply_rotary``, which takes [batch, pos, head, d_head]) of queries
    or keys x [copy, batch, seq, d_head], so every rotary variant TransformerLens builds is covered."""
    flat = x.reshape(-1, x.shape[2], 1, x.shape[3])  # [copy*batch, seq, 1, d_head]
    return attn.apply_rotary(flat).reshape(x.shape)  # [copy, batch, seq, d_head]


def _project(x: Tensor, w: Tensor) -> Tensor:
    """x [copy, batch, seq, d_model] or shared [batch, seq, d_model]; w [copy, d_model, d_head]."""
    if x.dim() == 3:
        return einops.einsum(x, w, "b s d, c d h -> c b s h")  # [copy, batch, seq, d_head]
    return einops.einsum(x, w, "c b s d, c d h -> c b s h")  # [copy, batch, seq, d_head]


@torch.no_grad()
def mlp_forward(model: HookedTransformer, layer: int, x: Tensor) -> Tensor:
    """MLP outputs for input residuals x [copy, batch, seq, d_model] -> [copy, batch, seq, d_model]."""
    block = model.blocks[layer]
    flat = x.reshape(-1, *x.shape[2:])  # [copy*batch, seq, d_model]
    return block.mlp(normalise(block.ln2, flat)).reshape(x.shape)

"""The final LayerNorm and unembedding, plain and factored through head differences.

With a LayerNorm (or LayerNormPre) at the end, logits(r) = (r · Ã) / s(r) + c, where Ã = diag(w) W_U with
its rows centred over d_model, c = b W_U + b_U and s(r) = sqrt(var(r) + eps) is one number per position.
So logits are linear in the residual apart from s. A path-patched residual is a shared clean base plus a
few head-output differences Δz · W_O[h]; ``FactoredUnembed`` multiplies the base by Ã once per call and
each difference through W_O[h] Ã, a [d_head, d_vocab] map, instead of unembedding d_model-wide residuals
once per patched path (the dominant cost of the path-patching matrix).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from scrub.claims.sites import Head
from scrub.engine.compute import norm_linear


@torch.no_grad()
def unembed(model: HookedTransformer, resid: Tensor) -> Tensor:
    """Logits from final residuals [batch, seq, d_model] -> [batch, seq, d_vocab]."""
    final_norm = getattr(model, "ln_final", None)  # absent in models without normalisation
    return model.unembed(resid if final_norm is None else final_norm(resid))


@dataclass(frozen=True)
class Term:
    """One addend of a final residual at the scored positions: either a head-output difference kept
    d_head-wide (``dz`` [batch, n_pos, d_head] of ``head``; the addend is dz @ W_O[head]) or any other
    addend ``resid`` [batch, n_pos, d_model]."""

    resid: Tensor | None = None
    dz: Tensor | None = None
    head: Head | None = None


@dataclass
class FactoredUnembed:
    """Unembeds ``base + Σ terms`` without multiplying any d_model-wide term by W_U except the base, which
    is shared by every tree of a call (keyed by the rows it was gathered from)."""

    model: HookedTransformer
    a: Tensor  # [d_model, d_vocab]: diag(w) W_U, rows centred
    c: Tensor  # [d_vocab]
    eps: float
    head_maps: dict = field(default_factory=dict)  # Head -> [d_head, d_vocab]
    bases: dict = field(default_factory=dict)  # key -> [batch, n_pos, d_vocab]

    @classmethod
    def of(cls, model: HookedTransformer) -> "FactoredUnembed | None":
        """None unless the final normalisation is a LayerNorm (with or without weights)."""
        norm = getattr(model, "ln_final", None)
        if model.cfg.normalization_type not in ("LN", "LNPre") or norm is None:
            return None
        w_u = model.W_U.detach()  # [d_model, d_vocab]
        a = (norm_linear(model, norm) @ w_u.double()).to(w_u.dtype)  # [d_model, d_vocab]: diag(w) W_U, rows centred
        b = getattr(norm, "b", None)
        c = model.b_U.detach() + (0.0 if b is None else b.detach() @ w_u)  # [d_vocab]
        return cls(model, a, c, float(norm.eps))

    def w_o(self, head: Head) -> Tensor:
        return self.model.blocks[head.layer].attn.W_O.detach()[head.head]  # [d_head, d_model]

    def head_map(self, head: Head) -> Tensor:
        """W_O[h] Ã: [d_head, d_vocab]."""
        if head not in self.head_maps:
            self.head_maps[head] = self.w_o(head) @ self.a
        return self.head_maps[head]

    def logits(self, base: Tensor, base_key, terms: list[Term]) -> Tensor:
        """Logits [batch, n_pos, d_vocab] of the residual ``base + Σ terms.resid`` (base [batch, n_pos, d_model]).
        Where the terms are together at least d_model wide (a claim near the full graph), the built residual is
        multiplied by Ã once instead: the terms' products would cost more."""
        batch, n_pos, d_model = base.shape
        width = sum(d_model if t.dz is None else t.dz.shape[-1] for t in terms)
        if width >= d_model:
            resid = base  # [batch, n_pos, d_model]
            for t in terms:
                resid = resid + self.addend(t)  # [batch, n_pos, d_model]
            lin, fresh = resid @ self.a, True  # [batch, n_pos, d_vocab]
        else:
            lin, resid, fresh = self._factored(base, base_key, terms)
        lin = lin.view(batch, n_pos, -1)  # [batch, n_pos, d_vocab]
        centred = resid - resid.mean(-1, keepdim=True)  # [batch, n_pos, d_model]
        scale = (centred.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()  # [batch, n_pos, 1]
        return (lin.div_(scale) if fresh else lin / scale).add_(self.c)  # [batch, n_pos, d_vocab]

    def addend(self, t: Term) -> Tensor:
        """The term's addend to the residual: [batch, n_pos, d_model]."""
        if t.dz is None:
            assert t.resid is not None  # a term is either dz (with its head) or resid
            return t.resid
        assert t.head is not None  # a dz term always names its head
        return t.dz @ self.w_o(t.head)  # [batch, n_pos, d_model]

    def _factored(self, base: Tensor, base_key, terms: list[Term]) -> tuple[Tensor, Tensor, bool]:
        """The linear part [batch*n_pos, d_vocab] from the cached base and each term's product, the summed residual
        [batch, n_pos, d_model], and whether the linear part is a fresh tensor (not the cache)."""
        batch, n_pos, _ = base.shape
        if base_key not in self.bases:
            self.bases[base_key] = base @ self.a  # [batch, n_pos, d_vocab]
        lin = self.bases[base_key].reshape(batch * n_pos, -1)  # [batch*n_pos, d_vocab]
        resid = base  # [batch, n_pos, d_model]
        fresh = False  # ``lin`` is still the cached base: the first term allocates, later terms add in place
        for t in terms:
            resid = resid + self.addend(t)  # [batch, n_pos, d_model]
            if t.dz is not None:
                assert t.head is not None  # a dz term always names its head
                # [batch*n_pos, d_head], [d_head, d_vocab]
                x, m = t.dz.reshape(batch * n_pos, -1), self.head_map(t.head)
            else:
                assert t.resid is not None  # a term is either dz (with its head) or resid
                x, m = t.resid.reshape(batch * n_pos, -1), self.a  # [batch*n_pos, d_model], [d_model, d_vocab]
            lin = lin.addmm_(x, m) if fresh else torch.addmm(lin, x, m)  # [batch*n_pos, d_vocab]
            fresh = True
        return lin, resid, fresh

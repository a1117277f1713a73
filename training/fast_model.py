"""A plain-torch twin of the shipped HookedTransformers, used only to train them faster on CPU.

Same maths as TransformerLens' ``HookedTransformer`` with shortformer positions and LayerNorm
(positions are added to the LayerNormed query and key inputs, never to the residual stream), either
attention-only (``d_mlp=0``, ``attn_only=True``) or with an MLP after each attention layer
(``attn_only=False``, ``act_fn="gelu"``: ``resid_mid = resid + attn(ln1(resid))``,
``resid_post = resid_mid + W_out gelu(W_in ln2(resid_mid) + b_in) + b_out``, where TransformerLens'
``"gelu"`` is ``F.gelu``, the exact erf GELU). Attention is fused (``scaled_dot_product_attention``).
``to_hooked`` copies the weights into a HookedTransformer; ``train_model.py`` checks that both give the
same logits before saving.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformer_lens import HookedTransformer


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_head: int) -> None:
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_head
        self.ln = nn.LayerNorm(d_model, eps=1e-5)
        self.qk = nn.Linear(d_model, 2 * n_heads * d_head)
        self.v = nn.Linear(d_model, n_heads * d_head)
        self.o = nn.Linear(n_heads * d_head, d_model)

    def forward(self, resid: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        b, t, _ = resid.shape  # [batch, pos, d_model]
        x = self.ln(resid)  # [batch, pos, d_model]
        q, k = self.qk(x + pos).split(self.n_heads * self.d_head, dim=-1)  # [batch, pos, heads*d_head] x2
        v = self.v(x)  # [batch, pos, heads*d_head]
        q, k, v = (z.view(b, t, self.n_heads, self.d_head).transpose(1, 2) for z in (q, k, v))  # [b, h, pos, d_head]
        z = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [b, h, pos, d_head]
        return self.o(z.transpose(1, 2).reshape(b, t, -1))  # [batch, pos, d_model]


class MLP(nn.Module):
    """LayerNorm (TransformerLens' ``ln2``) then a GELU MLP (``W_in``, ``b_in``, ``W_out``, ``b_out``)."""

    def __init__(self, d_model: int, d_mlp: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(d_model, eps=1e-5)
        self.fc_in = nn.Linear(d_model, d_mlp)
        self.fc_out = nn.Linear(d_mlp, d_model)

    def forward(self, resid: torch.Tensor) -> torch.Tensor:
        return self.fc_out(F.gelu(self.fc_in(self.ln(resid))))  # [batch, pos, d_model]


class FastTransformer(nn.Module):
    """``d_mlp=0``: attention-only, with exactly the modules (and so the initialisation, for a given seed) of
    the attention-only twin the shipped ``scrub-attn-2l`` was trained with."""

    def __init__(self, n_layers: int, d_model: int, n_heads: int, d_head: int, n_ctx: int, d_vocab: int,
                 d_mlp: int = 0) -> None:
        super().__init__()
        self.embed = nn.Embedding(d_vocab, d_model)
        self.pos = nn.Embedding(n_ctx, d_model)
        self.blocks = nn.ModuleList(Attention(d_model, n_heads, d_head) for _ in range(n_layers))
        if d_mlp:  # registered only with MLPs, so that the attention-only parameter order is unchanged
            self.mlps = nn.ModuleList(MLP(d_model, d_mlp) for _ in range(n_layers))
        self.ln_final = nn.LayerNorm(d_model, eps=1e-5)
        self.unembed = nn.Linear(d_model, d_vocab)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.normal_(p, std=0.02)

    @property
    def d_mlp(self) -> int:
        return self.mlps[0].fc_in.out_features if hasattr(self, "mlps") else 0

    @torch.no_grad()
    def sinusoidal_positions(self, scale: float = 1.0) -> None:
        """Start the (still learned) positional embeddings from sines and cosines of many frequencies, so
        that sharp relative-position attention (e.g. to the previous token) is easy to learn."""
        n_ctx, d_model = self.pos.weight.shape
        pos = torch.arange(n_ctx)[:, None].float()  # [n_ctx, 1]
        freq = torch.exp(-torch.arange(0, d_model, 2).float() * (torch.log(torch.tensor(1e4)) / d_model))  # [d_model/2]
        self.pos.weight[:, 0::2] = scale * torch.sin(pos * freq)
        self.pos.weight[:, 1::2] = scale * torch.cos(pos * freq)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        resid = self.embed(tokens)  # [batch, pos, d_model]
        pos = self.pos(torch.arange(tokens.shape[1], device=tokens.device))[None]  # [1, pos, d_model]
        mlps = self.mlps if hasattr(self, "mlps") else [None] * len(self.blocks)
        for block, mlp in zip(self.blocks, mlps, strict=True):
            resid = resid + block(resid, pos)  # [batch, pos, d_model]
            if mlp is not None:
                resid = resid + mlp(resid)  # [batch, pos, d_model]
        return self.unembed(self.ln_final(resid))  # [batch, pos, d_vocab]

    def loss(self, tokens: torch.Tensor) -> torch.Tensor:
        logits = self(tokens)[:, :-1]  # [batch, pos-1, d_vocab]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))


FastAttnOnly = FastTransformer  # the name the attention-only recipe was written with


@torch.no_grad()
def to_hooked(fast: FastTransformer, model: HookedTransformer) -> HookedTransformer:
    """Copy the weights of ``fast`` into ``model`` (same architecture) and return it."""
    n_heads, d_head = model.cfg.n_heads, model.cfg.d_head
    assert model.cfg.attn_only == (fast.d_mlp == 0) and (fast.d_mlp == 0 or model.cfg.d_mlp == fast.d_mlp)
    assert model.cfg.attn_only or model.cfg.act_fn == "gelu"
    sd = {"embed.W_E": fast.embed.weight, "pos_embed.W_pos": fast.pos.weight,
          "ln_final.w": fast.ln_final.weight, "ln_final.b": fast.ln_final.bias,
          "unembed.W_U": fast.unembed.weight.T, "unembed.b_U": fast.unembed.bias}

    def heads(w: torch.Tensor) -> torch.Tensor:  # [heads*d_head, d_model] -> [heads, d_model, d_head]
        return w.view(n_heads, d_head, -1).transpose(1, 2)

    for i, blk in enumerate(fast.blocks):
        wq, wk = blk.qk.weight.split(n_heads * d_head, dim=0)  # [heads*d_head, d_model] x2
        bq, bk = blk.qk.bias.split(n_heads * d_head, dim=0)  # [heads*d_head] x2
        sd |= {f"blocks.{i}.ln1.w": blk.ln.weight, f"blocks.{i}.ln1.b": blk.ln.bias,
               f"blocks.{i}.attn.W_Q": heads(wq), f"blocks.{i}.attn.W_K": heads(wk),
               f"blocks.{i}.attn.W_V": heads(blk.v.weight),
               f"blocks.{i}.attn.b_Q": bq.view(n_heads, d_head), f"blocks.{i}.attn.b_K": bk.view(n_heads, d_head),
               f"blocks.{i}.attn.b_V": blk.v.bias.view(n_heads, d_head),
               f"blocks.{i}.attn.W_O": blk.o.weight.T.reshape(n_heads, d_head, -1),
               f"blocks.{i}.attn.b_O": blk.o.bias}
        if fast.d_mlp:
            mlp = fast.mlps[i]
            sd |= {f"blocks.{i}.ln2.w": mlp.ln.weight, f"blocks.{i}.ln2.b": mlp.ln.bias,
                   f"blocks.{i}.mlp.W_in": mlp.fc_in.weight.T,  # [d_model, d_mlp]
                   f"blocks.{i}.mlp.b_in": mlp.fc_in.bias,
                   f"blocks.{i}.mlp.W_out": mlp.fc_out.weight.T,  # [d_mlp, d_model]
                   f"blocks.{i}.mlp.b_out": mlp.fc_out.bias}
    missing, unexpected = model.load_state_dict({k: v.clone() for k, v in sd.items()}, strict=False)
    params = dict(model.named_parameters())
    float_missing = [k for k in missing if k in params]
    assert not float_missing and not unexpected, (float_missing, unexpected)
    return model

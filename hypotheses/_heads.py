"""The one marked place where hypothesis files get their head numbers: roles computed from the behavioral
scores of ``scrub.heads.scores`` on the model at hand, with a fixed seed (never hard-coded head numbers).

``head_roles(model)`` returns a frozen ``HeadRoles``: the behavioral induction heads (prefix-matching and
copying above ``scrub.heads.scores.Thresholds``), for each of them the strongest previous-token head in an earlier
layer, the previous-token-like heads and the heads that attend further back (any layer before the last
induction head, never an induction head itself), and what the mechanism calls "the token embedding": the
embedding alone, or the embedding and the first MLP when that MLP's output is mostly a function of the
current token (``mlp0_token_share``: measured, not assumed). When no head passes a threshold (e.g. a
random-init model) the top scorer is used and the fallback is recorded, so every hypothesis file still
builds and says so. It takes about a second on the shipped models, so files recompute it rather than keep
a cache.

Depth: in a 2-layer model every role but the induction heads is a layer-0 head. In deeper models the
previous-token head of an induction head in layer L is the top previous-token scorer of layers 0..L-1 (its
K path runs to the induction head through the residual stream, skipping any layer in between).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformer_lens import HookedTransformer

from scrub.claims.sites import Head
from scrub.data.batches import default_exclude_common, natural_batch
from scrub.heads.scores import HeadScores, Thresholds, attention_patterns, behavioral_induction_heads, head_scores
from scrub.model.tokenizer import load_tokenizer

SEED = 0  # the fixed seed of the scores the roles come from
N_SEQUENCES = 32  # sequences per score batch
PREVIOUS_LIKE = 0.2  # previous-token score of a "previous-token-like" head: besides its previous-token head
# 0.3 (0.60), the shipped model has layer-0 heads that also look at the previous token in part (0.4, 0.6: ~0.21)
FURTHER_BACK = 0.3  # attention mass on keys t-2..t-4 of a head that "attends further back"
BACK_OFFSETS = (2, 3, 4)
MLP0_TOKEN_SHARE = 0.5  # mlp.0 counts as part of the token embedding when more than half of the variance of
# its output is a function of the current token (``mlp0_token_share``): its other input, the layer-0 heads,
# resampled from another sequence, leaves that share of the variance in place


@dataclass(frozen=True)
class HeadRoles:
    """Head names ("L.H") by role; ``fallbacks`` says which roles used a top scorer instead of a threshold."""

    induction: tuple[str, ...]  # receivers of the two-head mechanism: behavioral induction heads after layer 0
    behavioral: tuple[str, ...]  # every head passing the behavioral thresholds (any layer)
    previous_token: str  # the previous-token head of the first induction head (layer 0 in a 2-layer model)
    previous_like: tuple[str, ...]  # early heads with previous-token score >= PREVIOUS_LIKE
    further_back: tuple[str, ...]  # early heads with attention >= FURTHER_BACK on keys t-2..t-4
    other_layer0: tuple[str, ...]  # layer-0 heads in neither of the two roles above
    fallbacks: tuple[str, ...]
    scores: HeadScores
    further_back_score: torch.Tensor  # [n_layers, n_heads]
    previous_of: tuple[tuple[str, str], ...] = ()  # (induction head, its previous-token head), one per receiver
    other_early: tuple[str, ...] = ()  # early heads (before the last induction head) in no role;
    # = other_layer0 at 2 layers
    embedding: tuple[str, ...] = ("embed",)  # "the token embedding" of the mechanism: ("embed",) or ("embed", "mlp.0")
    mlp0_token_share: float | None = None  # measured share of mlp.0's output variance fixed by the current token

    def behavioral_receivers(self) -> tuple[str, ...]:
        """Behavioral induction heads that can receive the mechanism (after layer 0); the fallback otherwise."""
        return tuple(h for h in self.behavioral if not h.startswith("0.")) or self.induction

    def previous_for(self, receiver: str) -> str:
        """The previous-token head whose output the mechanism routes into ``receiver``'s K: the top
        previous-token scorer of the layers before ``receiver``'s."""
        found = dict(self.previous_of).get(receiver)
        if found is not None:
            return found
        layer = int(receiver.split(".")[0])
        prev = self.scores.previous_token[:layer]  # [layers before, head]
        flat = int(prev.flatten().argmax())
        return str(Head(flat // prev.shape[1], flat % prev.shape[1]))

    def early(self, heads: tuple[str, ...], receiver: str) -> list[str]:
        """The heads of ``heads`` computed before ``receiver`` (a lower layer)."""
        layer = int(receiver.split(".")[0])
        return [h for h in heads if int(h.split(".")[0]) < layer]


def further_back_scores(model: HookedTransformer, tokens: torch.Tensor) -> torch.Tensor:
    """Mean attention from query t to keys t-2..t-4 (queries t >= 4): [n_layers, n_heads]."""
    pattern = attention_patterns(model, tokens)  # [batch, layer, head, q, k]
    seq = tokens.shape[1]
    q = torch.arange(seq)[:, None]  # [q, 1]
    k = torch.arange(seq)[None, :]  # [1, k]
    target = torch.zeros(seq, seq, dtype=torch.bool)  # [q, k]
    for offset in BACK_OFFSETS:
        target |= k == q - offset
    mass = (pattern * target.to(pattern.dtype)).sum(-1)  # [batch, layer, head, q]
    return mass[..., max(BACK_OFFSETS):].mean((0, 3))  # [layer, head]


def roles_from_scores(scores: HeadScores, back: torch.Tensor, thresholds: Thresholds = Thresholds(), *,
                      mlp0_token_share: float | None = None) -> HeadRoles:
    """Pure: the roles implied by the scores (see the module docstring for the fallbacks). ``mlp0_token_share``
    (None: the model has no MLPs) decides whether mlp.0 is part of the token embedding."""
    n_layers, n_heads = scores.previous_token.shape
    fallbacks = []
    behavioral = [h for h in behavioral_induction_heads(scores, thresholds)]
    receivers = [h for h in behavioral if h.layer >= 1]
    if not receivers:  # the top prefix-matching head after layer 0 (the last layer's on a tie)
        later = scores.prefix_matching[1:]  # [layer - 1, head]
        flat = max(range(later.numel()), key=lambda i: (float(later.flatten()[i]), i // n_heads))
        receivers = [Head(1 + flat // n_heads, flat % n_heads)]
        where = f"layer {n_layers - 1}" if n_layers == 2 else f"layers 1-{n_layers - 1}"
        fallbacks.append(f"no head after layer 0 passes the behavioral thresholds; induction head = top "
                         f"prefix-matching head of {where}, {receivers[0]}")
    induction = set(receivers) | set(behavioral)
    previous_of = []
    for receiver in receivers:  # the top previous-token scorer of the earlier layers (never an induction head)
        prev = scores.previous_token[: receiver.layer].clone()  # [layers before, head]
        for h in induction:
            if h.layer < receiver.layer:
                prev[h.layer, h.head] = float("-inf")
        flat = int(prev.flatten().argmax())
        best = Head(flat // n_heads, flat % n_heads)
        if float(prev.max()) < thresholds.previous_token:
            layers = "layer 0" if receiver.layer == 1 else f"layers 0-{receiver.layer - 1}"
            note = (f"no head of {layers} passes previous-token >= {thresholds.previous_token}; using the top "
                    f"scorer {best} ({float(prev.max()):.2f})")
            fallbacks.append(note + (f" for {receiver}" if len({r.layer for r in receivers}) > 1 else ""))
        previous_of.append((receiver, best))
    first = previous_of[0][1]
    fallbacks = list(dict.fromkeys(fallbacks))
    top = max(r.layer for r in receivers)  # roles below are heads of the layers before the last induction head
    early = [Head(lay, h) for lay in range(top) for h in range(n_heads) if Head(lay, h) not in induction]
    like = [h for h in early if float(scores.previous_token[h.layer, h.head]) >= PREVIOUS_LIKE]
    like = sorted(set(like) | {p for _, p in previous_of})
    back_heads = [h for h in early if float(back[h.layer, h.head]) >= FURTHER_BACK and h not in like]
    other = [h for h in early if h not in like and h not in back_heads]
    mlp0_is_token = mlp0_token_share is not None and mlp0_token_share > MLP0_TOKEN_SHARE
    embedding = ("embed", "mlp.0") if mlp0_is_token else ("embed",)
    names = lambda hs: tuple(str(h) for h in hs)  # noqa: E731
    return HeadRoles(induction=names(receivers), behavioral=names(behavioral), previous_token=str(first),
                     previous_like=names(like), further_back=names(back_heads),
                     other_layer0=names(h for h in other if h.layer == 0), fallbacks=tuple(fallbacks), scores=scores,
                     further_back_score=back, previous_of=tuple((str(r), str(p)) for r, p in previous_of),
                     other_early=names(other), embedding=embedding, mlp0_token_share=mlp0_token_share)


@torch.no_grad()
def mlp0_token_share(model: HookedTransformer, tokens: torch.Tensor, *, seed: int = SEED) -> float | None:
    """How much of the variance of mlp.0's output is fixed by the current token (and position):
    1 - E|m' - m|^2 / (2 E|m - E m|^2), where m is mlp.0's output and m' the same with its other input, the
    layer-0 attention output, taken from another sequence (row i reads row (i + k) mod n of ``tokens``
    [n, seq], k drawn once). 1: a function of the token alone; 0: as if independent of it (m and m' then
    differ like two independent draws, E|m' - m|^2 = 2 Var m). Positions 1.. are scored (position 0 is BOS
    in every row). None for a model without MLPs; 1 with parallel blocks (mlp.0 reads the embedding only)."""
    if model.cfg.attn_only:
        return None
    if getattr(model.cfg, "parallel_attn_mlp", False):
        return 1.0
    n = tokens.shape[0]
    shift = int(torch.randint(1, max(2, n), (1,), generator=torch.Generator().manual_seed(seed))) % n or 1
    other = (torch.arange(n) + shift) % n  # [n]
    attn, mlp = "blocks.0.hook_attn_out", "blocks.0.hook_mlp_out"
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in (attn, mlp), stop_at_layer=1)
    clean = cache[mlp][:, 1:]  # [n, seq-1, d_model]
    swapped: dict[str, torch.Tensor] = {}
    model.run_with_hooks(tokens, stop_at_layer=1, fwd_hooks=[(attn, lambda act, hook: cache[attn][other]),
                                                             (mlp, lambda act, hook: swapped.__setitem__("m", act))])
    moved = (swapped["m"][:, 1:] - clean).pow(2).sum(-1).mean()  # E|m' - m|^2
    spread = (clean - clean.mean((0, 1))).pow(2).sum(-1).mean()  # E|m - E m|^2
    return float(1 - moved / (2 * spread)) if float(spread) > 0 else 1.0


def head_roles(model: HookedTransformer, *, seed: int = SEED) -> HeadRoles:
    """Compute the behavioral scores (natural-text previous-token scores) and the roles they imply."""
    compatible = load_tokenizer().vocab_size == model.cfg.d_vocab  # natural text needs the scrub tokenizer
    scores = head_scores(model, data="natural" if compatible else "rrt", n=N_SEQUENCES, seed=seed,
                         exclude_common=default_exclude_common(model))
    if compatible:
        tokens = natural_batch(N_SEQUENCES, min(128, model.cfg.n_ctx), seed=seed)  # [n, seq]
    else:
        tokens = torch.randint(1, model.cfg.d_vocab, (N_SEQUENCES, min(128, model.cfg.n_ctx)),
                               generator=torch.Generator().manual_seed(seed))  # [n, seq]
    return roles_from_scores(scores, further_back_scores(model, tokens),
                             mlp0_token_share=mlp0_token_share(model, tokens, seed=seed))

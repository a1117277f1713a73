"""The one marked place where hypothesis files get their head numbers: roles computed from the behavioral
scores of ``scrub.scores`` on the model at hand, with a fixed seed (never hard-coded head numbers).

``head_roles(model)`` returns a frozen ``HeadRoles``: the behavioral induction heads (prefix-matching and
copying above ``scrub.scores.Thresholds``), the strongest previous-token head, the previous-token-like heads
and the layer-0 heads that attend further back. When no head passes a threshold (e.g. a random-init model)
the top scorer is used and the fallback is recorded, so every hypothesis file still builds and says so.
It takes under a second on the shipped model, so files recompute it rather than keep a cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformer_lens import HookedTransformer

from scrub.data import default_exclude_common, natural_batch
from scrub.scores import HeadScores, Thresholds, attention_patterns, behavioral_induction_heads, head_scores
from scrub.sites import Head
from scrub.tokenizer import load_tokenizer

SEED = 0  # the fixed seed of the scores the roles come from
N_SEQUENCES = 32  # sequences per score batch
PREVIOUS_LIKE = 0.2  # previous-token score of a "previous-token-like" head: besides its previous-token head
# 0.3 (0.60), the shipped model has layer-0 heads that also look at the previous token in part (0.4, 0.6: ~0.21)
FURTHER_BACK = 0.3  # attention mass on keys t-2..t-4 of a head that "attends further back"
BACK_OFFSETS = (2, 3, 4)


@dataclass(frozen=True)
class HeadRoles:
    """Head names ("L.H") by role; ``fallbacks`` says which roles used a top scorer instead of a threshold."""

    induction: tuple[str, ...]  # receivers of the two-head mechanism: behavioral induction heads after layer 0
    behavioral: tuple[str, ...]  # every head passing the behavioral thresholds (any layer)
    previous_token: str  # the strongest previous-token head of layer 0
    previous_like: tuple[str, ...]  # layer-0 heads with previous-token score >= PREVIOUS_LIKE
    further_back: tuple[str, ...]  # layer-0 heads with attention >= FURTHER_BACK on keys t-2..t-4
    other_layer0: tuple[str, ...]  # layer-0 heads in neither of the two roles above
    fallbacks: tuple[str, ...]
    scores: HeadScores
    further_back_score: torch.Tensor  # [n_layers, n_heads]

    def behavioral_receivers(self) -> tuple[str, ...]:
        """Behavioral induction heads that can receive the mechanism (after layer 0); the fallback otherwise."""
        return tuple(h for h in self.behavioral if not h.startswith("0.")) or self.induction


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


def roles_from_scores(scores: HeadScores, back: torch.Tensor, thresholds: Thresholds = Thresholds()) -> HeadRoles:
    """Pure: the roles implied by the scores (see the module docstring for the fallbacks)."""
    n_layers, n_heads = scores.previous_token.shape
    fallbacks = []
    behavioral = [h for h in behavioral_induction_heads(scores, thresholds)]
    receivers = [h for h in behavioral if h.layer >= 1]
    if not receivers:
        layer = n_layers - 1
        receivers = [Head(layer, int(scores.prefix_matching[layer].argmax()))]
        fallbacks.append(f"no head after layer 0 passes the behavioral thresholds; induction head = top "
                         f"prefix-matching head of layer {layer}, {receivers[0]}")
    prev0 = scores.previous_token[0]  # [head]
    best = Head(0, int(prev0.argmax()))
    if float(prev0.max()) < thresholds.previous_token:
        fallbacks.append(f"no layer-0 head passes previous-token >= {thresholds.previous_token}; using the top "
                         f"scorer {best} ({float(prev0.max()):.2f})")
    like = [Head(0, h) for h in range(n_heads) if float(prev0[h]) >= PREVIOUS_LIKE]
    like = sorted(set(like) | {best})
    back_heads = [Head(0, h) for h in range(n_heads) if float(back[0, h]) >= FURTHER_BACK and Head(0, h) not in like]
    other = [Head(0, h) for h in range(n_heads) if Head(0, h) not in like and Head(0, h) not in back_heads]
    names = lambda hs: tuple(str(h) for h in hs)  # noqa: E731
    return HeadRoles(induction=names(receivers), behavioral=names(behavioral), previous_token=str(best),
                     previous_like=names(like), further_back=names(back_heads), other_layer0=names(other),
                     fallbacks=tuple(fallbacks), scores=scores, further_back_score=back)


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
    return roles_from_scores(scores, further_back_scores(model, tokens))

"""Sanity check of `scrub patch` on a model that has induction heads, while the shipped model trains.

Trains a tiny 2-layer attention-only model (4 heads, d_model 64, vocab 128) for ~1 minute on sequences
with one repeated random segment of random length 5..19 at a random offset (a fixed repeat length lets the
model copy by position instead of by induction), then prints the previous-token score of each layer-0
head, the prefix-matching score of each layer-1 head, and the largest path-patching effects on repeated
random tokens (16 x 1 + 2x20, fresh random corruption, loss at second-repeat positions).
    OMP_NUM_THREADS=1 /work/venv/bin/python benchmarks/toy_induction.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from transformer_lens import HookedTransformer, HookedTransformerConfig  # noqa: E402

from scrub.data.batches import repeat_positions, repeated_random_tokens  # noqa: E402
from scrub.heads.scores import attention_patterns, prefix_matching_score, previous_token_score  # noqa: E402
from scrub.patching.paths import make_metric, patch_matrix, second_repeat_positions  # noqa: E402


def batch(step: int, n: int = 32, seq: int = 41, vocab: int = 128) -> torch.Tensor:
    gen = torch.Generator().manual_seed(step)
    tokens = torch.randint(1, vocab, (n, seq), generator=gen)  # [n, seq]
    tokens[:, 0] = 0
    for row in range(n):
        length = int(torch.randint(5, 20, (1,), generator=gen))
        start = int(torch.randint(1, seq - 2 * length + 1, (1,), generator=gen))
        tokens[row, start + length : start + 2 * length] = tokens[row, start : start + length]
    return tokens


def main() -> None:
    torch.manual_seed(0)
    cfg = HookedTransformerConfig(n_layers=2, n_heads=4, d_model=64, d_head=16, n_ctx=41, d_vocab=128, act_fn="gelu",
                                  attn_only=True, positional_embedding_type="shortformer", seed=0)
    model = HookedTransformer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(2500):
        loss = model(batch(step), return_type="loss")
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    torch.set_grad_enabled(False)
    ref = repeated_random_tokens(16, 20, 2, seed=1, vocab_size=128)  # [16, 41]
    cor = repeated_random_tokens(16, 20, 2, seed=2, vocab_size=128)
    pattern = attention_patterns(model, ref)  # [batch, layer, head, q, k]
    prev = previous_token_score(pattern)  # [layer, head]
    prefix = prefix_matching_score(pattern, ref, repeat_positions(ref, 20))  # [layer, head]
    print("previous-token score, layer 0:", [round(float(x), 2) for x in prev[0]])
    print("prefix-matching score, layer 1:", [round(float(x), 2) for x in prefix[1]])
    matrix = patch_matrix(model, ref, cor, make_metric("loss", ref, cor, second_repeat_positions(20)))
    print(f"loss at second-repeat positions: clean {matrix.clean:.3f}, corrupted {matrix.corrupted:.3f}")
    for path, effect in matrix.top(8):
        print(f"  {path:<16} {effect:+.3f}")


if __name__ == "__main__":
    main()

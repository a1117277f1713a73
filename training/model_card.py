"""Measure the numbers of the model card in README.md on a checkpoint: held-out loss, RRT loss by repeat,
and the heads that pass the behavioral thresholds.

    python training/model_card.py [--model scrub-attn-2l] [--n 64]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from scrub.data import natural_batch, repeated_random_tokens  # noqa: E402
from scrub.metrics import token_losses  # noqa: E402
from scrub.model import SHIPPED_NAME, load_model  # noqa: E402
from scrub.scores import Thresholds, behavioral_induction_heads, head_scores, previous_token_heads  # noqa: E402


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=SHIPPED_NAME)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model = load_model(args.model)
    text = natural_batch(args.n, model.cfg.n_ctx, seed=args.seed)  # [n, n_ctx]
    val_loss = float(token_losses(model(text), text).mean())
    length = 100
    rrt = repeated_random_tokens(args.n, length, 2, seed=args.seed, vocab_size=model.cfg.d_vocab,
                                 exclude_common=model.cfg.d_vocab // 20)  # [n, 1 + 2*length]
    losses = token_losses(model(rrt), rrt)  # [n, 2*length]
    scores = head_scores(model, n=32, seed=args.seed, exclude_common=model.cfg.d_vocab // 20)
    best = lambda name, layer: max(((float(scores.score(name)[layer, h]), f"{layer}.{h}")  # noqa: E731
                                     for h in range(model.cfg.n_heads)))
    print(json.dumps({
        "model": str(args.model),
        "heldout_loss_nats": val_loss, "heldout_tokens": int(text[:, 1:].numel()),
        "rrt_loss_first_repeat": float(losses[:, 1:length].mean()),
        "rrt_loss_second_repeat": float(losses[:, length:].mean()),
        "best_previous_token_layer0": best("previous_token", 0),
        "best_prefix_matching_layer1": best("prefix_matching", 1),
        "previous_token_heads": [str(h) for h in previous_token_heads(scores, Thresholds())],
        "behavioral_induction_heads": [str(h) for h in behavioral_induction_heads(scores, Thresholds())],
        "thresholds": Thresholds().__dict__,
    }, indent=2))


if __name__ == "__main__":
    main()

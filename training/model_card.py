"""Measure the numbers of a model card in README.md on a checkpoint: held-out loss, RRT loss by repeat, the
best previous-token and prefix-matching head of every layer, the heads that pass the behavioral thresholds,
the in-context-learning score, and (for issue #12) whether a previous-token head sits below an induction head.

    python training/model_card.py [--model scrub-attn-2l|scrub-3l-mlp|DIR] [--n 64]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from scrub.data.batches import natural_batch, repeated_random_tokens  # noqa: E402
from scrub.heads.scores import (  # noqa: E402
    Thresholds,
    behavioral_induction_heads,
    head_scores,
    in_context_learning,
    previous_token_heads,
)
from scrub.metrics import token_losses  # noqa: E402
from scrub.model.loading import ASSETS, SHIPPED_NAME, load_model  # noqa: E402

BASELINE_HELDOUT_LOSS = 3.553  # scrub-attn-2l, this script, seed 0, n 64


def training_recipe(model: str) -> dict:
    """``meta.recipe`` of a scrub checkpoint (shipped name or directory), {} if there is none."""
    config = (ASSETS / model if (ASSETS / model / "config.json").is_file() else Path(model)) / "config.json"
    try:
        return json.loads(config.read_text())["meta"].get("recipe", {})
    except (OSError, KeyError, ValueError):
        return {}


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=SHIPPED_NAME, help="a shipped model name or a checkpoint directory")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model = load_model(args.model)
    layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    text = natural_batch(args.n, model.cfg.n_ctx, seed=args.seed)  # [n, n_ctx]
    val_loss = float(token_losses(model(text), text).mean())
    icl = in_context_learning(model, natural_batch(32, model.cfg.n_ctx, seed=args.seed))  # as `scrub heads` (n 32)
    length = 100
    rrt = repeated_random_tokens(args.n, length, 2, seed=args.seed, vocab_size=model.cfg.d_vocab,
                                 exclude_common=model.cfg.d_vocab // 20)  # [n, 1 + 2*length]
    losses = token_losses(model(rrt), rrt)  # [n, 2*length]
    scores = head_scores(model, n=32, seed=args.seed, exclude_common=model.cfg.d_vocab // 20)
    best = lambda name, layer: max(((round(float(scores.score(name)[layer, h]), 4), f"{layer}.{h}")  # noqa: E731
                                     for h in range(n_heads)))
    thresholds = Thresholds()
    prev_heads, induction = previous_token_heads(scores, thresholds), behavioral_induction_heads(scores, thresholds)
    # issue #12: a previous-token head in a layer below a behavioral induction head
    pairs = [(str(p), str(i)) for i in induction for p in prev_heads if p.layer < i.layer]
    recipe = training_recipe(str(args.model))
    print(json.dumps({
        "model": str(args.model),
        "architecture": {"n_layers": layers, "n_heads": n_heads, "d_model": model.cfg.d_model,
                         "d_mlp": None if model.cfg.attn_only else model.cfg.d_mlp,
                         "act_fn": None if model.cfg.attn_only else model.cfg.act_fn,
                         "positional_embedding_type": model.cfg.positional_embedding_type,
                         "normalization_type": model.cfg.normalization_type},
        "training_rrt_frac": recipe.get("rrt_frac"),
        "heldout_loss_nats": val_loss, "heldout_tokens": int(text[:, 1:].numel()),
        "heldout_loss_at_most_baseline": val_loss <= BASELINE_HELDOUT_LOSS,
        "rrt_loss_first_repeat": float(losses[:, 1:length].mean()),
        "rrt_loss_second_repeat": float(losses[:, length:].mean()),
        "in_context_learning": {"early": icl.early, "late": icl.late, "loss_early": icl.loss_early,
                                "loss_late": icl.loss_late, "score": icl.score},
        "best_previous_token_layer0": best("previous_token", 0),
        "best_prefix_matching_layer1": best("prefix_matching", 1) if layers > 1 else None,
        "best_previous_token_by_layer": [best("previous_token", layer) for layer in range(layers)],
        "best_prefix_matching_by_layer": [best("prefix_matching", layer) for layer in range(layers)],
        "previous_token_heads": {str(h): round(float(scores.previous_token[h.layer, h.head]), 4) for h in prev_heads},
        "behavioral_induction_heads": {
            str(h): {"prefix_matching": round(float(scores.prefix_matching[h.layer, h.head]), 4),
                     "copying": round(float(scores.copying[h.layer, h.head]), 4)} for h in induction},
        "previous_token_below_induction": pairs,
        "thresholds": thresholds.__dict__,
    }, indent=2))


if __name__ == "__main__":
    main()

"""Train the shipped model: attention-only, 2 layers x 8 heads, shortformer positions, on Shakespeare.

Recipe (see the model card in README.md): random 255-token windows of the training split after a BOS
token. From step ``--augment-from`` on, rows are augmented so that in-context copying pays off often
enough for induction heads to form within a CPU budget: ``--repeat-frac`` of rows repeat their opening
20-120 tokens right away, ``--copy-frac`` of the others get a span of 10-60 tokens copied from earlier
in the same row. Everything stays natural text; repeated random tokens (``--rrt-frac``) are off by
default so that RRT evaluations stay out of distribution. AdamW, linear warm-up then cosine decay.
Reproducible from ``--seed``; resumable from ``training/.cache/ckpt.pt`` (flags may change on resume,
and every probe in the log records the augmentation in force).

The shipped model: ``python training/prepare_corpus.py && python training/train_model.py --steps 2500
--copy-frac 0.6 --repeat-frac 0.5 --rrt-frac 0.15 --pos-init sinusoidal --pos-scale 3 --decay matrices
--threads 1`` (see the model card in README.md for what each choice did).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from transformer_lens import HookedTransformer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from scrub.metrics import token_losses  # noqa: E402
from scrub.model import ArchSpec, SHIPPED_DIR, save_checkpoint  # noqa: E402
from training.fast_model import FastAttnOnly, to_hooked  # noqa: E402

CACHE = ROOT / "training" / ".cache"


def make_batch(stream: np.ndarray, gen: np.random.Generator, batch: int, seq: int, bos: int,
               copy_frac: float = 0.0, repeat_frac: float = 0.0, rrt_frac: float = 0.0, vocab: int = 2048) -> torch.Tensor:
    """BOS + a random window of the corpus. Rows are augmented in place (integer row indices give numpy
    views; a boolean-mask index would give a copy): ``repeat_frac`` of rows repeat their opening 20-120
    tokens right away; ``rrt_frac`` of the others become a random token string repeated; ``copy_frac``
    of the rest get a span of 10-60 tokens copied from earlier in the same row."""
    starts = gen.integers(0, len(stream) - seq, size=batch)
    rows = np.stack([stream[s : s + seq - 1] for s in starts]).astype(np.int64)  # [batch, seq-1]
    free = np.ones(batch, dtype=bool)
    if repeat_frac > 0:
        for i in np.flatnonzero(gen.random(batch) < repeat_frac):
            length = min(int(gen.integers(20, 121)), (seq - 1) // 2)
            rows[i, length : 2 * length] = rows[i, :length]
            free[i] = False
    if rrt_frac > 0:
        for i in np.flatnonzero((gen.random(batch) < rrt_frac) & free):
            pattern = gen.integers(1, vocab, size=int(gen.integers(20, 101)))  # uniform, never BOS (id 0)
            rows[i] = np.resize(pattern, seq - 1)
            free[i] = False
    if copy_frac > 0:
        for i in np.flatnonzero((gen.random(batch) < copy_frac) & free):
            length = int(gen.integers(10, 61))
            src = int(gen.integers(0, seq - 1 - 2 * length))
            dst = int(gen.integers(src + length, seq - length))
            rows[i, dst : dst + length] = rows[i, src : src + length]
    bos_col = np.full((batch, 1), bos, dtype=np.int64)
    return torch.from_numpy(np.concatenate([bos_col, rows], axis=1))  # [batch, seq]


def param_groups(model: torch.nn.Module, decay: str, weight_decay: float) -> list[dict]:
    """AdamW groups: ``all`` decays every parameter; ``matrices`` spares embeddings, positions, LayerNorm
    and biases, so weight decay does not shrink the positional signal that previous-token heads read."""
    if decay == "all":
        return [{"params": list(model.parameters()), "weight_decay": weight_decay}]
    spared = {id(model.embed.weight), id(model.pos.weight)}
    matrices = [p for p in model.parameters() if p.dim() > 1 and id(p) not in spared]
    rest = [p for p in model.parameters() if p.dim() <= 1 or id(p) in spared]
    return [{"params": matrices, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


@torch.no_grad()
def monitor(model: HookedTransformer, val: np.ndarray, bos: int, seed: int) -> dict:
    """Quick training-time probes: val loss, best layer-0 previous-token and layer-1 prefix-matching score."""
    gen = np.random.default_rng(seed)
    tokens = make_batch(val, gen, 16, model.cfg.n_ctx, bos, 0.0)  # [16, seq]
    loss, cache = model.run_with_cache(tokens, return_type="loss", names_filter=lambda n: n.endswith("pattern"))
    prev = cache["pattern", 0].diagonal(offset=-1, dim1=-2, dim2=-1)[..., 1:].mean((0, 2))  # [head]
    n = 50
    rand = torch.from_numpy(gen.integers(100, model.cfg.d_vocab - 100, size=(16, n)))  # [16, n]
    rrt = torch.cat([torch.full((16, 1), bos), rand.repeat(1, 4)], dim=1)  # [16, 1+4n]
    logits, cache = model.run_with_cache(rrt, names_filter=lambda n: n.endswith("pattern"))
    pat = cache["pattern", 1]  # [batch, head, q, k]
    q = torch.arange(1 + n, 1 + 4 * n)
    prefix = pat[:, :, q, q - n + 1].mean((0, 2))  # [head]
    losses = token_losses(logits, rrt)  # [16, 4n]
    return {
        "val_loss": float(loss),
        "prev_token_l0": float(prev.max()),
        "prefix_match_l1": float(prefix.max()),
        "rrt_loss_rep1": float(losses[:, 1:n].mean()),
        "rrt_loss_rep2": float(losses[:, n : 2 * n].mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--copy-frac", type=float, default=0.5)
    parser.add_argument("--repeat-frac", type=float, default=0.5)
    parser.add_argument("--rrt-frac", type=float, default=0.0, help="share of repeated-random-token rows (off: "
                        "random strings in training would make the RRT evaluations in-distribution)")
    parser.add_argument("--augment-from", type=int, default=0, help="first step with augmented rows")
    parser.add_argument("--rrt-from", type=int, default=0, help="first step with repeated-random-token rows")
    parser.add_argument("--stop-at", type=int, default=None, help="stop (and save) at this step; the lr schedule "
                        "still follows --steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--out", type=Path, default=SHIPPED_DIR)
    parser.add_argument("--no-resume", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pos-init", choices=("normal", "sinusoidal"), default="normal")
    parser.add_argument("--pos-scale", type=float, default=1.0, help="amplitude of the sinusoidal start")
    parser.add_argument("--decay", choices=("all", "matrices"), default="all",
                        help="weight decay on every parameter, or only on the attention/unembed matrices "
                        "(not on embeddings, positions, LayerNorm or biases, as in GPT-2 style recipes)")
    parser.add_argument("--cache", type=Path, default=CACHE, help="where the resumable checkpoint lives")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(ROOT / "scrub" / "assets" / "tokenizer.json"))
    bos = tok.token_to_id("<|bos|>")
    train_path = CACHE / "train_tokens.npy"
    if not train_path.exists():
        sys.exit(f"{train_path} is missing: run `python training/prepare_corpus.py` first")
    train = np.load(train_path)
    val = np.load(ROOT / "scrub" / "assets" / "val_tokens.npy")

    torch.manual_seed(args.seed)
    arch = ArchSpec(seed=args.seed)
    hooked = HookedTransformer(arch.to_config())
    model = FastAttnOnly(arch.n_layers, arch.d_model, arch.n_heads, arch.d_head, arch.n_ctx, arch.d_vocab)
    if args.pos_init == "sinusoidal":
        model.sinusoidal_positions(args.pos_scale)
    opt = torch.optim.AdamW(param_groups(model, args.decay, 0.05), lr=args.lr, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / args.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps)))
    )
    gen = np.random.default_rng(args.seed)
    step, log = 0, []
    args.cache.mkdir(parents=True, exist_ok=True)
    ckpt = args.cache / "ckpt.pt"
    if ckpt.exists() and not args.no_resume:
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"]); opt.load_state_dict(state["opt"]); sched.load_state_dict(state["sched"])
        gen.bit_generator.state = state["gen"]; step, log = state["step"], state["log"]
        print(f"resumed at step {step}")
    t0 = time.time()
    stop = min(args.stop_at or args.steps, args.steps)
    bar = tqdm(range(step, stop), initial=step, total=stop, desc="train", mininterval=5)
    for step in bar:
        on = step >= args.augment_from
        copy_frac, repeat_frac = (args.copy_frac, args.repeat_frac) if on else (0.0, 0.0)
        rrt_frac = args.rrt_frac if on and step >= args.rrt_from else 0.0
        tokens = make_batch(train, gen, args.batch, arch.n_ctx, bos, copy_frac, repeat_frac, rrt_frac,
                            arch.d_vocab)  # [batch, seq]
        loss = model.loss(tokens)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(); sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if (step + 1) % args.eval_every == 0 or step + 1 == stop:
            probe = monitor(to_hooked(model, hooked), val, bos, seed=1234) | {
                "step": step + 1, "train_loss": float(loss), "tokens": (step + 1) * args.batch * arch.n_ctx,
                "repeat_frac": repeat_frac, "copy_frac": copy_frac, "rrt_frac": rrt_frac,
                                                           "minutes": (time.time() - t0) / 60}
            log.append(probe)
            tqdm.write(json.dumps(probe))
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                        "gen": gen.bit_generator.state, "step": step + 1, "log": log}, ckpt)
    hooked = to_hooked(model, hooked).eval()
    check = make_batch(val, np.random.default_rng(0), 4, arch.n_ctx, bos, 0.5)  # [4, seq]
    with torch.no_grad():
        gap = (model(check) - hooked(check)).abs().max().item()
    if gap > 1e-3:
        sys.exit(f"the HookedTransformer copy disagrees with the trained model (max logit gap {gap:.2e})")
    meta = {"recipe": vars(args) | {"out": str(args.out), "cache": str(args.cache)}, "final": log[-1] if log else {}, "log": log,
            "fast_vs_hooked_max_logit_gap": gap}
    save_checkpoint(hooked, args.out, meta=meta)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()

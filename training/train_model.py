"""Train the shipped models on Shakespeare: 8 heads of 32 dims per layer, d_model 256, shortformer positions,
LayerNorm; attention-only with 2 layers by default (``scrub-attn-2l``), or ``--n-layers``/``--d-mlp`` for
a GELU MLP after each attention layer (``scrub-3l-mlp``).

Recipe (see the model card in README.md): random 255-token windows of the training split after a BOS
token. From step ``--augment-from`` on, rows are augmented so that in-context copying pays off often
enough for induction heads to form within a CPU budget: ``--repeat-frac`` of rows repeat their opening
20-120 tokens right away, ``--copy-frac`` of the others get a span of 10-60 tokens copied from earlier
in the same row. Everything stays natural text; repeated random tokens (``--rrt-frac``) are off by
default so that RRT evaluations stay out of distribution. AdamW, linear warm-up then cosine decay.
Reproducible from ``--seed``; resumable from ``<--cache>/ckpt.pt`` (default ``training/.cache``; training
flags may change on resume, and every probe in the log records the augmentation in force; the architecture
may not). Every ``--eval-every`` steps the probes (held-out loss, best previous-token score per layer,
RRT prefix matching per layer, RRT loss by repeat, copying of the best induction candidate) go to stdout and
to ``<--cache>/probes.jsonl``. The training tokens are read from ``<--cache>/train_tokens.npy`` if present,
else from ``training/.cache/train_tokens.npy`` (``prepare_corpus.py`` writes them, deterministically).

The shipped model: ``python training/prepare_corpus.py && python training/train_model.py --steps 2500
--copy-frac 0.6 --repeat-frac 0.5 --rrt-frac 0.15 --pos-init sinusoidal --pos-scale 3 --decay matrices
--threads 1`` (see the model card in README.md for what each choice did).

``scrub-3l-mlp`` (issue #12): the same positions (shortformer, sinusoidal start of amplitude 3), corpus,
optimiser and augmentation as the shipped model, but 3 layers with d_mlp 1024 (GELU) and **no random-token
rows** (``--rrt-frac 0``), so that repeated random tokens stay out of distribution. Planned for one core in
about two hours: 2.35 s/step measured at batch 32 x 256 on one thread (the other core busy), so 2,800 steps
(22.9M tokens, about the 2-layer run's 20.5M), with the resumable state outside the work tree::

    python training/prepare_corpus.py --cache /root/scrub-runs/corpus   # deterministic: same shipped assets
    mkdir -p /root/scrub-runs/scrub-3l-mlp && cp /root/scrub-runs/corpus/train_tokens.npy /root/scrub-runs/scrub-3l-mlp/
    python -u training/train_model.py --n-layers 3 --d-mlp 1024 --steps 2800 --batch 32 --copy-frac 0.6 \
        --repeat-frac 0.5 --rrt-frac 0 --pos-init sinusoidal --pos-scale 3 --decay matrices --threads 1 \
        --cache /root/scrub-runs/scrub-3l-mlp --snapshots --out scrub/assets/scrub-3l-mlp
    python training/model_card.py --model scrub-3l-mlp

Rerunning the same command resumes from the last probe (every 250 steps).
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
from transformer_lens import HookedTransformer, HookedTransformerConfig

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from scrub.data.batches import repeated_random_tokens  # noqa: E402
from scrub.heads.scores import copying_scores  # noqa: E402
from scrub.metrics import token_losses  # noqa: E402
from scrub.model.loading import SHIPPED_DIR, ArchSpec, save_checkpoint  # noqa: E402
from training.fast_model import FastTransformer, to_hooked  # noqa: E402

CACHE = ROOT / "training" / ".cache"


def make_batch(stream: np.ndarray, gen: np.random.Generator, batch: int, seq: int, bos: int,
               copy_frac: float = 0.0, repeat_frac: float = 0.0, rrt_frac: float = 0.0,
               vocab: int = 2048) -> torch.Tensor:
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


def hooked_config(arch: ArchSpec, d_mlp: int) -> HookedTransformerConfig:
    """The HookedTransformer the twin is copied into: ``arch`` (attention-only) when ``d_mlp`` is 0, else
    the same shape with a GELU MLP (TransformerLens' exact-erf ``"gelu"``) after each attention layer."""
    if not d_mlp:
        return arch.to_config()
    return HookedTransformerConfig(
        n_layers=arch.n_layers, n_heads=arch.n_heads, d_model=arch.d_model, d_head=arch.d_head, n_ctx=arch.n_ctx,
        d_vocab=arch.d_vocab, d_mlp=d_mlp, act_fn="gelu", attn_only=False,
        positional_embedding_type=arch.positional_embedding_type, normalization_type=arch.normalization_type,
        seed=arch.seed, default_prepend_bos=False,
    )


@torch.no_grad()
def monitor(model: HookedTransformer, val: np.ndarray, bos: int, seed: int) -> dict:
    """Quick training-time probes on 16 held-out windows and 16 RRT sequences (BOS + 50 random tokens x 4):
    val loss, best previous-token score per layer, best prefix-matching score per layer, RRT loss by repeat,
    and the copying score of the best prefix-matching head above layer 0. ``prev_token_l0`` and
    ``prefix_match_l1`` are the keys of the 2-layer recipe's log."""
    gen = np.random.default_rng(seed)
    tokens = make_batch(val, gen, 16, model.cfg.n_ctx, bos, 0.0)  # [16, seq]
    loss, cache = model.run_with_cache(tokens, return_type="loss", names_filter=lambda n: n.endswith("pattern"))
    layers = range(model.cfg.n_layers)
    prev = torch.stack([cache["pattern", layer].diagonal(offset=-1, dim1=-2, dim2=-1)[..., 1:].mean((0, 2))
                        for layer in layers])  # [layer, head]
    n = 50
    rand = torch.from_numpy(gen.integers(100, model.cfg.d_vocab - 100, size=(16, n)))  # [16, n]
    rrt = torch.cat([torch.full((16, 1), bos), rand.repeat(1, 4)], dim=1)  # [16, 1+4n]
    logits, cache = model.run_with_cache(rrt, names_filter=lambda n: n.endswith("pattern"))
    q = torch.arange(1 + n, 1 + 4 * n)
    prefix = torch.stack([cache["pattern", layer][:, :, q, q - n + 1].mean((0, 2))
                          for layer in layers])  # [layer, head]
    losses = token_losses(logits, rrt)  # [16, 4n]
    upper = prefix[1:]  # [layer-1, head]: induction needs an earlier layer to read from
    flat = int(upper.argmax())
    best_layer, best_head = 1 + flat // model.cfg.n_heads, flat % model.cfg.n_heads
    copy_tokens = repeated_random_tokens(8, 25, 1, seed=seed, vocab_size=model.cfg.d_vocab,
                                         exclude_common=model.cfg.d_vocab // 20)  # [8, 26]
    copying = copying_scores(model, copy_tokens)  # [layer, head]
    return {
        "val_loss": float(loss),
        "prev_token_l0": float(prev[0].max()),
        "prefix_match_l1": float(prefix[1].max()),
        "prev_token_by_layer": [round(float(p.max()), 4) for p in prev],
        "prev_token_best_head": [f"{layer}.{int(prev[layer].argmax())}" for layer in layers],
        "prefix_match_by_layer": [round(float(p.max()), 4) for p in prefix],
        "induction_candidate": f"{best_layer}.{best_head}",
        "induction_candidate_prefix": float(prefix[best_layer, best_head]),
        "induction_candidate_copying": float(copying[best_layer, best_head]),
        "rrt_loss_rep1": float(losses[:, 1:n].mean()),
        "rrt_loss_rep2": float(losses[:, n : 2 * n].mean()),
    }


def main() -> None:
    """Parse the options, train, evaluate and save: one script read top to bottom (longer than most functions)."""
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
    parser.add_argument("--out", type=Path, default=SHIPPED_DIR, help="checkpoint folder written at the end "
                        "(scrub/assets/<name>/ makes <name> loadable with scrub.load_model)")
    parser.add_argument("--n-layers", type=int, default=2)
    parser.add_argument("--d-mlp", type=int, default=0, help="MLP width after each attention layer (0: "
                        "attention-only, the shipped scrub-attn-2l)")
    parser.add_argument("--snapshots", action="store_true", help="also keep the weights at every probe in "
                        "<--cache>/snapshots/step<N>.pt (to go back to an earlier step)")
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
    train_path = args.cache / "train_tokens.npy"
    if not train_path.exists():
        train_path = CACHE / "train_tokens.npy"
    if not train_path.exists():
        sys.exit(f"{train_path} is missing: run `python training/prepare_corpus.py` first")
    train = np.load(train_path)
    val = np.load(ROOT / "scrub" / "assets" / "val_tokens.npy")

    torch.manual_seed(args.seed)
    arch = ArchSpec(n_layers=args.n_layers, seed=args.seed)
    hooked = HookedTransformer(hooked_config(arch, args.d_mlp))  # reseeds torch with args.seed
    model = FastTransformer(arch.n_layers, arch.d_model, arch.n_heads, arch.d_head, arch.n_ctx, arch.d_vocab,
                            d_mlp=args.d_mlp)
    shape = {"n_layers": args.n_layers, "d_mlp": args.d_mlp}
    if args.pos_init == "sinusoidal":
        model.sinusoidal_positions(args.pos_scale)
    opt = torch.optim.AdamW(param_groups(model, args.decay, 0.05), lr=args.lr, betas=(0.9, 0.98))

    def lr_factor(s: int) -> float:  # linear warm-up, then cosine decay to 0.1
        cosine = 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps))
        return min(1.0, (s + 1) / args.warmup) * (0.1 + 0.9 * cosine)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    gen = np.random.default_rng(args.seed)
    step, log, minutes_before = 0, [], 0.0
    args.cache.mkdir(parents=True, exist_ok=True)
    ckpt = args.cache / "ckpt.pt"
    if ckpt.exists() and not args.no_resume:
        state = torch.load(ckpt, weights_only=False)
        saved_shape = state.get("shape", {"n_layers": 2, "d_mlp": 0})
        if saved_shape != shape:
            sys.exit(f"{ckpt} holds a model with {saved_shape}, not {shape}: pass the same --n-layers/--d-mlp, "
                     f"another --cache, or --no-resume")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        gen.bit_generator.state = state["gen"]
        step, log = state["step"], state["log"]
        minutes_before = state.get("minutes", log[-1]["minutes"] if log else 0.0)
        print(f"resumed at step {step}", flush=True)
    print(f"training {shape} from step {step} to {min(args.stop_at or args.steps, args.steps)} on {train_path} "
          f"({len(train):,} tokens), {args.threads} thread(s)", flush=True)
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
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if (step + 1) % args.eval_every == 0 or step + 1 == stop:
            minutes = minutes_before + (time.time() - t0) / 60
            probe = monitor(to_hooked(model, hooked), val, bos, seed=1234) | {
                "step": step + 1, "train_loss": float(loss), "tokens": (step + 1) * args.batch * arch.n_ctx,
                "repeat_frac": repeat_frac, "copy_frac": copy_frac, "rrt_frac": rrt_frac,
                                                           "minutes": minutes}
            log.append(probe)
            tqdm.write(json.dumps(probe))
            sys.stdout.flush()
            with open(args.cache / "probes.jsonl", "a") as f:
                f.write(json.dumps(probe) + "\n")
            tmp = args.cache / "ckpt.pt.tmp"  # write then rename: an interrupted save keeps the previous state
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                        "gen": gen.bit_generator.state, "step": step + 1, "log": log, "shape": shape,
                        "minutes": minutes}, tmp)
            tmp.replace(ckpt)
            if args.snapshots:
                (args.cache / "snapshots").mkdir(exist_ok=True)
                torch.save(model.state_dict(), args.cache / "snapshots" / f"step{step + 1}.pt")
    hooked = to_hooked(model, hooked).eval()
    check = make_batch(val, np.random.default_rng(0), 4, arch.n_ctx, bos, 0.5)  # [4, seq]
    with torch.no_grad():
        gap = (model(check) - hooked(check)).abs().max().item()
    if gap > 1e-3:
        sys.exit(f"the HookedTransformer copy disagrees with the trained model (max logit gap {gap:.2e})")
    meta = {"recipe": vars(args) | {"out": str(args.out), "cache": str(args.cache)}, "final": log[-1] if log else {},
            "log": log, "fast_vs_hooked_max_logit_gap": gap}
    save_checkpoint(hooked, args.out, meta=meta, dtype=torch.float16)  # shipped in float16 (half the size)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()

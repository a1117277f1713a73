"""Path patching at scale: the vectorised matrix (``scrub.patching.paths.patch_matrix``) against one plain forward,
one literal TransformerLens hooked forward per path, and the tree engine (``patch_effects``, one tree per path).

Two models: a random-init GPT-2-small-shaped model (12 layers x 12 heads, d_model 768, d_mlp 3072, LN, GELU,
d_vocab 2048, standard positions; batch 8 x 64 random tokens, corrupted 8 x 64 fresh random tokens, metric
loss at positions 1..62) and the shipped 2-layer model (16 repeated-random-token sequences of 1 + 2x40,
loss at the second-repeat positions; a random-init model of its shape if it is not trained). Both matrices
are the head -> head:q/k/v + head -> logits set. The hooked loop and the tree engine are timed on random
samples of those paths and extrapolated to all of them (the script says so); the hooked caches of both runs
are computed once and their time is added to the extrapolation. Agreement of the sampled paths with the
matrix is printed. Not part of the test run. Usage:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/patch_scale.py                # both models (~6 min)
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/patch_scale.py --skip gpt2    # shipped model only (~1 min)
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/patch_scale.py --mlps         # and the matrix with MLPs (+6 min)
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from transformer_lens import HookedTransformer, HookedTransformerConfig  # noqa: E402

from scrub.claims.sites import Head, Mlp, hook_name  # noqa: E402
from scrub.data.batches import repeated_random_tokens  # noqa: E402
from scrub.model.loading import SHIPPED_DIR, ArchSpec, load_model  # noqa: E402
from scrub.patching.paths import PatchPath, make_metric, patch_effects, patch_matrix, second_repeat_positions  # noqa: E402
from scrub.testing.oracles import hooked_patch_logits, split_qkv_copy  # noqa: E402


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(forward, matrix, repeats: int, forwards_per_round: int = 3) -> tuple[list[float], list[float]]:
    """Wall seconds of ``forward`` and ``matrix`` measured alternately (after a warm-up forward, and a warm-up
    matrix when repeating), so that load from other processes hits both alike; returns all times of each."""
    forward()
    if repeats > 1:
        matrix()
    f_times, m_times = [], []
    for _ in range(repeats):
        f_times += [seconds(forward) for _ in range(forwards_per_round)]
        m_times.append(seconds(matrix))
    return f_times, m_times


def median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def gpt2_small_shaped(seed: int = 0) -> HookedTransformer:
    cfg = HookedTransformerConfig(n_layers=12, n_heads=12, d_model=768, d_head=64, d_mlp=3072, d_vocab=2048,
                                  n_ctx=128, act_fn="gelu", normalization_type="LN",
                                  positional_embedding_type="standard", seed=seed)
    return HookedTransformer(cfg).eval()


def gpt2_batch(model: HookedTransformer):
    gen = torch.Generator().manual_seed(1)
    ref = torch.randint(0, model.cfg.d_vocab, (8, 64), generator=gen)  # [batch, seq]
    cor = torch.randint(0, model.cfg.d_vocab, (8, 64), generator=gen)  # [batch, seq]
    return ref, cor, make_metric("loss", ref, cor, torch.arange(1, 63))


def shipped():
    if SHIPPED_DIR.exists():
        model, name = load_model(), "shipped scrub-attn-2l"
    else:
        cfg = ArchSpec().to_config()
        model, name = HookedTransformer(cfg).eval(), "random-init model of the shipped shape"
    exclude = model.cfg.d_vocab // 20
    ref = repeated_random_tokens(16, 40, 2, seed=0, vocab_size=model.cfg.d_vocab, exclude_common=exclude)
    cor = repeated_random_tokens(16, 40, 2, seed=1, vocab_size=model.cfg.d_vocab, exclude_common=exclude)
    return model, name, ref, cor, make_metric("loss", ref, cor, second_repeat_positions(40))


def matrix_paths(matrix) -> dict[PatchPath, float]:
    """Every finite cell of a heads-only matrix, and every head -> logits path, with its effect."""
    out = {}
    for i, s in enumerate(matrix.senders):
        for j, r in enumerate(matrix.receivers):
            for k, c in enumerate(matrix.channels):
                if not torch.isnan(matrix.effects[i, j, k]):
                    out[PatchPath(s, ((r, c),))] = float(matrix.effects[i, j, k])
        out[PatchPath(s)] = float(matrix.to_logits[i])
    return out


@torch.no_grad()
def measure(name: str, model: HookedTransformer, ref, cor, metric, *, forward_repeats: int, matrix_repeats: int,
            hooked_sample: int, engine_sample: int, mlps: bool) -> dict:
    print(f"[{name}] forward and matrix, interleaved ...", file=sys.stderr, flush=True)
    r: dict = {"name": name, "batch": tuple(ref.shape), "repeats": matrix_repeats}
    box = {}
    f_times, m_times = interleaved(lambda: model(ref), lambda: box.update(m=patch_matrix(model, ref, cor, metric)),
                                   matrix_repeats, forward_repeats)
    r["forward"], r["forward_best"] = median(f_times), min(f_times)
    r["matrix"], r["matrix_best"] = median(m_times), min(m_times)
    effects = matrix_paths(box["m"])
    paths = list(effects)
    r["paths"] = len(paths)
    r["head_head"] = sum(1 for p in paths if p.via)
    if mlps:
        print(f"[{name}] matrix with MLPs ...", file=sys.stderr, flush=True)
        r["matrix_mlps"] = seconds(lambda: box.update(mm=patch_matrix(model, ref, cor, metric, include_mlps=True)))
        mm = box["mm"]
        heads = [j for j, x in enumerate(mm.receivers) if isinstance(x, Head)]
        mlp_cols = [j for j, x in enumerate(mm.receivers) if isinstance(x, Mlp)]
        r["paths_mlps"] = int((~torch.isnan(mm.effects[:, heads])).sum())
        r["paths_mlps"] += int((~torch.isnan(mm.effects[:, mlp_cols, 0])).sum()) + len(mm.senders)

    print(f"[{name}] hooked sample ...", file=sys.stderr, flush=True)
    hooked = split_qkv_copy(model)
    names = [hook_name(Head(layer, 0)) for layer in range(model.cfg.n_layers)]
    names += [] if model.cfg.attn_only else [hook_name(Mlp(layer)) for layer in range(model.cfg.n_layers)]
    hooked_patch_logits(hooked, ref, cor, paths[0])  # warm-up
    start = time.perf_counter()
    _, clean_cache = hooked.run_with_cache(ref, names_filter=lambda n: n in names)
    _, cor_cache = hooked.run_with_cache(cor, names_filter=lambda n: n in names)
    base = float(metric(hooked(ref)[:, metric.positions]))
    r["hooked_setup"] = time.perf_counter() - start
    sample = random.Random(0).sample(paths, min(hooked_sample, len(paths)))
    diffs = []
    start = time.perf_counter()
    for p in sample:
        logits = hooked_patch_logits(hooked, ref, cor, p, clean_cache, cor_cache)
        diffs.append(abs(float(metric(logits[:, metric.positions])) - base - effects[p]))
    r["hooked_per_path"] = (time.perf_counter() - start) / len(sample)
    r["hooked_sample"] = len(sample)
    r["hooked_total"] = r["hooked_setup"] + r["hooked_per_path"] * len(paths)
    r["max_diff"] = max(diffs)
    r["max_effect"] = max(abs(v) for v in effects.values())
    del hooked, clean_cache, cor_cache

    if engine_sample:
        print(f"[{name}] tree engine sample ...", file=sys.stderr, flush=True)
        sample = random.Random(1).sample(paths, min(engine_sample, len(paths)))
        patch_effects(model, ref, cor, [[sample[0]]], metric, positions=metric.positions)  # warm-up
        start = time.perf_counter()
        values = patch_effects(model, ref, cor, [[p] for p in sample] + [[]], metric, positions=metric.positions)
        r["engine_per_path"] = (time.perf_counter() - start) / len(sample)
        r["engine_sample"] = len(sample)
        r["engine_diff"] = max(abs(float(v - values[-1]) - effects[p])
                               for p, v in zip(sample, values[:-1], strict=True))
    return r


def report(rows: list[dict]) -> None:
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} thread(s), OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}\n")
    print("| model | measurement | seconds | ratio |")
    print("|---|---|---:|---|")
    for r in rows:
        m = r["name"]
        batch = "x".join(str(x) for x in r["batch"])
        print(f"| {m} | plain forward `model(tokens)`, {batch} (median; best) | {r['forward']:.4f}; "
              f"{r['forward_best']:.4f} | |")
        print(f"| {m} | **matrix**: {r['head_head']} head -> head:q/k/v + {r['paths'] - r['head_head']} head -> logits "
              f"paths = {r['paths']} (median; best of {r['repeats']}) | {r['matrix']:.3f}; {r['matrix_best']:.3f} | "
              f"**{r['matrix'] / r['forward']:.1f}x** a forward "
              f"(best/best {r['matrix_best'] / r['forward_best']:.1f}x); "
              f"{1e3 * r['matrix'] / r['paths']:.2f} ms/path |")
        if "matrix_mlps" in r:
            print(f"| {m} | matrix with MLPs as senders and receivers ({r['paths_mlps']} paths) | "
                  f"{r['matrix_mlps']:.3f} | "
                  f"{r['matrix_mlps'] / r['forward']:.1f}x a forward |")
        print(f"| {m} | hooked TransformerLens, one forward per path: {r['hooked_per_path']:.4f} s/path on a random "
              f"sample of {r['hooked_sample']} paths, x {r['paths']} paths + both caches ({r['hooked_setup']:.3f} s) "
              f"= **extrapolated** | {r['hooked_total']:.1f} | "
              f"matrix **{r['hooked_total'] / r['matrix']:.0f}x** faster |")
        if "engine_per_path" in r:
            total = r["engine_per_path"] * r["paths"]
            print(f"| {m} | tree engine (`patch_effects`, one tree per path): {1e3 * r['engine_per_path']:.2f} ms/path "
                  f"on a random sample of {r['engine_sample']} paths, **extrapolated** | {total:.2f} | "
                  f"{total / r['forward']:.1f}x a forward; matrix {total / r['matrix']:.1f}x faster |")
    print()
    for r in rows:
        print(f"{r['name']}: max |matrix - hooked| = {r['max_diff']:.1e} over the hooked sample (largest |effect| "
              f"{r['max_effect']:.2e}); max |matrix - tree engine| = {r.get('engine_diff', float('nan')):.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skip", default="", help="comma-separated: gpt2, shipped")
    parser.add_argument("--hooked-sample", type=int, default=20, help="hooked paths timed per model (default 20)")
    parser.add_argument("--engine-sample", type=int, default=64, help="tree-engine paths timed per model (0: skip)")
    parser.add_argument("--mlps", action="store_true", help="also time the matrix with MLPs (GPT-2-shaped model)")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    rows = []
    if "shipped" not in skip:
        model, name, ref, cor, metric = shipped()
        rows.append(measure(name, model, ref, cor, metric, forward_repeats=3, matrix_repeats=5,
                            hooked_sample=max(args.hooked_sample, 40), engine_sample=args.engine_sample, mlps=False))
    if "gpt2" not in skip:
        model = gpt2_small_shaped()
        ref, cor, metric = gpt2_batch(model)
        rows.append(measure("GPT-2-small-shaped, random init", model, ref, cor, metric, forward_repeats=3,
                            matrix_repeats=1, hooked_sample=args.hooked_sample, engine_sample=args.engine_sample,
                            mlps=args.mlps))
    report(rows)


if __name__ == "__main__":
    main()

"""The vectorised path-patching matrix (scrub/patching/matrix.py) equals the tree engine (``patch_effects``) and
literal TransformerLens hooks (``hooked_patch_logits``) path by path: heads only and with MLPs, every channel,
both position kinds, with and without a final LayerNorm; and on the shipped model in float32."""

from __future__ import annotations

import random

import pytest
import torch

from scrub.claims.sites import HEAD_CHANNELS, Channel, Head, Mlp, SiteError
from scrub.claims.structure import Structure
from scrub.patching.paths import (
    PatchPath,
    make_metric,
    pair_run,
    patch_effects,
    patch_matrix,
    patched_logits,
    second_repeat_positions,
)
from scrub.testing.oracles import hooked_patch_logits, split_qkv_copy
from tests.helpers import tiny_model


def batches(seed: int = 0, n: int = 4, seq: int = 10, vocab: int = 20):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n, seq), generator=gen), torch.randint(0, vocab, (n, seq), generator=gen)


def cells(matrix):
    """(path, effect) for every finite cell of the matrix (an MLP receiver once) and every sender -> logits."""
    out = []
    for i, s in enumerate(matrix.senders):
        for j, r in enumerate(matrix.receivers):
            for k, c in enumerate(matrix.channels):
                if isinstance(r, Mlp) and k > 0:
                    continue
                if not torch.isnan(matrix.effects[i, j, k]):
                    channel = Channel.IN if isinstance(r, Mlp) else c
                    out.append((PatchPath(s, ((r, channel),)), float(matrix.effects[i, j, k])))
        out.append((PatchPath(s), float(matrix.to_logits[i])))
    return out


def engine_effects(model, ref, cor, paths, metric) -> torch.Tensor:
    """The tree engine's effect of each path (``patched_logits``, in the model's dtype; ``patch_effects``
    returns float32), [paths] float64, and the clean metric."""
    clean = pair_run(model, ref, cor)
    value = lambda ps: float(metric(patched_logits(model, ref, cor, ps, clean=clean)[:, metric.positions]))  # noqa: E731
    base = value([])
    return torch.tensor([value([p]) - base for p in paths], dtype=torch.float64), base


def check_nan_pattern(model, matrix):
    structure = Structure.of(model)
    for i, s in enumerate(matrix.senders):
        for j, r in enumerate(matrix.receivers):
            for k, c in enumerate(matrix.channels):
                fed = structure.feeds(s, r, c if isinstance(r, Head) else None)
                assert bool(torch.isnan(matrix.effects[i, j, k])) != fed, (s, r, c)


EARLY = (1, 3, 4)  # scored positions well before the end of the sequence, not contiguous
CASES = [  # pos, attn_only, norm, metric, positions
    ("shortformer", True, "LN", "loss", range(2, 9)),
    ("standard", True, "LNPre", "logit_diff", range(2, 9)),
    ("standard", False, "LN", "loss", range(2, 9)),
    ("shortformer", False, "LN", "logit_diff", EARLY),
    ("standard", False, None, "loss", EARLY),  # no final LayerNorm: the plain unembedding
]


@pytest.mark.parametrize("pos,attn_only,norm,kind,positions", CASES)
def test_matrix_equals_tree_engine(pos, attn_only, norm, kind, positions):
    model = tiny_model(n_layers=3, n_heads=3, attn_only=attn_only, pos=pos, norm=norm, dtype=torch.float64, seed=3)
    ref, cor = batches(1)
    metric = make_metric(kind, ref, cor, torch.tensor(positions))
    matrix = patch_matrix(model, ref, cor, metric, include_mlps=not attn_only, progress=False)
    assert any(isinstance(r, Mlp) for r in matrix.receivers) == (not attn_only)
    check_nan_pattern(model, matrix)
    paths = cells(matrix)
    engine, base = engine_effects(model, ref, cor, [p for p, _ in paths], metric)
    torch.testing.assert_close(torch.tensor([v for _, v in paths], dtype=torch.float64), engine, atol=1e-9, rtol=0)
    assert matrix.clean == pytest.approx(base, abs=1e-9)
    # and the batched tree engine (it rounds its values to float32)
    batched = patch_effects(model, ref, cor, [[p] for p, _ in paths[:20]], metric, positions=metric.positions)
    torch.testing.assert_close(batched.double(), engine[:20] + base, atol=1e-6, rtol=1e-6)


ARCHS = {  # the other architectures scrub supports (tests/test_depth.py): the matrix asks compute and Structure
    "rotary-RMS-GQA-gated": dict(pos="rotary", norm="RMS", n_kv_heads=1, gated=True, act_fn="silu"),
    "rotary-partial-LNPre-parallel": dict(pos="rotary", rotary_dim=2, norm="LNPre", parallel=True),
    "standard-none-parallel": dict(pos="standard", norm=None, parallel=True),
}


@pytest.mark.parametrize("arch", ARCHS.values(), ids=ARCHS.keys())
def test_matrix_equals_tree_engine_on_other_architectures(arch):
    model = tiny_model(n_layers=3, n_heads=2, attn_only=False, dtype=torch.float64, seed=4, **arch)
    ref, cor = batches(5)
    metric = make_metric("loss", ref, cor, torch.arange(1, 9))
    matrix = patch_matrix(model, ref, cor, metric, include_mlps=True, progress=False)
    check_nan_pattern(model, matrix)
    paths = cells(matrix)
    engine, _ = engine_effects(model, ref, cor, [p for p, _ in paths], metric)
    torch.testing.assert_close(torch.tensor([v for _, v in paths], dtype=torch.float64), engine, atol=1e-9, rtol=0)
    if arch.get("parallel"):  # a parallel MLP does not read its own layer's heads
        assert torch.isnan(matrix.effects[matrix.senders.index(Head(1, 0)), matrix.receivers.index(Mlp(1))]).all()


@pytest.mark.parametrize("pos,attn_only", [("shortformer", True), ("standard", False), ("shortformer", False)])
@pytest.mark.parametrize("channel", HEAD_CHANNELS)
def test_matrix_equals_hooked_transformerlens_per_channel(pos, attn_only, channel):
    model = tiny_model(n_layers=2, n_heads=2, attn_only=attn_only, pos=pos, dtype=torch.float64, seed=5)
    ref, cor = batches(2, n=3)
    metric = make_metric("loss", ref, cor, torch.arange(1, 9))
    matrix = patch_matrix(model, ref, cor, metric, channels=[channel], include_mlps=not attn_only, progress=False)
    hooked = split_qkv_copy(model)
    with torch.no_grad():
        base = float(metric(model(ref)[:, metric.positions]))
    names = hooked.hook_dict.keys()
    outs = [n for n in names if n.endswith(("attn.hook_z", "hook_mlp_out"))]
    _, clean_cache = hooked.run_with_cache(ref, names_filter=lambda n: n in outs)
    _, cor_cache = hooked.run_with_cache(cor, names_filter=lambda n: n in outs)
    paths = cells(matrix)
    # heads: 0.x -> 1.y and 4 to-logits; with MLPs also mlp.0 -> 1.y, 0.x -> mlp.0, 5 senders -> mlp.1, 6 to-logits
    assert len(paths) == {True: 4 + 4, False: 6 + 2 + 5 + 6}[attn_only]
    for path, effect in paths:
        if path.via:
            assert path.via[0][1] == (Channel.IN if isinstance(path.via[0][0], Mlp) else channel)
        logits = hooked_patch_logits(hooked, ref, cor, path, clean_cache, cor_cache)
        assert effect == pytest.approx(float(metric(logits[:, metric.positions])) - base, abs=1e-9), str(path)


def test_many_equals_one_at_a_time_and_plain_callables_work():
    gen = torch.Generator().manual_seed(0)
    ref, cor = batches(3, n=3)
    logits = torch.randn(5, 3, 4, 20, generator=gen, dtype=torch.float64)  # [paths, batch, n_pos, vocab]
    for kind in ("loss", "logit_diff"):
        metric = make_metric(kind, ref, cor, torch.arange(2, 6))
        torch.testing.assert_close(metric.many(logits), torch.stack([metric(x) for x in logits]))

    class Top1:  # any metric with positions and __call__; no ``many``
        kind = "top1"
        positions = torch.arange(2, 8)

        def __call__(self, x):
            return x.max(-1).values.mean()

    model = tiny_model(n_layers=2, attn_only=False, pos="standard", dtype=torch.float64)
    matrix = patch_matrix(model, ref, cor, Top1(), senders=["0.1", "mlp.0"], receivers=["1.2", "mlp.1"],
                          progress=False)
    assert matrix.metric == "top1" and matrix.senders == (Head(0, 1), Mlp(0))
    paths = cells(matrix)
    engine, _ = engine_effects(model, ref, cor, [p for p, _ in paths], Top1())
    torch.testing.assert_close(torch.tensor([v for _, v in paths], dtype=torch.float64), engine, atol=1e-9, rtol=0)
    d = matrix.to_dict()
    assert set(d["paths"]) == {"0.1 -> 1.2:q", "0.1 -> 1.2:k", "0.1 -> 1.2:v", "0.1 -> mlp.1", "mlp.0 -> 1.2:q",
                               "mlp.0 -> 1.2:k", "mlp.0 -> 1.2:v", "mlp.0 -> mlp.1"}


def test_bad_components_are_named():
    model = tiny_model(n_layers=2)
    ref, cor = batches(0)
    metric = make_metric("loss", ref, cor, torch.arange(2, 6))
    with pytest.raises(SiteError, match="attention-only"):
        patch_matrix(model, ref, cor, metric, include_mlps=True, progress=False)
    with pytest.raises(SiteError, match="senders are heads"):
        patch_matrix(model, ref, cor, metric, senders=["embed"], progress=False)
    with pytest.raises(SiteError, match="'q', 'k' or 'v'"):
        patch_matrix(model, ref, cor, metric, channels=["in"], progress=False)



def test_a_pair_that_cannot_connect_is_refused_in_the_api_words():
    """patch_matrix refuses what `scrub patch` refuses (a receiver computed before every sender), naming the fix as
    its own arguments; with receivers left out, last-layer senders give their paths to the logits."""
    from scrub.patching.checks import UnconnectedError

    model = tiny_model(n_layers=2)
    ref, cor = batches(0)
    metric = make_metric("loss", ref, cor, torch.arange(2, 6))
    with pytest.raises(UnconnectedError, match=r"computed before 1\.0.*senders=\['0\.0'\], receivers=\['1\.0'\]"):
        patch_matrix(model, ref, cor, metric, senders=[Head(1, 0)], receivers=[Head(0, 0)], progress=False)
    last = patch_matrix(model, ref, cor, metric, senders=[Head(1, 0)], progress=False)
    assert torch.isfinite(last.to_logits).all()
    none = patch_matrix(model, ref, cor, metric, receivers=[], progress=False)  # the study's, where no head qualifies
    assert none.effects.shape[1] == 0 and torch.isfinite(none.to_logits).all()

def test_chunking_does_not_change_the_result():
    from scrub.patching.matrix import matrix_values
    from scrub.patching.paths import pair_run

    model = tiny_model(n_layers=3, n_heads=3, attn_only=False, pos="standard", dtype=torch.float64, seed=7)
    ref, cor = batches(4)
    metric = make_metric("loss", ref, cor, torch.arange(2, 9))
    clean = pair_run(model, ref, cor)
    structure = Structure.of(model)
    comps = [c for c in structure.sources if isinstance(c, (Head, Mlp))]
    big = matrix_values(model, clean, metric, metric.positions, comps, comps, HEAD_CHANNELS, progress=False)
    small = matrix_values(model, clean, metric, metric.positions, comps, comps, HEAD_CHANNELS, progress=False, budget=1,
                          unembed_budget=1)
    torch.testing.assert_close(big.effects, small.effects, atol=1e-12, rtol=0, equal_nan=True)
    torch.testing.assert_close(big.to_logits, small.to_logits, atol=1e-12, rtol=0)


def test_cli_patch_with_mlps(tmp_path, capsys):
    import json

    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from scrub.cli import main
    from scrub.model.loading import save_checkpoint

    cfg = HookedTransformerConfig(n_layers=2, n_heads=2, d_model=16, d_head=8, n_ctx=32, d_vocab=2048, d_mlp=32,
                                  act_fn="gelu", seed=0, normalization_type="LN", positional_embedding_type="standard")
    save_checkpoint(HookedTransformer(cfg), tmp_path / "ckpt")
    args = ["patch", "--model", str(tmp_path / "ckpt"), "--n", "3", "--length", "6", "--out", str(tmp_path / "figs")]
    assert main(args + ["--json", "--input", "v", "--mlps"]) == 0
    result = json.loads(capsys.readouterr().out)
    heads = [f"{layer}.{h}" for layer in range(2) for h in range(2)]
    assert sorted(result["paths"]) == sorted([f"0.{s} -> 1.{r}:v" for s in range(2) for r in range(2)]
                                             + [f"0.{s} -> mlp.{m}" for s in range(2) for m in range(2)]
                                             + [f"mlp.0 -> 1.{r}:v" for r in range(2)] + ["mlp.0 -> mlp.1"]
                                             + [f"1.{s} -> mlp.1" for s in range(2)])
    assert sorted(result["to_logits"]) == sorted([f"{h} -> logits" for h in heads]
                                                 + ["mlp.0 -> logits", "mlp.1 -> logits"])
    assert main(args + ["--mlps"]) == 0
    out = capsys.readouterr().out
    assert "sender -> receiver:q -> logits" in out and "sender -> mlp -> logits" in out
    assert main(args + ["--senders", "mlp.0", "--receivers", "mlp.1"]) == 0
    assert "mlp.0 -> mlp.1" in capsys.readouterr().out
    assert main(args + ["--senders", "embed"]) == 2
    assert "senders are heads" in capsys.readouterr().err


def test_shipped_model_matches_hooks_in_float32():
    from scrub.data.batches import repeated_random_tokens
    from scrub.model.loading import SHIPPED_DIR, load_model

    if not SHIPPED_DIR.exists():
        pytest.skip("the shipped model is not trained yet")
    model = load_model()
    exclude = model.cfg.d_vocab // 20
    ref = repeated_random_tokens(8, 40, 2, seed=0, vocab_size=model.cfg.d_vocab, exclude_common=exclude)
    cor = repeated_random_tokens(8, 40, 2, seed=1, vocab_size=model.cfg.d_vocab, exclude_common=exclude)
    metric = make_metric("loss", ref, cor, second_repeat_positions(40))
    matrix = patch_matrix(model, ref, cor, metric, progress=False)
    hooked = split_qkv_copy(model)
    outs = [f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)]
    _, clean_cache = hooked.run_with_cache(ref, names_filter=lambda n: n in outs)
    _, cor_cache = hooked.run_with_cache(cor, names_filter=lambda n: n in outs)
    with torch.no_grad():
        base = float(metric(model(ref)[:, metric.positions]))
    paths = cells(matrix)
    sample = random.Random(0).sample(paths, 8) + sorted(paths, key=lambda pv: -abs(pv[1]))[:4]
    for path, effect in sample:
        logits = hooked_patch_logits(hooked, ref, cor, path, clean_cache, cor_cache)
        assert effect == pytest.approx(float(metric(logits[:, metric.positions])) - base, abs=1e-4), str(path)


def test_a_bad_row_constant_is_caught_and_the_chunk_redone(monkeypatch):
    """The unembedding subtracts each row's clean max logit so the loss can skip its own max; should a patched
    logit overflow against it, the chunk is scored again from plain logits."""
    import sys

    module = sys.modules["scrub.patching.matrix"]
    model = tiny_model(n_layers=2, attn_only=False, pos="standard", dtype=torch.float64, seed=2)
    ref, cor = batches(6)
    metric = make_metric("loss", ref, cor, torch.arange(2, 9))
    want = patch_matrix(model, ref, cor, metric, include_mlps=True, progress=False)
    init = module._Unembed.__init__

    def far_off(self, *args):
        init(self, *args)
        self.top = self.top - 1000.0  # exp(1000) overflows in float64

    monkeypatch.setattr(module._Unembed, "__init__", far_off)
    got = patch_matrix(model, ref, cor, metric, include_mlps=True, progress=False)
    torch.testing.assert_close(got.effects, want.effects, atol=1e-12, rtol=0, equal_nan=True)
    torch.testing.assert_close(got.to_logits, want.to_logits, atol=1e-12, rtol=0)

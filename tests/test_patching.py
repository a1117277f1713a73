"""Path patching: agreement with a literal TransformerLens-hook implementation, the empty and full patches,
the batched matrix against one-at-a-time patches, and clear errors."""

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from scrub.claims.sites import Channel, Head, SiteError
from scrub.patching.paths import (
    PatchPath,
    every_path_to_logits,
    make_metric,
    parse_path,
    patch_effects,
    patch_matrix,
    patch_tree,
    patched_logits,
    second_repeat_positions,
)
from scrub.testing.oracles import hooked_patch_logits, split_qkv_copy


def micro(pe: str = "shortformer", attn_only: bool = True, n_layers: int = 3, seed: int = 1) -> HookedTransformer:
    cfg = HookedTransformerConfig(n_layers=n_layers, n_heads=3, d_model=16, d_head=4, n_ctx=12, d_vocab=20,
                                  act_fn="gelu", attn_only=attn_only, d_mlp=None if attn_only else 32,
                                  positional_embedding_type=pe, seed=seed)
    model = HookedTransformer(cfg)
    model.eval()
    return model


def batches(seed: int = 0, n: int = 4, seq: int = 12):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 20, (n, seq), generator=gen), torch.randint(0, 20, (n, seq), generator=gen)


@pytest.mark.parametrize("pe,attn_only", [("shortformer", True), ("standard", False)])
def test_agrees_with_hooked_transformerlens(pe, attn_only):
    model = micro(pe, attn_only)
    ref, cor = batches()
    hooked = split_qkv_copy(model)
    for text in ["0.1 -> 1.2:k", "0.0 -> 2.1:q", "1.1 -> 2.2:v", "0.2 -> 1.0:v", "1.0", "2.2 -> logits"]:
        path = parse_path(text, model)
        ours = patched_logits(model, ref, cor, [path])
        theirs = hooked_patch_logits(hooked, ref, cor, path)
        torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-4, msg=text)


@pytest.mark.parametrize("pe,attn_only", [("shortformer", True), ("standard", False)])
def test_empty_patch_changes_nothing_and_full_patch_is_the_corrupted_run(pe, attn_only):
    model = micro(pe, attn_only)
    ref, cor = batches(1)
    torch.testing.assert_close(patched_logits(model, ref, cor, []), model(ref), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(patched_logits(model, ref, cor, every_path_to_logits(model)), model(cor),
                               atol=1e-5, rtol=1e-5)


def test_shorter_path_covers_longer_and_paths_add_like_the_hooks():
    model = micro()
    ref, cor = batches(2)
    short, long = parse_path("1.0", model), parse_path("0.1 -> 1.0:k", model)
    torch.testing.assert_close(patched_logits(model, ref, cor, [short, long]), patched_logits(model, ref, cor, [short]))
    root, senders = patch_tree([long, short])
    assert len(senders) == 1 and len(list(root.walk())) == 2


def test_matrix_equals_one_patch_at_a_time():
    model = micro(n_layers=2)
    ref, cor = batches(3, n=5)
    metric = make_metric("loss", ref, cor, torch.arange(3, 10))
    matrix = patch_matrix(model, ref, cor, metric)
    base = float(metric(model(ref)[:, metric.positions]))
    assert matrix.clean == pytest.approx(base, abs=1e-5)
    for i, s in enumerate(matrix.senders):
        for j, r in enumerate(matrix.receivers):
            for k, c in enumerate(matrix.channels):
                if r.layer <= s.layer:
                    assert torch.isnan(matrix.effects[i, j, k])
                    continue
                logits = patched_logits(model, ref, cor, [PatchPath(s, ((r, c),))])
                expected = float(metric(logits[:, metric.positions])) - base
                assert float(matrix.effects[i, j, k]) == pytest.approx(expected, abs=1e-5)
        direct = patched_logits(model, ref, cor, [PatchPath(s)])
        assert float(matrix.to_logits[i]) == pytest.approx(float(metric(direct[:, metric.positions])) - base, abs=1e-5)


def test_patch_effects_logit_diff_and_positions():
    model = micro()
    ref, cor = batches(4)
    metric = make_metric("logit_diff", ref, cor, second_repeat_positions(5))
    full = patch_effects(model, ref, cor, [[], every_path_to_logits(model)], lambda lg: metric(lg[:, metric.positions]))
    part = patch_effects(model, ref, cor, [[], every_path_to_logits(model)], metric, positions=metric.positions)
    torch.testing.assert_close(full, part)
    assert float(full[1]) == pytest.approx(float(metric(model(cor)[:, metric.positions])), abs=1e-5)


def test_bad_input_is_named():
    model = micro()
    with pytest.raises(SiteError, match="from '0.0' to '2.2'"):
        parse_path("3.9 -> logits", model)
    with pytest.raises(SiteError, match="'q', 'k' or 'v'"):
        parse_path("0.0 -> 1.1:x", model)
    with pytest.raises(SiteError, match="say which input"):
        parse_path("0.0 -> 1.1", model)
    with pytest.raises(SiteError, match="not computed after"):
        parse_path("1.0 -> 1.1:k", model)
    with pytest.raises(ValueError, match="one shape"):
        patched_logits(model, *batches(0, n=3)[:1], batches(0, n=2)[1], [])
    with pytest.raises(ValueError, match="unknown metric"):
        make_metric("kl", *batches(), torch.arange(3))
    assert str(parse_path("0.0 -> 1.1:k", model)) == "0.0 -> 1.1:k -> logits"
    assert parse_path("0.0 -> 1.1:K -> logits", model).via == ((Head(1, 1), Channel.K),)


def test_cli_patch_json_and_errors(tmp_path, capsys):
    import json

    from scrub.cli import main
    from scrub.model.loading import save_checkpoint

    cfg = HookedTransformerConfig(n_layers=2, n_heads=2, d_model=16, d_head=8, n_ctx=32, d_vocab=2048, attn_only=True,
                                  act_fn="gelu", seed=0, positional_embedding_type="shortformer")
    save_checkpoint(HookedTransformer(cfg), tmp_path / "ckpt")
    args = ["patch", "--model", str(tmp_path / "ckpt"), "--n", "3", "--length", "6", "--out", str(tmp_path / "figs")]
    assert main(args + ["--json", "--input", "k"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert sorted(result["paths"]) == [f"0.{s} -> 1.{r}:k" for s in range(2) for r in range(2)]
    assert len(result["to_logits"]) == 4 and (tmp_path / "figs" / "path_patching.png").exists()
    assert main(args + ["--senders", "0.1", "--receivers", "1.0"]) == 0
    assert "0.1 -> 1.0" in capsys.readouterr().out
    assert main(args + ["--senders", "3.9"]) == 2
    assert "from '0.0' to '1.1'" in capsys.readouterr().err
    assert main(args + ["--input", "x"]) == 2
    assert "'q', 'k' or 'v'" in capsys.readouterr().err


@pytest.mark.parametrize("pe,attn_only", [("shortformer", True), ("standard", False)])
def test_edge_paths_are_edge_patching(pe, attn_only):
    from scrub.patching.paths import edge_paths

    model = micro(pe, attn_only)
    ref, cor = batches(5)
    hooked = split_qkv_copy(model)
    paths = edge_paths(model, Head(0, 1), Head(1, 2), Channel.K)
    assert len(paths) == (1 + 3 * 3 if attn_only else 40)  # 1.2 -> [mlp.1 ->] [2.x:c ->] [mlp.2 ->] logits
    ours = patched_logits(model, ref, cor, paths)
    theirs = hooked_patch_logits(hooked, ref, cor, PatchPath(Head(0, 1), ((Head(1, 2), Channel.K),)), downstream=True)
    torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-4)


@pytest.mark.slow
def test_shipped_previous_token_to_induction_k_path_stands_out():
    from scrub.data.batches import repeated_random_tokens
    from scrub.heads.scores import behavioral_induction_heads, head_scores, previous_token_heads
    from scrub.model.loading import SHIPPED_DIR, load_model

    if not SHIPPED_DIR.exists():
        pytest.skip("the shipped model is not trained yet")
    model = load_model()
    scores = head_scores(model, data="natural", n=16)
    induction = set(behavioral_induction_heads(scores))
    previous = {h for h in previous_token_heads(scores) if h.layer == 0}  # layer 1 has one too (1.5)
    assert previous and induction, "the shipped model has both halves of the mechanism"
    exclude = model.cfg.d_vocab // 20
    ref = repeated_random_tokens(16, 40, 2, seed=0, vocab_size=model.cfg.d_vocab, exclude_common=exclude)
    cor = repeated_random_tokens(16, 40, 2, seed=1, vocab_size=model.cfg.d_vocab, exclude_common=exclude)
    matrix = patch_matrix(model, ref, cor, make_metric("loss", ref, cor, second_repeat_positions(40)))
    k = matrix.channels.index(Channel.K)
    effects = matrix.effects[:, :, k]  # [sender, receiver]
    i, j = divmod(int(torch.nan_to_num(effects, nan=-1e9).argmax()), effects.shape[1])
    assert matrix.senders[i] in previous and matrix.receivers[j] in induction
    finite = matrix.effects[~torch.isnan(matrix.effects)].abs()
    assert float(effects[i, j]) > 5 * float(finite.median())
    # and it stands out among all head -> head paths of every input channel
    runner_up = torch.nan_to_num(matrix.effects, nan=-1e9).flatten().sort(descending=True).values[1]
    assert float(effects[i, j]) > 1.5 * float(runner_up)

"""Property tests (hypothesis library): path patching on random small models and random path sets.

- batching many path sets into one stacked call equals evaluating each set alone;
- a path set's result does not depend on order or duplicates;
- a single head -> head:channel path agrees with the literal TransformerLens-hook implementation;
- when the corrupted input equals the reference, any path set leaves the logits clean.
"""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scrub.claims.sites import HEAD_CHANNELS, Head
from scrub.patching.paths import PatchPath, patch_effects, patched_logits
from scrub.testing import strategies as kit
from scrub.testing.models import Norm, Positions
from scrub.testing.oracles import hooked_patch_logits, split_qkv_copy

SETTINGS = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def cases(draw):
    model = draw(kit.models(min_layers=2, max_layers=3, min_heads=3, max_heads=3, norms=(Norm.LN,),
                            positions=(Positions.SHORTFORMER, Positions.STANDARD), parallel=False, gqa=False))
    n_layers = model.cfg.n_layers
    heads = [Head(layer, h) for layer in range(n_layers) for h in range(3)]
    paths = []
    for _ in range(draw(st.integers(0, 4))):
        s = draw(st.sampled_from(heads[:-3]))
        later = [h for h in heads if h.layer > s.layer]
        if draw(st.booleans()):
            paths.append(PatchPath(s))
        else:
            paths.append(PatchPath(s, ((draw(st.sampled_from(later)), draw(st.sampled_from(HEAD_CHANNELS))),)))
    tokens = kit.token_batches(model, min_rows=3, max_rows=3, min_seq=8, max_seq=8)
    ref, cor = draw(tokens), draw(tokens)
    return model, paths, ref, cor


@SETTINGS
@given(cases())
def test_batched_equals_alone_and_order_free(case):
    model, paths, ref, cor = case
    metric = lambda logits: logits.sum()  # noqa: E731
    sets = [paths, list(reversed(paths)) + paths[:1], paths[:1], []]
    batched = patch_effects(model, ref, cor, sets, metric)
    alone = torch.tensor([float(metric(patched_logits(model, ref, cor, s))) for s in sets])
    torch.testing.assert_close(batched, alone, atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(batched[0], batched[1], atol=1e-3, rtol=1e-5)


@SETTINGS
@given(cases())
def test_single_path_agrees_with_hooks(case):
    model, paths, ref, cor = case
    if not paths:
        return
    hooked = split_qkv_copy(model)
    for path in paths:
        torch.testing.assert_close(patched_logits(model, ref, cor, [path]),
                                   hooked_patch_logits(hooked, ref, cor, path), atol=1e-4, rtol=1e-4)


@SETTINGS
@given(cases())
def test_identical_inputs_change_nothing(case):
    model, paths, ref, _ = case
    torch.testing.assert_close(patched_logits(model, ref, ref.clone(), paths), model(ref), atol=1e-5, rtol=1e-5)

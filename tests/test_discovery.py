"""Circuit discovery (issue #17): attribution against a literal TransformerLens-hook implementation with
autograd, the linearity of EAP, exact effects against path patching, planted circuits, the threshold's
extremes and the written hypothesis file."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import scrub
from scrub.claims.hypothesis import full_graph, validate
from scrub.claims.sites import Channel, Embed, Head, Logits, Mlp, Pos
from scrub.claims.structure import Structure
from scrub.discovery import all_edges, discover
from scrub.discovery.attribution import attribute
from scrub.discovery.edges import Edge, claim_of
from scrub.discovery.exact import ExactEvaluator
from scrub.discovery.setup import paired, resampled
from scrub.engine.compute import clean_run
from scrub.engine.evaluator import evaluate_many
from scrub.engine.sampling import Sampler
from scrub.engine.treeify import assign, treeify
from scrub.patching.paths import PatchPath, edge_paths, make_metric, patch_effects, split_qkv_copy
from tests.helpers import random_tokens, tiny_model

# --- the literal oracle: TransformerLens hooks, .backward(), one dot product per edge -----------------------


def literal_senders(cfg, receiver: str, channel: str) -> list[str]:
    """What feeds a receiver, written out from the architecture (not from ``Structure``)."""
    pos = cfg.positional_embedding_type
    out = ["embed"]
    if pos == "standard" or (pos == "shortformer" and receiver[0].isdigit() and channel in "qk"):
        out.append("pos")
    layer = cfg.n_layers if receiver == "logits" else int(receiver.split(".")[-1 if receiver.startswith("mlp") else 0])
    for lay in range(cfg.n_layers):
        heads = [f"{lay}.{h}" for h in range(cfg.n_heads)]
        mlp = [] if cfg.attn_only else [f"mlp.{lay}"]
        if lay < layer:
            out += heads + mlp
        elif lay == layer and receiver.startswith("mlp") and not cfg.parallel_attn_mlp:
            out += heads
    return out


def literal_eap(model, tokens: Tensor, others: dict[str, Tensor], data: Tensor, mask: Tensor, metric: str
                ) -> dict[str, float]:
    """score(s -> r:c) = Σ (s's output on others[r] rows of ``data`` − on the clean rows) · ∂metric/∂input."""
    cfg = model.cfg
    hooked = split_qkv_copy(model)
    grads: dict[str, Tensor] = {}

    def keep(act, hook):
        act.retain_grad()
        grads[hook.name] = act
        return act

    names = [f"blocks.{lay}.hook_{c}_input" for lay in range(cfg.n_layers) for c in "qkv"]
    names += [] if cfg.attn_only else [f"blocks.{lay}.hook_mlp_in" for lay in range(cfg.n_layers)]
    names.append(f"blocks.{cfg.n_layers - 1}.hook_resid_post")
    clean_logits = hooked(tokens).detach()
    logits = hooked.run_with_hooks(tokens, fwd_hooks=[(n, keep) for n in names])
    per_token = (scrub.metrics.token_losses(logits, tokens) if metric == "loss"
                 else scrub.metrics.token_kl(clean_logits, logits))
    ((per_token * mask).sum() / mask.sum()).backward()
    _, cache = hooked.run_with_cache(data)

    def out(s: str) -> Tensor:
        if s == "embed":
            return cache["hook_embed"]
        if s == "pos":
            return cache["hook_pos_embed"].expand(data.shape[0], -1, -1)
        if s.startswith("mlp"):
            return cache[f"blocks.{s[4:]}.hook_mlp_out"]
        lay, h = (int(x) for x in s.split("."))
        return cache[f"blocks.{lay}.attn.hook_z"][:, :, h] @ hooked.blocks[lay].attn.W_O[h]

    n = tokens.shape[0]
    scores = {}
    receivers = [(f"{lay}.{h}", c) for lay in range(cfg.n_layers) for h in range(cfg.n_heads) for c in "qkv"]
    receivers += [] if cfg.attn_only else [(f"mlp.{lay}", "in") for lay in range(cfg.n_layers)]
    receivers.append(("logits", "in"))
    for r, c in receivers:
        if c == "in":
            hook = f"blocks.{cfg.n_layers - 1}.hook_resid_post" if r == "logits" else f"blocks.{r[4:]}.hook_mlp_in"
            grad = grads[hook].grad
        else:
            lay, h = (int(x) for x in r.split("."))
            grad = grads[f"blocks.{lay}.hook_{c}_input"].grad[:, :, h]
        for s in literal_senders(cfg, r, c):
            diff = out(s)[others[r]] - out(s)[:n]
            name = f"{s} -> {r}:{c}" if c != "in" else f"{s} -> {r}"
            scores[name] = float((diff.double() * grad.double()).sum().detach())
    return scores


def our_scores(model, cf, mask, metric, method="eap", steps=5) -> dict[str, float]:
    clean = clean_run(model, cf.data)
    return {str(e): v for e, v in attribute(model, cf, clean, mask, metric, method, steps=steps).scores.items()}


def assert_scores_equal(ours: dict[str, float], literal: dict[str, float], atol: float) -> None:
    assert set(ours) == set(literal)
    worst = max(literal.values(), key=abs)
    assert abs(worst) > 100 * atol  # the comparison is not between zeros
    for name, value in literal.items():
        assert ours[name] == pytest.approx(value, abs=atol), name


ARCHITECTURES = [
    dict(pos="shortformer"),
    dict(pos="standard", attn_only=False),
    dict(pos="rotary", attn_only=False, norm="RMS", n_layers=3),
    dict(pos="standard", attn_only=False, parallel=True),
]


@pytest.mark.parametrize("arch", ARCHITECTURES, ids=lambda a: "-".join(str(v) for v in a.values()))
def test_paired_eap_equals_literal_hooks_on_random_models(arch):
    model = tiny_model(dtype=torch.float64, scale=0.3, **arch)
    tokens, corrupted = random_tokens(6, 10, seed=1), random_tokens(6, 10, seed=2)
    mask = torch.rand(6, 9, generator=torch.Generator().manual_seed(0)) < 0.7  # [6, 9]
    cf = paired(tokens, corrupted, Structure.of(model))
    others = {str(r): torch.arange(6) + 6 for r in Structure.of(model).receivers}
    literal = literal_eap(model, tokens, others, cf.data, mask, "loss")
    assert_scores_equal(our_scores(model, cf, mask, "loss"), literal, 1e-9)


def test_resample_eap_equals_literal_hooks_with_the_engines_draws():
    model = tiny_model(dtype=torch.float64, scale=0.3, pos="standard", attn_only=False)
    tokens = random_tokens(8, 10, seed=3)
    mask = torch.ones(8, 9, dtype=torch.bool)
    cf = resampled(tokens, Structure.of(model), seed=5, n_draws=1)
    claim = validate(full_graph(model), model)
    tree = treeify(claim)
    drawn = assign(tree, Sampler(tokens, seed=5), torch.arange(8))
    others = {path[1]: a.other for path, a in drawn.by_path.items() if path[1] not in ("embed", "pos")}
    literal = literal_eap(model, tokens, others, tokens, mask, "loss")
    assert_scores_equal(our_scores(model, cf, mask, "loss"), literal, 1e-9)


def test_eap_equals_literal_hooks_on_the_shipped_model():
    model = scrub.load_model()
    tokens = scrub.natural_batch(8, 24, seed=4)
    corrupted = scrub.natural_batch(16, 24, seed=4)[8:]
    mask = torch.ones(8, 23, dtype=torch.bool)
    cf = paired(tokens, corrupted, Structure.of(model))
    others = {str(r): torch.arange(8) + 8 for r in Structure.of(model).receivers}
    literal = literal_eap(model, tokens, others, cf.data, mask, "loss")
    assert_scores_equal(our_scores(model, cf, mask, "loss"), literal, 2e-5)


def test_eap_is_the_derivative_of_the_exact_effect_of_patching_a_scaled_difference():
    """EAP's score of the largest head -> head edge equals (metric(ε x difference patched into the receiver's
    input) − metric(clean)) / ε as ε -> 0, patched with plain hooks."""
    model = tiny_model(dtype=torch.float64, scale=0.3)
    tokens, corrupted = random_tokens(6, 10, seed=1), random_tokens(6, 10, seed=2)
    mask = torch.ones(6, 9, dtype=torch.bool)
    cf = paired(tokens, corrupted, Structure.of(model))
    scores = our_scores(model, cf, mask, "loss")
    name = max((k for k in scores if k.startswith("0.") and ":" in k), key=lambda k: abs(scores[k]))
    sender, into = name.split(" -> ")
    (s_layer, s_head), (r_head, channel) = (int(x) for x in sender.split(".")), into.split(":")
    r_layer, r_index = (int(x) for x in r_head.split("."))
    hooked = split_qkv_copy(model)
    with torch.no_grad():
        z = {t: hooked.run_with_cache(x)[1][f"blocks.{s_layer}.attn.hook_z"][:, :, s_head]
             for t, x in (("c", tokens), ("x", corrupted))}
        diff = (z["x"] - z["c"]) @ hooked.blocks[s_layer].attn.W_O[s_head]  # [6, 10, d_model]

    @torch.no_grad()
    def loss(eps: float) -> float:
        def add(act, hook):
            act[:, :, r_index] = act[:, :, r_index] + eps * diff
            return act
        logits = hooked.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{r_layer}.hook_{channel}_input", add)])
        return float(scrub.metrics.token_losses(logits, tokens).mean())

    base = loss(0.0)
    slopes = [(loss(eps) - base) / eps for eps in (1e-3, 1e-4, 1e-5)]
    assert abs(scores[name]) > 1e-3
    assert slopes[-1] == pytest.approx(scores[name], rel=1e-4)
    assert abs(slopes[-1] - scores[name]) < abs(slopes[0] - scores[name])  # converging, not coincidence


def test_eap_ig_with_one_step_is_eap_and_differs_with_more():
    model = tiny_model(dtype=torch.float64, scale=0.3)
    tokens, corrupted = random_tokens(6, 10, seed=1), random_tokens(6, 10, seed=2)
    mask = torch.ones(6, 9, dtype=torch.bool)
    cf = paired(tokens, corrupted, Structure.of(model))
    eap = our_scores(model, cf, mask, "loss")
    assert our_scores(model, cf, mask, "loss", "eap-ig", steps=1) == pytest.approx(eap, abs=1e-12)
    ig = our_scores(model, cf, mask, "loss", "eap-ig", steps=5)
    assert max(abs(ig[k] - eap[k]) for k in eap) > 1e-4


# --- exact effects -----------------------------------------------------------------------------------------


def test_paired_exact_effects_equal_edge_patching():
    """Removing one edge from the full claim in paired mode is patching every path through it."""
    model = tiny_model(dtype=torch.float64, scale=0.3, pos="standard", attn_only=False)
    tokens, corrupted = random_tokens(5, 8, seed=1), random_tokens(5, 8, seed=2)
    mask = torch.ones(5, 7, dtype=torch.bool)
    cf = paired(tokens, corrupted, Structure.of(model))
    ev = ExactEvaluator(model, cf, clean_run(model, cf.data), mask, "loss")
    edges = all_edges(model)
    full = frozenset(edges)
    ours = ev.totals([full - {e} for e in edges]).sum(1) / mask.sum()
    metric = make_metric("loss", tokens, corrupted, torch.arange(7))
    sets = [[PatchPath(e.sender)] if isinstance(e.receiver, Logits)
            else edge_paths(model, e.sender, e.receiver, e.channel) for e in edges]
    theirs = patch_effects(model, tokens, corrupted, sets, metric).double()
    assert torch.allclose(ours, theirs, atol=1e-9)
    assert float((ours - ours.mean()).abs().max()) > 1e-3


def full_logits_totals(ev: ExactEvaluator, claims: list[frozenset[Edge]]) -> Tensor:
    """``ExactEvaluator.totals`` by the old reduction: every position unembedded, the metric over all of them,
    then masked."""
    roots = [treeify(claim_of(c)) for c in claims]
    out = torch.zeros(len(claims), ev.cf.n, dtype=torch.float64)  # [claims, n]
    for start in range(0, ev.cf.n, ev.batch_size):
        ids = torch.arange(start, min(start + ev.batch_size, ev.cf.n))  # [b]
        tokens, clean_logits, mask = ev.clean.tokens[ids], ev.clean.logits[ids], ev.mask[ids]

        def reduce(logits, tokens=tokens, clean_logits=clean_logits, mask=mask):  # [b, seq, d_vocab] -> [b]
            values = scrub.metrics.token_metric(ev.metric, logits, clean_logits, tokens)  # [b, seq-1]
            return (values.double() * mask.double()).sum(1)

        for datas in ev._assignments(roots, ids):
            values, _ = evaluate_many(ev.model, roots, datas, ev.clean, reduce=reduce)
            out[:, ids] += torch.stack(values) / len(ev.cf.draws)
    return out


@pytest.mark.parametrize("kind", ["paired", "resample"])
@pytest.mark.parametrize("metric", ["loss", "kl"])
def test_exact_totals_at_the_scored_positions_equal_the_full_logits_reduction(kind, metric):
    """Unembedding only the columns some example of a batch scores changes no total; a batch that scores
    nothing totals 0."""
    model = tiny_model(dtype=torch.float64, scale=0.4, pos="standard", attn_only=False)
    tokens, corrupted = random_tokens(10, 9, seed=12), random_tokens(10, 9, seed=13)
    mask = torch.rand(10, 8, generator=torch.Generator().manual_seed(1)) < 0.6  # [10, 8]
    mask[:, [0, 3, 7]] = False  # columns no example scores
    mask[8:] = False  # the last batch (rows 8, 9) scores nothing
    mask[4:8, 5] = False  # a column only the first batch scores
    assert mask[:4, 5].any() and mask[:8].any(0).sum() < 8
    structure = Structure.of(model)
    cf = paired(tokens, corrupted, structure) if kind == "paired" else resampled(tokens, structure, 3, n_draws=2)
    ev = ExactEvaluator(model, cf, clean_run(model, cf.data), mask, metric, batch_size=4)
    edges = all_edges(model)
    pick = torch.Generator().manual_seed(2)
    claims = [frozenset(edges), frozenset()] + [
        frozenset(e for e in edges if float(torch.rand(1, generator=pick)) < share) for share in (0.3, 0.6, 0.9)]
    ours, theirs = ev.totals(claims), full_logits_totals(ev, claims)  # [claims, n] x2
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-10)
    assert float(theirs[2:, :8].abs().min()) > 1e-6 and float(theirs.abs().max()) > 1e-2  # not between zeros
    assert torch.equal(ours[:, 8:], torch.zeros(len(claims), 2, dtype=torch.float64))


# --- discovery end to end ----------------------------------------------------------------------------------


def silent_model():
    """Heads 0.0 and 1.1 write nothing (W_O zeroed): no edge from them can matter."""
    model = tiny_model(dtype=torch.float64, scale=0.4)
    with torch.no_grad():
        model.blocks[0].attn.W_O[0] = 0
        model.blocks[1].attn.W_O[1] = 0
    return model


@pytest.mark.parametrize("method", [pytest.param("acdc", marks=pytest.mark.slow), "eap-ig+verify"])
def test_planted_circuit_never_keeps_a_silent_head(method):
    model = silent_model()
    tokens = random_tokens(16, 8, seed=6)
    d = discover(model, tokens, method=method, metric="kl", threshold=0.01, draws=1, curve=False)
    kept = [r for r in d.edges if r.verdict != "dropped"]
    assert kept and not any(r.sender in ("0.0", "1.1") for r in kept)
    # what matters is kept: every edge into the logits whose interval clears τ (decided first, from the full claim)
    loud = [r for r in d.edges if r.receiver == "logits" and r.ci is not None and r.ci[0] > 0.01]
    assert loud and all(r.in_claim for r in loud)


def test_threshold_zero_keeps_every_edge_with_an_effect_and_recovers_everything():
    model = tiny_model(dtype=torch.float64, scale=0.4)
    tokens = random_tokens(16, 10, seed=7)
    d = discover(model, tokens, method="acdc", metric="loss", threshold=0.0, draws=1, curve=False)
    for r in d.edges:
        if r.verdict == "dropped":
            assert r.effect == 0.0 and r.ci == (0.0, 0.0), r.edge
    assert d.heldout is not None and d.heldout.loss_recovered == pytest.approx(1.0, abs=1e-9)


def test_huge_threshold_keeps_nothing_and_recovers_nothing():
    model = tiny_model(dtype=torch.float64, scale=0.4)
    d = discover(model, random_tokens(16, 10, seed=7), method="acdc", metric="loss", threshold=1e9, draws=1,
                 curve=False)
    assert not d.claim_edges and all(r.verdict == "dropped" for r in d.edges)
    assert d.heldout is not None and d.heldout.loss_recovered == 0.0


def test_an_interval_straddling_the_threshold_is_uncertain_and_kept():
    from scrub.discovery.search import Verdict, verdict

    assert verdict(0.5, 2.0, 1.0) == Verdict.UNCERTAIN
    assert verdict(-2.0, -0.5, 1.0) == Verdict.UNCERTAIN
    assert verdict(-0.5, 0.5, 1.0) == Verdict.DROPPED
    assert verdict(1.5, 2.0, 1.0) == Verdict.KEPT
    model = tiny_model(dtype=torch.float64, scale=0.4)
    d = discover(model, random_tokens(16, 10, seed=7), method="acdc", metric="loss", threshold=0.02, draws=1,
                 curve=False)
    for r in d.edges:
        if r.how == "exact" and r.ci is not None and r.ci[0] < 0.02 < r.ci[1]:
            assert r.verdict == "uncertain"
    assert all(r.verdict != "dropped" for r in d.edges if r.edge in d.claim_edges)


def test_written_file_reruns_to_the_reported_heldout_number(tmp_path):
    model = tiny_model(dtype=torch.float64, scale=0.4)
    tokens = random_tokens(24, 10, seed=8)
    d = discover(model, tokens, metric="kl", threshold=0.01, draws=2, seed=3, curve=True)
    path = d.write(tmp_path / "found.py")
    again = scrub.run(model, path, tokens[12:], metric="kl", seed=3, progress=False)
    assert d.heldout is not None and d.claim_edges
    assert again.loss_recovered == d.heldout.loss_recovered
    assert (again.ci_low, again.ci_high) == (d.heldout.ci_low, d.heldout.ci_high)
    text = path.read_text()
    assert text.count("add_path(g,") == len(d.claim_edges) and "seed 3" in text
    assert d.curve is not None and d.curve.points[-1].circuit == pytest.approx(1.0)
    assert d.curve.points[0].circuit == pytest.approx(0.0)
    assert d.passes.forward > 0 and d.passes.backward == 5 * 2


def test_receivers_limit_the_search_and_keep_everything_else():
    model = tiny_model(dtype=torch.float64, scale=0.4)
    d = discover(model, random_tokens(16, 10, seed=9), method="acdc", metric="loss", threshold=0.05, draws=1,
                 receivers=["1.2"], curve=False)
    for r in d.edges:
        if r.receiver != "1.2":
            assert (r.verdict, r.how) == ("kept", "not searched")
    assert {r.how for r in d.edges if r.receiver == "1.2"} <= {"exact", "unreachable"}


@pytest.mark.parametrize("kwargs, words", [
    (dict(method="magic"), "method must be one of"),
    (dict(metric="acc"), "metric must be one of"),
    (dict(threshold=-1.0), "threshold must be a number"),
    (dict(receivers=["9.9"]), "unknown head"),
    (dict(receivers=["embed"]), "is an input"),
    (dict(corrupted=torch.zeros(3, 10, dtype=torch.long)), "corrupted must have the shape"),
    (dict(draws=0), "draws must be"),
])
def test_bad_input_is_one_clear_error_before_any_work(kwargs, words):
    model = tiny_model()
    with pytest.raises(scrub.errors.ScrubError, match=words):
        discover(model, random_tokens(8, 10), **kwargs)


def test_edges_are_named_as_one_step_paths():
    model = tiny_model(attn_only=False, pos="standard")
    names = {str(e) for e in all_edges(model)}
    assert {"0.1 -> 1.2:k", "embed -> 0.1:v", "mlp.0 -> 1.2:k", "1.2 -> logits", "mlp.1 -> logits"} <= names
    assert str(Edge(Pos(), Head(0, 0), Channel.Q)) == "pos -> 0.0:q"
    assert str(Edge(Embed(), Mlp(0), Channel.IN)) == "embed -> mlp.0"
    n_full = sum(len(a.get("via") or "x") for _, _, a in full_graph(model).edges(data=True))
    assert len(names) == n_full


def hand_built_model():
    """A circuit known exactly: attention-only, no norms, shortformer positions. Heads 0.1 and 1.1 write nothing
    (W_O = 0); heads 0.0 and 1.0 have W_Q = W_K = 0, so they attend uniformly whatever their q and k inputs read.
    The only edges with an effect are the token embedding and 0.0 into V, and every writer into the logits."""
    model = tiny_model(dtype=torch.float64, scale=0.6, norm=None, pos="shortformer", n_heads=2)
    with torch.no_grad():
        for layer in (0, 1):
            model.blocks[layer].attn.W_O[1] = 0
            model.blocks[layer].attn.W_Q[0] = 0
            model.blocks[layer].attn.W_K[0] = 0
    return model


HAND_BUILT_CIRCUIT = {"embed -> 0.0:v", "embed -> 1.0:v", "0.0 -> 1.0:v", "embed -> logits", "0.0 -> logits",
                      "1.0 -> logits"}


@pytest.mark.parametrize("method", ["acdc", "eap-ig+verify"])
def test_a_hand_built_circuit_is_recovered_exactly(method):
    d = discover(hand_built_model(), random_tokens(16, 8, seed=11), method=method, metric="loss", threshold=1e-6,
                 draws=1, curve=False)
    assert set(d.claim_edges) == HAND_BUILT_CIRCUIT
    assert {r.edge for r in d.edges if r.verdict != "dropped"} == HAND_BUILT_CIRCUIT

"""The contracts of the resampling engine, one function each: it returns quietly or raises an ``AssertionError``
whose message is a reproducer (``scrub.testing.reproducer``).

Comparisons of two different computations (engine against an oracle, or two trees) run on a float64 copy of
the model, where summation order moves logits by ~1e-13, and use ``ATOL``/``RTOL``; contracts that the engine
meets by construction (the full claim reads the clean run) are checked bit for bit in the model's own dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from scrub.claims.hypothesis import Claim, empty_graph, full_graph, validate
from scrub.claims.masks import all_keys, no_keys
from scrub.claims.sites import Head, Mlp
from scrub.claims.structure import Structure
from scrub.engine.compute import clean_run
from scrub.engine.evaluator import evaluate
from scrub.engine.sampling import Sampler, pool_ids
from scrub.engine.treeify import Assignments, SamplingOptions, TreeNode, assign, assign_data, localize, treeify
from scrub.testing.graphs import as_claim, has_mask, head_inputs, with_mask, without_inputs, without_masked
from scrub.testing.models import float64_copy
from scrub.testing.oracles import activation_patch_logits, naive_logits
from scrub.testing.reproducer import Reproducer, fail

ATOL = RTOL = 1e-9  # float64: two summation orders of logits up to ~1e3 differ by ~1e-12


@dataclass(frozen=True)
class Scrubbed:
    """One engine evaluation of a claim on a batch that is its own dataset."""

    claim: Claim
    tree: TreeNode
    data: Assignments
    logits: Tensor  # [batch, seq, d_vocab]


def scrub(model: HookedTransformer, claim: Claim | nx.DiGraph, tokens: Tensor, *, seed: int = 0,
          options: SamplingOptions = SamplingOptions()) -> Scrubbed:
    """The engine's logits of ``claim`` on ``tokens`` [batch, seq], drawing among the batch's rows."""
    claim = as_claim(claim, model)
    tree = treeify(claim, options.unit)
    data = assign_data(tree, tokens, seed=seed, options=options, structure=Structure.of(model))
    logits, _ = evaluate(model, tree, data, clean_run(model, tokens))
    return Scrubbed(claim, tree, data, logits)


def _close(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, atol=ATOL, rtol=RTOL)


def _gap(a: Tensor, b: Tensor) -> str:
    if a.shape != b.shape:
        return f"shapes {list(a.shape)} and {list(b.shape)}"
    diff = (a - b).abs()  # [batch, seq, d_vocab]
    row, pos, _ = (int(i) for i in (diff == diff.max()).nonzero()[0])
    return f"max |difference| {float(diff.max()):.3g} at example {row}, position {pos}"


def full_claim_is_clean(model: HookedTransformer, tokens: Tensor, *, seed: int = 0,
                        options: SamplingOptions = SamplingOptions()) -> None:
    """The full graph without features reproduces the model's logits bit for bit."""
    out = scrub(model, full_graph(model), tokens, seed=seed, options=options)
    clean = model(tokens).detach()  # [batch, seq, d_vocab]
    if not torch.equal(out.logits, clean):
        raise fail(f"the full claim does not reproduce the clean logits: {_gap(out.logits, clean)}",
                   Reproducer.of(model, out.claim, tokens, seed, options))


def empty_claim_is_baseline(model: HookedTransformer, tokens: Tensor, *, seed: int = 0,
                            options: SamplingOptions = SamplingOptions()) -> None:
    """The empty claim is the model run on resampled inputs: each row is the model's logits on the row of the
    logits' one unclaimed draw (bit for bit),
    or, with independent draws, one draw per source as the naive reference sums them."""
    out = scrub(model, empty_graph(), tokens, seed=seed, options=options)
    if options.independent:
        engine_equals_reference(model, empty_graph(), tokens, seed=seed, options=options)
        return
    # rows of the model's own run, gathered: float32 matmuls are not bit-stable under a reordering of the batch
    expected = model(tokens).detach()[out.data[out.tree].other]  # [batch, seq, d_vocab]
    if not torch.equal(out.logits, expected):
        raise fail(f"the empty claim is not the model on its resampled inputs: {_gap(out.logits, expected)}",
                   Reproducer.of(model, out.claim, tokens, seed, options))


def engine_equals_reference(model: HookedTransformer, claim: Claim | nx.DiGraph, tokens: Tensor, *, seed: int = 0,
                            options: SamplingOptions = SamplingOptions()) -> None:
    """The engine's logits equal the naive literal evaluation of the same tree and draws (float64)."""
    wide = float64_copy(model)
    out = scrub(wide, claim, tokens, seed=seed, options=options)
    expected = naive_logits(wide, out.tree, out.data, tokens)  # [batch, seq, d_vocab]
    if not _close(out.logits, expected):
        raise fail(f"the engine differs from the naive reference: {_gap(out.logits, expected)}",
                   Reproducer.of(model, out.claim, tokens, seed, options))


def _parent_reads(data: Assignments, node: TreeNode, child: TreeNode) -> tuple[Tensor, Tensor]:
    """(parent datum [rows], datum the child is read on for it [rows] or [rows, seq])."""
    parent, c = data[node].datum, data[child]
    if c.read is None:  # copy mode: rows aligned with the parent's
        return parent, c.datum
    return parent, c.datum[c.read[parent]]


def draws_agree_with_parents(model: HookedTransformer, claim: Claim | nx.DiGraph, tokens: Tensor, *, seed: int = 0,
                             options: SamplingOptions = SamplingOptions()) -> None:
    """Every child with a feature is read on a datum that agrees with its parent's on the feature (at each
    position, for a per-position feature), from the pool, and never the parent's own datum unless no other pool
    datum agrees (or ``allow_self``); a child without a feature is read on the parent's datum itself."""
    out = scrub(model, claim, tokens, seed=seed, options=options)
    rep = Reproducer.of(model, out.claim, tokens, seed, options)
    pool = pool_ids(tokens.shape[0], options.pool, seed)
    for node in out.tree.walk():
        for inp in node.inputs:
            parent, read = _parent_reads(out.data, node, inp.child)
            where = f"node {inp.child.path[-1]!r} read by {node.path[-1]!r}"
            feature = inp.child.feature
            if feature is None:
                if not torch.equal(read, parent):
                    raise fail(f"{where}: no feature, yet read on other data than its parent's", rep)
                continue
            codes = feature.codes(tokens)  # [n, k] or [n, seq]
            if read.dim() == 1:
                ok, agree = (codes[read] == codes[parent]).all(-1), (codes[:, None] == codes[None, pool]).all(-1)
            else:
                at = torch.arange(tokens.shape[1])
                ok = codes[read, at] == codes[parent][:, at]  # [rows, seq]
                agree = codes[:, None, :] == codes[pool][None, :, :]  # [n, pool, seq]
            if not bool(ok.all()):
                raise fail(f"{where}: draws disagree with their parent on feature {feature.name!r}", rep)
            own = read == (parent if read.dim() == 1 else parent[:, None])  # [rows] or [rows, seq]
            if not bool((torch.isin(read, pool) | own).all()):  # each draw: from the pool, or the datum itself
                raise fail(f"{where}: a draw comes from outside the pool", rep)
            _check_self_draws(where, parent, read, agree, pool, options, rep)


def _check_self_draws(where: str, parent: Tensor, read: Tensor, agree: Tensor, pool: Tensor,
                      options: SamplingOptions, rep: Reproducer) -> None:
    """A draw returns its parent's datum only when no other pool datum agrees (unless ``allow_self``)."""
    if options.allow_self:
        return
    others = agree.clone()  # [n, pool] or [n, pool, seq]
    others[pool, torch.arange(pool.shape[0])] = False  # a datum does not count as its own alternative
    has_other = others.any(1)[parent]  # [rows] or [rows, seq]
    own = read == (parent if read.dim() == 1 else parent[:, None])
    if bool((own & has_other).any()):
        raise fail(f"{where}: a draw returned its parent's datum although another pool datum agrees", rep)


def _draw_table(data: Assignments, ids: Tensor) -> dict[tuple, tuple]:
    """The draws as functions of what they are drawn for: (node, datum key) -> (datum read, its unclaimed data).
    Node mode keys a node's draws by the parent datum (``read``, dataset ids after ``localize(whole=True)``); copy
    mode by the root example its rows belong to."""
    out: dict[tuple, tuple] = {}
    for path, a in data.by_path.items():
        if a.read is None:  # copy mode: row i is root example ids[i]
            keys, rows = ids.tolist(), torch.arange(ids.shape[0])[:, None]  # [batch, 1]
        else:
            table = a.read if a.read.dim() == 2 else a.read[:, None]  # [n, 1] or [n, seq]
            keys = (table[:, 0] >= 0).nonzero()[:, 0].tolist()
            rows = table[keys]  # [keys, 1 or seq]
        for key, row in zip(keys, rows, strict=True):
            unclaimed = tuple(v[row].tolist() for _, v in sorted((a.unclaimed or {}).items()))
            out[(path, key)] = (a.datum[row].tolist(), a.other[row].tolist(), unclaimed)
    return out


def draws_independent_of_batching(model: HookedTransformer, claim: Claim | nx.DiGraph, tokens: Tensor, *,
                                  seed: int = 0, options: SamplingOptions = SamplingOptions(),
                                  batch_size: int = 2) -> None:
    """Evaluated in batches of ``batch_size``, in reverse order, each with a fresh sampler (as another process
    would), every draw and every example's logits equal the single-batch run's: draws depend on the seed, the
    node and the datum only (so neither the batch size nor the number of processes changes them)."""
    wide = float64_copy(model)
    claim = as_claim(claim, model)
    tree, structure, n = treeify(claim, options.unit), Structure.of(model), tokens.shape[0]
    clean = clean_run(wide, tokens)  # the whole dataset's clean run, as ``run`` keeps it
    rep = Reproducer.of(model, claim, tokens, seed, options)

    def batch(ids: Tensor) -> tuple[dict, Tensor]:
        sampler = Sampler(tokens, seed=seed, pool_size=options.pool, allow_self=options.allow_self)
        drawn = assign(tree, sampler, ids, options=options, structure=structure)
        _, (local,) = localize([drawn], ids, n, whole=True)
        return _draw_table(local, ids), evaluate(wide, tree, local, clean)[0]

    whole_table, whole_logits = batch(torch.arange(n))
    starts = list(range(0, n, batch_size))[::-1]
    parts = [batch(torch.arange(s, min(s + batch_size, n))) for s in starts]
    for table, _ in parts:
        for key, value in table.items():
            if key in whole_table and whole_table[key] != value:
                raise fail(f"batches of {batch_size}: node {key[0][-1]!r}'s draws for datum {key[1]} differ from "
                           f"the single batch's ({value} vs {whole_table[key]})", rep)
    logits = torch.cat([p[1] for p in parts[::-1]])  # [n, seq, d_vocab]
    if not _close(logits, whole_logits):
        raise fail(f"batches of {batch_size} give other logits than one batch: {_gap(logits, whole_logits)}", rep)


def adding_paths_keeps_other_draws(model: HookedTransformer, small: Claim | nx.DiGraph, big: Claim | nx.DiGraph,
                                   tokens: Tensor, *, seed: int = 0,
                                   options: SamplingOptions = SamplingOptions()) -> None:
    """Every node of ``small`` draws the same data in ``big`` (a claim with more paths): a node's draws depend
    on its identity and the datum, not on the rest of the claim."""
    a, b = as_claim(small, model), as_claim(big, model)
    structure = Structure.of(model)
    ids = torch.arange(tokens.shape[0])
    tables = []
    for claim in (a, b):
        tree = treeify(claim, options.unit)
        sampler = Sampler(tokens, seed=seed, pool_size=options.pool, allow_self=options.allow_self)
        drawn = assign(tree, sampler, ids, options=options, structure=structure)
        tables.append(_draw_table(localize([drawn], ids, ids.shape[0], whole=True)[1][0], ids))
    rep = Reproducer.of(model, b, tokens, seed, options)
    for key, value in tables[0].items():
        if key in tables[1] and tables[1][key] != value:
            raise fail(f"adding paths changed node {key[0][-1]!r}'s draws for datum {key[1]}: {value} -> "
                       f"{tables[1][key]} (the smaller claim's lines:\n    "
                       + "\n    ".join(Reproducer.of(model, a, tokens, seed, options).claim) + ")", rep)


def scrubbing_a_component_is_activation_patching(model: HookedTransformer, component: Head | Mlp, tokens: Tensor,
                                                 *, seed: int = 0) -> None:
    """The full claim with every input of ``component`` unclaimed equals TransformerLens activation patching of
    its output from the datum its unclaimed inputs read (float64). Node mode: one draw for the component; in
    copy mode each path through it draws its own datum, which is path patching, not activation patching."""
    wide = float64_copy(model)
    claim = without_inputs(validate(full_graph(model), model), str(component))
    options = SamplingOptions()
    out = scrub(wide, claim, tokens, seed=seed, options=options)
    node = next(n for n in out.tree.walk() if n.component == component)
    source = tokens[out.data[node].other]  # [batch, seq] (node mode: rows are the batch's own data)
    expected = activation_patch_logits(wide, tokens, source, component)  # [batch, seq, d_vocab]
    if not _close(out.logits, expected):
        raise fail(f"resampling every input of {component} is not activation patching of it: "
                   f"{_gap(out.logits, expected)}", Reproducer.of(model, claim, tokens, seed, options))


def trivial_masks_are_exact(model: HookedTransformer, claim: Claim | nx.DiGraph, tokens: Tensor, *, seed: int = 0,
                            options: SamplingOptions = SamplingOptions(), limit: int = 4,
                            masked_only: bool = False) -> None:
    """For each of the first ``limit`` claimed head inputs (``masked_only``: those with a query-key mask): an
    all-true mask on its edges is the unmasked claim (bit for bit), and an all-false one is the claim with
    those edges dropped (float64)."""
    wide = float64_copy(model)
    claim = as_claim(claim, model)
    inputs = [key for key in head_inputs(claim) if has_mask(claim, key) or not masked_only]
    for into in inputs[:limit]:
        plain = scrub(wide, with_mask(claim, into, None), tokens, seed=seed, options=options).logits
        every = with_mask(claim, into, all_keys())
        if not torch.equal(scrub(wide, every, tokens, seed=seed, options=options).logits, plain):
            raise fail(f"an all-true query-key mask on {into[0]}:{into[1].value} changes the logits",
                       Reproducer.of(model, every, tokens, seed, options))
        none = with_mask(claim, into, no_keys())
        dropped = scrub(wide, without_masked(none, into), tokens, seed=seed, options=options).logits
        got = scrub(wide, none, tokens, seed=seed, options=options).logits
        if not _close(got, dropped):
            raise fail(f"an all-false query-key mask on {into[0]}:{into[1].value} is not the input resampled: "
                       f"{_gap(got, dropped)}", Reproducer.of(model, none, tokens, seed, options))


def self_draw_rates(model: HookedTransformer, claim: Claim | nx.DiGraph, tokens: Tensor, *, seed: int = 0,
                    options: SamplingOptions = SamplingOptions()) -> dict[str, float]:
    """Per node with a feature: the share of its feature draws that could only return the datum itself."""
    out = scrub(model, claim, tokens, seed=seed, options=options)
    rates = out.data.self_draws()
    return {label: rates[label] for label in rates if _has_feature(out.tree, label)}


def _has_feature(tree: TreeNode, label: str) -> bool:
    return any(n.feature is not None and (n.path[-1] == label or " <- ".join(n.path) == label) for n in tree.walk())


def every_feature_resamples(model: HookedTransformer, claim: Claim | nx.DiGraph, tokens: Tensor, *, seed: int = 0,
                            options: SamplingOptions = SamplingOptions()) -> dict[str, float]:
    """No node's feature draws all return the datum itself (the claim would be untested there: the node is
    computed on its own datum, as in the clean run). Returns the self-draw rate of every node with a feature."""
    claim = as_claim(claim, model)
    rates = self_draw_rates(model, claim, tokens, seed=seed, options=options)
    never = sorted(node for node, rate in rates.items() if rate >= 1.0)
    if never:
        feats = {n.id: n.feature.name for n in claim.nodes if n.feature is not None}
        named = ", ".join(f"{n!r} (feature {feats.get(n, '?')!r})" for n in never)
        raise fail(f"the feature draws of {named} all returned the datum itself: no other example of the "
                   f"{tokens.shape[0]} agrees on the feature, so the claim on it is never tested",
                   Reproducer.of(model, claim, tokens, seed, options))
    return rates

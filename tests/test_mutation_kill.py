"""The kill suite of the mutation runs (docs/testing.md, "Mutation score"): the sampler, treeification,
query-key masks and the evaluator checked through the kit (``scrub.testing``) on tiny float64 models, with no
hypothesis search, so that one mutant costs seconds. The sampler is compared with a literal reading of its rule
(a uniformly chosen other pool item of the group, in pool order); the engine with the naive reference and the
invariants, over both units, independent draws, pools, ``allow_self``, per-position features and every channel
of a query-key mask."""

from __future__ import annotations

import networkx as nx
import pytest
import torch

from scrub.claims.features import Feature
from scrub.claims.hypothesis import add_path, empty_graph, full_graph, validate
from scrub.claims.masks import MaskError, QKMask, all_keys, no_keys, previous_position, within
from scrub.claims.sites import Channel, Head, Mlp
from scrub.claims.structure import Structure
from scrub.engine import treeify as tf
from scrub.engine.compute import clean_run
from scrub.engine.evaluator import evaluate, evaluate_many
from scrub.engine.sampling import Sampler, draw, group_items, pool_ids
from scrub.engine.treeify import SamplingOptions, Unit, assign, assign_data, localize, treeify
from scrub.errors import ScrubError
from scrub.testing import invariants as inv
from scrub.testing.graphs import as_claim
from scrub.testing.models import MlpKind, ModelSpec, Norm, Positions, random_tokens
from scrub.testing.pieces import FromPosition, KeyMod, TokenBelow, TokenMod, feature, qk_mask

SPEC = ModelSpec(n_heads=2, mlp=MlpKind.PLAIN, float64=True, seed=3)


@pytest.fixture(scope="module")
def model():
    return SPEC.build()


@pytest.fixture(scope="module")
def tokens():
    return random_tokens(8, 6, seed=1)  # [8, 6]


# --- the sampler, against a literal reading of its rule ----------------------------------------------------

def naive_draw(codes: torch.Tensor, pool: torch.Tensor, items: list[int], uniform: list[float], *, per_position: bool,
               allow_self: bool) -> tuple[list[int], list[bool]]:
    """(datum drawn, forced self) per item: the floor(u * n)-th of the n pool items of its group other than
    itself (any, with ``allow_self``), in ascending item order; the item itself when there is none."""
    width = codes.shape[1] if per_position else 1

    def key(item: int):
        d, s = divmod(item, width)
        return (s, int(codes[d, s])) if per_position else tuple(codes[d].tolist())

    pool_items = [p * width + s for p in pool.tolist() for s in range(width)]
    data, forced = [], []
    for item, u in zip(items, uniform, strict=True):
        cands = sorted(p for p in pool_items if key(p) == key(item) and (allow_self or p != item))
        data.append(cands[int(u * len(cands))] // width if cands else item // width)
        forced.append(not cands)
    return data, forced


CODES = torch.tensor([[0, 1], [1, 1], [0, 1], [2, 0], [1, 1], [0, 0], [0, 1], [2, 0]])  # [8, 2]


@pytest.mark.parametrize("per_position", [False, True])
@pytest.mark.parametrize("pool", [torch.arange(8), torch.tensor([1, 2, 5, 6])], ids=["all", "part"])
@pytest.mark.parametrize("allow_self", [False, True])
def test_draw_is_the_literal_rule(per_position, pool, allow_self):
    groups = group_items(CODES, pool, per_position=per_position)
    width = 2 if per_position else 1
    items = torch.arange(8 * width)
    uniform = torch.rand(items.shape[0], generator=torch.Generator().manual_seed(5))
    uniform[:3] = torch.tensor([0.0, 0.999999, 0.5])
    out = draw(groups, items, uniform, allow_self=allow_self)
    data, forced = naive_draw(CODES, pool, items.tolist(), uniform.tolist(), per_position=per_position,
                              allow_self=allow_self)
    assert out.datum.tolist() == data
    assert out.forced_self.tolist() == forced
    assert out.is_self.tolist() == [d == i // width for d, i in zip(data, items.tolist(), strict=True)]


@pytest.mark.parametrize("per_position", [False, True])
def test_group_items_fields(per_position):
    pool = torch.tensor([0, 3, 4, 6])
    g = group_items(CODES, pool, per_position=per_position)
    width = 2 if per_position else 1
    assert g.width == width and g.gid.shape == (8 * width,)
    pool_items = sorted(p * width + s for p in pool.tolist() for s in range(width))
    assert sorted(g.members.tolist()) == pool_items
    assert g.gid[g.members].tolist() == sorted(g.gid[g.members].tolist())  # sorted by group
    for grp in range(int(g.gid.max()) + 1):
        block = g.members[int(g.start[grp]): int(g.start[grp]) + int(g.count[grp])].tolist()
        assert block == sorted(i for i in pool_items if int(g.gid[i]) == grp)
        assert [int(g.rank[i]) for i in block] == list(range(len(block)))
    assert all(int(g.rank[i]) == -1 for i in range(8 * width) if i not in pool_items)
    same = [[int(g.gid[a]) == int(g.gid[b]) for b in range(8 * width)] for a in range(8 * width)]
    key = (lambda i: (i % 2, int(CODES[i // 2, i % 2]))) if per_position else (lambda i: tuple(CODES[i].tolist()))
    assert same == [[key(a) == key(b) for b in range(8 * width)] for a in range(8 * width)]


def test_group_items_of_no_codes_is_one_group():
    g = group_items(torch.zeros(5, 0, dtype=torch.long), torch.arange(5), per_position=False)
    assert g.gid.tolist() == [0] * 5 and g.count.tolist() == [5] and g.start.tolist() == [0]


def test_draw_alone_in_its_group_is_forced_self():
    codes = torch.tensor([[0], [1], [1]])
    out = draw(group_items(codes, torch.arange(3), per_position=False), torch.arange(3), torch.zeros(3),
               allow_self=False)
    assert out.datum.tolist() == [0, 2, 1] and out.forced_self.tolist() == [True, False, False]
    assert out.is_self.tolist() == [True, False, False]
    allowed = draw(group_items(codes, torch.arange(3), per_position=False), torch.arange(3),
                   torch.tensor([0.0, 0.0, 0.99]), allow_self=True)
    assert allowed.datum.tolist() == [0, 1, 2] and allowed.forced_self.tolist() == [False] * 3
    assert allowed.is_self.tolist() == [True] * 3


def test_draw_from_outside_the_pool():
    """An item outside the pool draws among the whole of its group's pool items (nothing to skip)."""
    codes = torch.tensor([[0], [0], [0], [0]])
    g = group_items(codes, torch.tensor([1, 2]), per_position=False)
    out = draw(g, torch.tensor([0, 0, 3, 1]), torch.tensor([0.0, 0.6, 0.9, 0.9]), allow_self=False)
    assert out.datum.tolist() == [1, 2, 2, 2] and out.forced_self.tolist() == [False] * 4
    lone = draw(group_items(codes, torch.tensor([2]), per_position=False), torch.tensor([2, 0]),
                torch.tensor([0.5, 0.5]), allow_self=False)
    assert lone.datum.tolist() == [2, 2] and lone.forced_self.tolist() == [True, False]


def test_pool_ids():
    assert pool_ids(6, None, 0).tolist() == list(range(6))
    assert pool_ids(6, 6, 0).tolist() == list(range(6)) and pool_ids(6, 9, 0).tolist() == list(range(6))
    part = pool_ids(10, 4, 3)
    assert part.shape == (4,) and part.tolist() == sorted(set(part.tolist())) and bool((part < 10).all())
    assert torch.equal(part, pool_ids(10, 4, 3))
    assert len({tuple(pool_ids(10, 4, s).tolist()) for s in range(6)}) > 1  # the seed chooses
    assert pool_ids(10, 5, 0).shape == (5,)


def test_sampler_uniforms_are_keyed_by_seed_path_and_purpose():
    s = Sampler(random_tokens(6, 4), seed=2)
    u = s.uniform(("node", "a"), "feature", 3)
    assert u.shape == (6, 3) and bool(((u >= 0) & (u < 1)).all())
    assert torch.equal(u, Sampler(random_tokens(6, 4), seed=2).uniform(("node", "a"), "feature", 3))
    assert s.uniform(("node", "a"), "feature", 3) is u  # cached
    for other in (s.uniform(("node", "b"), "feature", 3), s.uniform(("node", "a"), "unclaimed", 3),
                  Sampler(random_tokens(6, 4), seed=3).uniform(("node", "a"), "feature", 3)):
        assert not torch.equal(u, other)
    assert s.n == 6 and s.pool.tolist() == list(range(6))
    assert Sampler(random_tokens(6, 4), seed=2, pool_size=3).pool.shape == (3,)


@pytest.mark.parametrize("allow_self", [False, True])
def test_sampler_agreeing(allow_self):
    toks = torch.tensor([[0, 1, 2], [1, 1, 0], [0, 2, 2], [1, 0, 0], [0, 1, 1], [1, 2, 0]])  # [6, 3]
    s = Sampler(toks, seed=4, allow_self=allow_self)
    whole, per = feature(TokenMod(2, 0)), feature(TokenMod(2, None))
    data = torch.tensor([0, 3, 5, 0])
    d = s.agreeing(whole, data, ("node", "x"), "feature")
    assert d.datum.shape == (4,) and d.forced_self.shape == (4,) and d.is_self.shape == (4,)
    u = s.uniform(("node", "x"), "feature", 1)[data, 0]
    ref, forced = naive_draw(toks[:, :1] % 2, s.pool, data.tolist(), u.tolist(), per_position=False,
                             allow_self=allow_self)
    assert d.datum.tolist() == ref and d.forced_self.tolist() == forced
    by = torch.tensor([1, 2, 3, 4])
    u_by = s.uniform(("node", "x"), "feature", 1)[by, 0]
    assert s.agreeing(whole, data, ("node", "x"), "feature", by).datum.tolist() == naive_draw(
        toks[:, :1] % 2, s.pool, data.tolist(), u_by.tolist(), per_position=False, allow_self=allow_self)[0]
    p = s.agreeing(per, data, ("node", "x"), "feature")
    assert p.datum.shape == (4, 3) and p.forced_self.shape == (4, 3) and p.is_self.shape == (4, 3)
    up = s.uniform(("node", "x"), "feature", 3)[data]  # [4, 3]
    items = (data[:, None] * 3 + torch.arange(3)).reshape(-1).tolist()
    ref, forced = naive_draw(toks % 2, s.pool, items, up.reshape(-1).tolist(), per_position=True,
                             allow_self=allow_self)
    assert p.datum.reshape(-1).tolist() == ref and p.forced_self.reshape(-1).tolist() == forced
    none = s.agreeing(None, data, ("node", "x"), "unclaimed")
    assert none.datum.shape == (4,) and (allow_self or not bool((none.datum == data).any()))
    assert s.groups(whole) is s.groups(whole) and s.groups(None).count.tolist() == [6]



def test_seeded_draws_are_stable():
    """Pinned values: a seed names the same pool and the same uniforms in every version, so that committed
    results (experiments/results) re-run to the same numbers; a change of the seed derivation must be deliberate."""
    assert pool_ids(10, 4, 3).tolist() == [1, 3, 4, 6]
    u = Sampler(torch.zeros(3, 2, dtype=torch.long), seed=1).uniform(("node", "a"), "feature", 1)[:, 0]
    assert u.tolist() == pytest.approx([0.9190760254859924, 0.36412495374679565, 0.5453998446464539], abs=0)


def test_per_position_draws_on_two_positions():
    toks = torch.tensor([[0, 1], [0, 1], [1, 1], [0, 0]])  # [4, 2]
    d = Sampler(toks, seed=0).agreeing(feature(TokenMod(2, None)), torch.arange(4), ("node", "x"), "feature")
    assert d.datum.shape == (4, 2) and d.forced_self.shape == (4, 2)
    assert bool((toks[d.datum, torch.arange(2)] % 2 == toks % 2).all())

# --- query-key masks --------------------------------------------------------------------------------------

def test_mask_factories():
    q, k = torch.arange(5)[:, None], torch.arange(5)[None, :]
    assert torch.equal(previous_position().matrix(5), k == q - 1)
    assert torch.equal(within(0).matrix(5), k == q) and torch.equal(within(2).matrix(5), (q - k >= 0) & (q - k <= 2))
    assert torch.equal(all_keys().matrix(5), torch.ones(5, 5, dtype=torch.bool))
    assert torch.equal(no_keys().matrix(5), torch.zeros(5, 5, dtype=torch.bool))
    assert [str(m) for m in (previous_position(), within(3), all_keys(), no_keys())] == [
        "previous_position", "within(3)", "all_keys", "no_keys"]
    assert within(3) == within(3) and within(3) != within(2) and all_keys() != no_keys()
    assert previous_position() == previous_position()
    assert all_keys().matrix(1).tolist() == [[True]] and within(0).matrix(1).tolist() == [[True]]


def test_mask_matrix_broadcasts_and_copies():
    m = QKMask("even queries", lambda q, k: q % 2 == 0)  # [seq, 1]
    out = m.matrix(4)
    assert out.shape == (4, 4) and out.tolist() == [[i % 2 == 0] * 4 for i in range(4)]
    out[0, 0] = False  # a fresh tensor, not a view of the broadcast
    assert m.matrix(4)[0, 0] and bool(QKMask("one", lambda q, k: torch.tensor(True)).matrix(3).all())


def test_take_on_a_device():
    """``take`` (datum maps into clean tensors) builds its position index on the index's device."""
    from scrub.engine.reads import take
    t, index = torch.zeros(4, 3, 2, device="meta"), torch.zeros(2, 3, dtype=torch.long, device="meta")
    assert take(t, index).device.type == "meta" and take(t, index).shape == (2, 3, 2)


def test_mask_matrix_on_a_device():
    """Positions are built on the device asked for (the meta device stands in for a GPU here)."""
    for mask in (previous_position(), within(1), all_keys(), no_keys(), QKMask("diag", lambda q, k: k == q)):
        out = mask.matrix(3, device="meta")
        assert out.device.type == "meta" and out.shape == (3, 3) and out.dtype == torch.bool
    elsewhere = QKMask("cpu ones", lambda q, k: torch.ones(1, 1, dtype=torch.bool))
    with pytest.raises(MaskError, match="a tensor on cpu for positions on meta: build it from the positions"):
        elsewhere.matrix(3, device="meta")


@pytest.mark.parametrize("fn, needle", [
    (lambda q, k: 1 / 0, "failed on positions of a sequence of 4 (query [4, 1], key [1, 4]): ZeroDivisionError"),
    (lambda q, k: [[True]], "a list, not a torch bool tensor"),
    (lambda q, k: (k == q).long(), "an int64 tensor: masks must be bool"),
    (lambda q, k: (k == q).float(), "a float32 tensor: masks must be bool"),
    (lambda q, k: torch.ones(3, 4, dtype=torch.bool), "shape [3, 4] for a sequence of 4"),
    (lambda q, k: torch.ones(1, 1, 4, dtype=torch.bool), "shape [1, 1, 4]"),
])
def test_mask_matrix_refuses(fn, needle):
    with pytest.raises(MaskError) as err:
        QKMask("bad", fn).matrix(4)
    assert needle in str(err.value) and "'bad'" in str(err.value)


def test_mask_arguments_refused():
    for seq in (0, True, 2.0):
        with pytest.raises(MaskError, match="seq must be a positive int"):
            previous_position().matrix(seq)
    for window in (-1, True, 1.5):
        with pytest.raises(MaskError, match="window is the number of positions back"):
            within(window)
    with pytest.raises(MaskError, match="name is a non-empty string"):
        QKMask("", lambda q, k: k == q)
    with pytest.raises(MaskError, match="name is a non-empty string"):
        QKMask(3, lambda q, k: k == q)
    with pytest.raises(MaskError, match="'x': fn must be a function .* got int"):
        QKMask("x", 3)


# --- treeification ----------------------------------------------------------------------------------------

def chain() -> nx.DiGraph:
    """1.0's K reads 0.1 (V from the embedding through keys at most one back, on token-0 parity), its Q the
    embedding; 0.0 reaches the logits directly and through 1.0's V."""
    g = nx.DiGraph()
    add_path(g, "embed", ("0.1", "v"), ("1.0", "k"), "logits")
    add_path(g, "embed", ("1.0", "q"), "logits")
    add_path(g, "embed", ("0.0", "v"), ("1.0", "v"))
    add_path(g, "0.0", "logits")
    g.nodes["0.1"]["feature"] = feature(TokenMod(2, 0))
    g.edges["embed", "0.1"]["qk_mask"] = within(1)
    return g


def test_treeify_node_and_copy(model):
    claim = as_claim(chain(), model)
    node = treeify(claim, Unit.NODE)
    assert node.shared and node.path == ("node", "logits")
    nodes = list(node.walk())
    assert len(nodes) == len({id(n) for n in nodes}) == 5  # logits, 1.0, 0.1, 0.0, embed: shared once each
    order = [n.path[-1] for n in nodes]
    assert order[0] == "logits" and order[-1] == "embed" and order.index("1.0") < order.index("0.0")
    assert all(n.shared for n in nodes)
    copy = treeify(claim, Unit.COPY)
    assert not copy.shared and copy.path == ("logits",)
    paths = sorted(n.path for n in copy.walk())
    assert ("logits", "1.0:in", "0.1:k", "embed:v") in paths and ("logits", "0.0:in") in paths
    assert ("logits", "1.0:in", "0.0:v") in paths and len(paths) == len(set(paths)) == 9
    masked = [i for n in copy.walk() for i in n.inputs if i.qk_mask is not None]
    assert len(masked) == 1 and masked[0].qk_mask == within(1) and masked[0].channel == Channel.V
    by_path = {n.path: n for n in copy.walk()}
    assert by_path[("logits", "1.0:in", "0.1:k")].feature is not None
    assert by_path[("logits", "1.0:in")].component == Head(1, 0)
    assert {i.channel for i in by_path[("logits", "1.0:in")].inputs} == {Channel.Q, Channel.K, Channel.V}
    for empty, path in ((treeify(validate(empty_graph(), model), Unit.NODE), ("node", "logits")),
                        (treeify(validate(empty_graph(), model), Unit.COPY), ("logits",))):
        assert empty.path == path and empty.inputs == () and empty.shared == (path[0] == "node")


def test_treeify_keeps_positions(model):
    claim = as_claim(variants()["positions"], model)
    for unit in (Unit.NODE, Unit.COPY):
        kept = [i.positions.fn for n in treeify(claim, unit).walk() for i in n.inputs if i.positions is not None]
        assert kept == [FromPosition(2)]


def test_treeify_refuses_too_many_copies(model, monkeypatch):
    claim = as_claim(chain(), model)
    monkeypatch.setattr(tf, "MAX_TREE_NODES", 9)
    assert len(list(treeify(claim, Unit.COPY).walk())) == 9  # exactly the limit: built
    monkeypatch.setattr(tf, "MAX_TREE_NODES", 8)
    with pytest.raises(tf.TreeTooLargeError, match="unrolls into more than 8 path copies"):
        treeify(claim, Unit.COPY)


def test_unroll(model, tokens, monkeypatch):
    """The node-mode graph unrolled for the naive reference: one copy per path, data in copy mode."""
    claim = as_claim(chain(), model)
    for options in (SamplingOptions(), SamplingOptions(independent=True, allow_self=True)):
        data = assign_data(treeify(claim), tokens, seed=0, options=options, structure=Structure.of(model))
        tree, copies = tf.unroll(treeify(claim), data)
        assert copies.options == SamplingOptions(options.independent, options.allow_self, Unit.COPY)
        assert len(list(tree.walk())) == 9 and set(copies.by_path) == {n.path for n in tree.walk()}
        for n in tree.walk():
            a = copies.by_path[n.path]
            assert a.forced_self.dtype == torch.bool and a.forced_self.numel() == 0
            assert torch.equal(a.other_is_self, a.other == a.datum)
        assert tree.path == ("logits",) and ("logits", "1.0:in", "0.1:k") in copies.by_path
        assert [n.feature for n in tree.walk() if n.path[-1] == "0.1:k"] == [claim.node("0.1").feature]
    per = as_claim(variants()["per-position"], model)
    tree, copies = tf.unroll(treeify(per), assign_data(treeify(per), tokens, seed=0))
    node = next(n for n in tree.walk() if n.path == ("logits", "1.0:in", "0.1:k"))
    assert node.inputs == () and node.feature == per.node("0.1").feature and len(node.pieces) == 6
    assert [p.path[-1] for p in node.pieces] == [f"@{s}" for s in range(6)]
    monkeypatch.setattr(tf, "MAX_TREE_NODES", 9)
    tf.unroll(treeify(claim), data)  # exactly the limit
    monkeypatch.setattr(tf, "MAX_TREE_NODES", 8)
    with pytest.raises(tf.TreeTooLargeError, match="the claim unrolls into more than 8 path copies"):
        tf.unroll(treeify(claim), data)


def test_assign_data_draws_from_the_pool_and_allows_self(model, tokens):
    """``assign_data`` hands the options' pool and ``allow_self`` to its sampler: every draw is a pool datum
    (or, for a feature draw, its parent's own), and with ``allow_self`` some draws return the datum itself."""
    claim = as_claim(chain(), model)
    for seed in range(3):
        pool = pool_ids(8, 3, seed)
        data = assign_data(treeify(claim), tokens, seed=seed, options=SamplingOptions(pool=3))
        for path, a in data.by_path.items():
            assert bool(torch.isin(a.other, pool).all()), path
            if a.keys is not None and path[-1] == "0.1":
                drawn = a.datum[a.rows]  # [keys]
                assert bool((torch.isin(drawn, pool) | (drawn == a.keys)).all())
    same = Feature("constant", lambda t: t[:, :1] * 0)
    g = chain()
    g.nodes["0.1"]["feature"] = same
    selfs = [bool(a.forced_self.any()) for seed in range(4)
             for p, a in assign_data(treeify(as_claim(g, model)), tokens, seed=seed,
                                     options=SamplingOptions(allow_self=True)).by_path.items() if p[-1] == "0.1"]
    assert any(selfs)  # 8 agreeing data: a draw returns itself one time in 8


def test_assign_refuses(model, tokens):
    claim = as_claim(chain(), model)
    sampler = Sampler(tokens, seed=0)
    with pytest.raises(ScrubError, match="built for unit 'node' but the sampling options say 'copy': build it with"):
        assign(treeify(claim, Unit.NODE), sampler, torch.arange(8), options=SamplingOptions(unit=Unit.COPY))
    with pytest.raises(ScrubError, match="built for unit 'copy' but the sampling options say 'node': build it with"):
        assign(treeify(claim, Unit.COPY), sampler, torch.arange(8))
    with pytest.raises(ScrubError, match=r"^independent draws need the model's structure: assign\(\.\.\., "
                                         r"structure=Structure\.of\(model\)\)$"):
        assign(treeify(claim), sampler, torch.arange(8), options=SamplingOptions(independent=True))
    g = chain()
    g.nodes["0.1"]["feature"] = feature(TokenMod(2, None))
    with pytest.raises(ScrubError, match="per-position feature"):
        assign(treeify(as_claim(g, model), Unit.COPY), sampler, torch.arange(8),
               options=SamplingOptions(unit=Unit.COPY))


def test_assignment_draws(model, tokens):
    """Node mode draws, literally: the root on the batch, each child on its parents' data (a feature node on
    its agreeing draws), every node's unclaimed datum drawn for its own data; copy mode row by row."""
    claim = as_claim(chain(), model)
    root = treeify(claim)
    ids = torch.tensor([1, 4, 6])
    data = assign(root, Sampler(tokens, seed=7), ids)
    probe = Sampler(tokens, seed=7)
    by = {n.path[-1]: data[n] for n in root.walk()}
    assert torch.equal(by["logits"].datum, ids) and torch.equal(by["1.0"].datum, ids)
    parents = torch.unique(torch.cat([by["1.0"].datum]))
    feat = probe.agreeing(claim.node("0.1").feature, parents, ("node", "0.1"), "feature")
    assert torch.equal(by["0.1"].keys, parents) and torch.equal(by["0.1"].datum, torch.unique(feat.datum))
    assert torch.equal(by["0.1"].datum[by["0.1"].rows], feat.datum)
    assert torch.equal(by["0.1"].forced_self, feat.forced_self)
    assert torch.equal(by["0.0"].keys, torch.unique(torch.cat([ids, ids])))
    for name, a in by.items():
        other = probe.agreeing(None, a.datum, ("node", name), "unclaimed")
        assert torch.equal(a.other, other.datum) and torch.equal(a.other_is_self, other.is_self)
        assert a.unclaimed is None
    g = chain()
    g.nodes["1.0"]["feature"] = feature(TokenMod(3, 1))  # 0.1's copy then draws for other data than the batch
    copy = treeify(as_claim(g, model), Unit.COPY)
    opts = SamplingOptions(unit=Unit.COPY)
    cdata = assign(copy, Sampler(tokens, seed=7), ids, options=opts)
    assert not torch.equal(cdata.by_path[("logits", "1.0:in")].datum, ids)
    parent_of = {i.child.path: n.path for n in copy.walk() for i in n.inputs}
    for n in copy.walk():
        a = cdata[n]
        assert a.read is None and a.keys is None and a.datum.shape == (3,)
        other = probe.agreeing(None, a.datum, n.path, "unclaimed", by=ids)
        assert torch.equal(a.other, other.datum) and torch.equal(a.other_is_self, other.is_self)
        parent = cdata.by_path[parent_of[n.path]].datum if n.path in parent_of else ids
        if n.feature is None:
            assert torch.equal(a.datum, parent) and a.forced_self.numel() == 0
        else:  # drawn for the parent's datum with the uniforms of the root example
            d = probe.agreeing(n.feature, parent, n.path, "feature", by=ids)
            assert torch.equal(a.datum, d.datum) and torch.equal(a.forced_self, d.forced_self)
    for n in root.walk():
        assert n.feature is not None or data[n].forced_self.numel() == 0


def test_allow_self_reports_every_self_draw(model, tokens):
    claim = as_claim(chain(), model)
    opts = SamplingOptions(allow_self=True)
    data = assign(treeify(claim), Sampler(tokens, seed=0, allow_self=True), torch.arange(8), options=opts)
    node = next(n for n in treeify(claim).walk() if n.path[-1] == "0.1")
    a = data.by_path[node.path]
    assert torch.equal(a.forced_self, a.datum[a.rows] == a.keys)
    copy = treeify(claim, Unit.COPY)
    ids = torch.arange(8)
    for seed in range(3):
        cdata = assign(copy, Sampler(tokens, seed=seed, allow_self=True), ids,
                       options=SamplingOptions(allow_self=True, unit=Unit.COPY))
        a = cdata.by_path[("logits", "1.0:in", "0.1:k")]  # its parent 1.0 is on the batch itself
        assert torch.equal(a.forced_self, a.datum == ids)


def test_independent_draws(model, tokens):
    claim = as_claim(chain(), model)
    structure = Structure.of(model)
    opts = SamplingOptions(independent=True)
    root = treeify(claim)
    data = assign(root, Sampler(tokens, seed=1), torch.arange(8), options=opts, structure=structure)
    probe = Sampler(tokens, seed=1)
    for n in root.walk():
        a = data[n]
        if n.path[-1] == "embed":
            assert a.unclaimed is None
            continue
        expected = {(c, str(s)) for c in structure.channels(n.component)
                    for s in structure.residual_senders(n.component)}
        assert set(a.unclaimed) == expected
        for (c, s), got in a.unclaimed.items():
            assert torch.equal(got, probe.agreeing(None, a.datum, n.path, f"unclaimed:{c.value}:{s}").datum)
            assert torch.equal(data.unclaimed(n, c, s), got)
    copy = treeify(claim, Unit.COPY)
    ids = torch.tensor([2, 5, 7])
    cdata = assign(copy, Sampler(tokens, seed=1), ids, options=SamplingOptions(independent=True, unit=Unit.COPY),
                   structure=structure)
    for n in copy.walk():
        a = cdata[n]
        if n.path[-1].startswith("embed"):
            assert a.unclaimed is None
            continue
        assert a.unclaimed
        for (c, s), got in a.unclaimed.items():
            assert torch.equal(got, probe.agreeing(None, a.datum, n.path, f"unclaimed:{c.value}:{s}", by=ids).datum)
    plain = assign(root, Sampler(tokens, seed=1), torch.arange(8))
    n = next(x for x in root.walk() if x.path[-1] == "1.0")
    assert plain.unclaimed(n, Channel.Q, "embed") is plain[n].other


def test_self_rates(model, tokens):
    g = chain()
    g.nodes["0.1"]["feature"] = Feature("token 0", lambda t: t[:, :1])  # 8 rows over 20 tokens: some alone
    claim = as_claim(g, model)
    data = assign_data(treeify(claim), tokens, seed=0)
    flags = torch.cat([torch.cat([a.forced_self.reshape(-1).float(), a.other_is_self.float()])
                       for a in data.by_path.values()])
    assert data.self_sample_rate() == pytest.approx(float(flags.mean()))
    rates = data.self_draws()
    assert set(rates) == {"logits", "1.0", "0.1", "0.0", "embed"} and rates["embed"] == 0.0
    a = next(a for p, a in data.by_path.items() if p[-1] == "0.1")
    assert 0 < rates["0.1"] == pytest.approx(float(a.forced_self.float().mean())) and data.self_sample_rate() > 0
    assert tf.Assignments().self_sample_rate() == 0.0
    copy = assign_data(treeify(claim, Unit.COPY), tokens, seed=0, options=SamplingOptions(unit=Unit.COPY))
    assert "logits <- 1.0:in <- 0.1:k" in copy.self_draws()
    cflags = torch.cat([torch.cat([a.forced_self.float(), a.other_is_self.float()]) for a in copy.by_path.values()])
    assert copy.self_sample_rate() == pytest.approx(float(cflags.mean()))


def test_localize(model, tokens):
    claim = as_claim(chain(), model)
    root = treeify(claim)
    ids = torch.tensor([5, 2])
    raw = assign(root, Sampler(tokens, seed=3), ids)
    every, (local,) = localize([raw], ids, 8)
    used = torch.unique(torch.cat([t for a in raw.by_path.values() for t in (a.datum, a.other)]))
    assert every[:2].tolist() == [5, 2] and sorted(every.tolist()) == sorted(set(used.tolist()) | {5, 2})
    for path, a in raw.by_path.items():
        b = local.by_path[path]
        assert torch.equal(every[b.datum], a.datum) and torch.equal(every[b.other], a.other)
        assert torch.equal(b.read[every.tolist().index(int(a.keys[0]))], a.rows[0])
        assert int((b.read >= 0).sum()) == a.keys.shape[0]
    whole, (wlocal,) = localize([raw], ids, 8, whole=True)
    assert whole.tolist() == list(range(8))
    assert all(torch.equal(wlocal.by_path[p].datum, a.datum) for p, a in raw.by_path.items())


# --- the engine against the kit's oracles and invariants ---------------------------------------------------

def variants() -> dict[str, nx.DiGraph]:
    per = chain()
    per.nodes["0.1"]["feature"] = feature(TokenMod(2, None))
    two_per = chain()  # two per-position children of 1.0 (K and V), each with its own rows
    two_per.nodes["0.1"]["feature"] = feature(TokenMod(2, None))
    two_per.nodes["0.0"]["feature"] = feature(TokenMod(3, None))
    pos = chain()
    pos.edges["embed", "1.0"]["positions"] = FromPosition(2)
    two_pos = chain()  # two claims into one node (0.0 into V, 0.1 into K), each at its own positions
    two_pos.edges["0.0", "1.0"]["positions"] = FromPosition(2)
    two_pos.edges["0.1", "1.0"]["positions"] = TokenBelow(10)
    qmask = chain()
    qmask.edges["embed", "1.0"]["qk_mask"] = previous_position()
    kmask = nx.DiGraph()
    add_path(kmask, "embed", ("1.1", "k"), "logits")
    add_path(kmask, "0.0", ("1.1", "q"))
    add_path(kmask, "mlp.0", ("1.1", "v"))
    add_path(kmask, "embed", "mlp.0")
    kmask.edges["embed", "1.1"]["qk_mask"] = qk_mask(KeyMod(2))
    kmask.edges["mlp.0", "1.1"]["qk_mask"] = within(1)
    kmask.nodes["mlp.0"]["feature"] = feature(TokenMod(3, 1))
    recomputed = chain()  # positions on claims of recomputed children: a head (its z) and an MLP (its output)
    recomputed.edges["0.1", "1.0"]["positions"] = TokenBelow(10)
    add_path(recomputed, "embed", "mlp.0", ("1.0", "v"))
    recomputed.edges["mlp.0", "1.0"]["positions"] = FromPosition(1)
    clean_per = nx.DiGraph()  # a per-position child read from the clean run: its datum map gathered per position
    add_path(clean_per, "0.0", "logits")
    add_path(clean_per, "embed", ("1.1", "q"), "logits")
    clean_per.nodes["0.0"]["feature"] = feature(TokenMod(2, None))
    return {"chain": chain(), "per-position": per, "two-per-position": two_per, "clean-per-position": clean_per,
            "positions": pos, "two-positions": two_pos,
            "q-mask": qmask, "k-and-v-masks": kmask,
            "recomputed-positions": recomputed, "logits-mix": logits_mix(), "logits-mlp-clean": logits_mlp_clean(),
            "k-clean-elsewhere": k_clean_elsewhere()}


def logits_mix() -> nx.DiGraph:
    """Every kind of claim into the logits: an MLP read clean on its own draw and a recomputed one, a clean and a
    recomputed head, most restricted to positions (the factored unembedding's every branch)."""
    g = nx.DiGraph()
    add_path(g, "embed", "mlp.0", "logits")  # mlp.0 clean on its own draw
    g.nodes["mlp.0"]["feature"] = feature(TokenMod(3, 1))
    add_path(g, "embed", ("1.0", "v"), "mlp.1", "logits")  # mlp.1 recomputed: it reads the recomputed 1.0
    add_path(g, "0.1", "logits")  # 0.1 clean on the root's unclaimed datum
    add_path(g, "embed", ("1.1", "k"), "logits")  # 1.1 recomputed, unrestricted
    g.edges["mlp.1", "logits"]["positions"] = FromPosition(2)
    g.edges["mlp.0", "logits"]["positions"] = TokenBelow(10)
    g.edges["0.1", "logits"]["positions"] = FromPosition(3)
    return g


def logits_mlp_clean() -> nx.DiGraph:
    """mlp.0 with every input claimed (the layer-0 heads with all theirs), on its own draw: read from the clean
    run on that draw, into the logits at positions (the factored unembedding's clean non-head term); mlp.1
    recomputed, into the logits unrestricted (a non-head term without a mask)."""
    g = nx.DiGraph()
    for head in ("0.0", "0.1"):
        add_path(g, "embed", (head, "qkv"), "mlp.0")
        add_path(g, "pos", (head, "qk"))
    add_path(g, "embed", "mlp.0", "logits")
    g.nodes["mlp.0"]["feature"] = feature(TokenMod(3, 1))
    g.edges["mlp.0", "logits"]["positions"] = TokenBelow(10)
    add_path(g, "embed", "mlp.1", "logits")  # recomputed, at every position (no mask)
    return g


def k_clean_elsewhere() -> nx.DiGraph:
    """1.0's K reads every sender claimed, so the clean input on 1.0's own datum, while its Q and V read the
    clean input on its unclaimed datum: every channel is clean, on two maps, so 1.0 is recomputed."""
    g = nx.DiGraph()
    for child in ("0.0", "0.1"):
        add_path(g, "embed", (child, "qkv"), ("1.0", "k"), "logits")
    add_path(g, "embed", "mlp.0", ("1.0", "k"))
    add_path(g, "embed", ("1.0", "k"))
    return g


OPTIONS = {"node": SamplingOptions(), "copy": SamplingOptions(unit=Unit.COPY),
           "independent": SamplingOptions(independent=True),
           "copy-independent": SamplingOptions(independent=True, unit=Unit.COPY), "pool": SamplingOptions(pool=5),
           "allow-self": SamplingOptions(allow_self=True)}


CASES = [("chain", "node"), ("chain", "copy"), ("chain", "independent"), ("chain", "pool"), ("chain", "allow-self"),
         ("per-position", "node"), ("positions", "node"), ("positions", "copy"), ("q-mask", "independent"),
         ("chain", "copy-independent"), ("k-and-v-masks", "node"), ("recomputed-positions", "node"),
         ("recomputed-positions", "independent"), ("clean-per-position", "node"), ("k-and-v-masks", "copy"),
         ("logits-mix", "node"), ("logits-mix", "copy"), ("k-clean-elsewhere", "node"),
         ("two-per-position", "node"), ("two-positions", "node")]


@pytest.mark.slow
@pytest.mark.parametrize("name, opt", CASES, ids=[f"{n}-{o}" for n, o in CASES])
def test_engine_equals_reference(model, tokens, name, opt):
    g, options = variants()[name], OPTIONS[opt]
    inv.engine_equals_reference(model, g, tokens[:5, :4], seed=2, options=options)


@pytest.mark.parametrize("name", list(variants()))
def test_draws_agree_with_parents(model, tokens, name):
    for options in OPTIONS.values():
        if not (name.endswith("per-position") and options.unit == Unit.COPY):  # refused (test_assign_refuses)
            inv.draws_agree_with_parents(model, variants()[name], tokens, seed=2, options=options)


@pytest.mark.slow
@pytest.mark.parametrize("opt", list(OPTIONS))
def test_draw_invariants(model, tokens, opt):
    options = OPTIONS[opt]
    inv.draws_independent_of_batching(model, chain(), tokens, options=options, batch_size=3)
    big = chain()
    add_path(big, "embed", "mlp.0", ("1.1", "v"), "logits")
    inv.adding_paths_keeps_other_draws(model, chain(), big, tokens, options=options)


@pytest.mark.slow
@pytest.mark.parametrize("opt", ["node", "copy", "independent"])
def test_full_and_empty_claims(model, tokens, opt):
    inv.full_claim_is_clean(model, tokens, options=OPTIONS[opt])
    inv.empty_claim_is_baseline(model, tokens, options=OPTIONS[opt])
    inv.trivial_masks_are_exact(model, variants()["k-and-v-masks"], tokens, options=OPTIONS[opt])


@pytest.mark.slow
@pytest.mark.parametrize("component", [Head(0, 1), Head(1, 0), Mlp(1)], ids=str)
def test_scrubbing_a_component(model, tokens, component):
    inv.scrubbing_a_component_is_activation_patching(model, component, tokens)


@pytest.mark.slow
@pytest.mark.parametrize("spec", [
    ModelSpec(n_heads=2, positions=Positions.ROTARY, rotary_dim=2, n_kv_heads=1, mlp=MlpKind.GATED, float64=True),
    ModelSpec(n_heads=2, positions=Positions.STANDARD, mlp=MlpKind.PLAIN, parallel=True, float64=True),
    ModelSpec(n_heads=2, norm=Norm.NONE, mlp=MlpKind.PLAIN, float64=True),
], ids=["rotary-gqa", "parallel", "no-norm"])
def test_other_architectures(spec, tokens):
    m = spec.build()
    for g in (variants()["k-and-v-masks"], variants()["chain"]):
        inv.engine_equals_reference(m, g, tokens[:5, :4], seed=1)
    inv.full_claim_is_clean(m, tokens[:5])


@pytest.mark.slow
def test_full_graph_with_a_key_mask_through_the_reference(model, tokens):
    """Every input of 1.0 claimed (its plans are the clean input) but its K from the embedding masked to the
    previous position: the masked pairs read the embedding resampled, so 1.0 is recomputed, not read clean."""
    g = full_graph(model)
    g.edges["embed", "1.0"]["qk_mask"] = {"k": previous_position()}
    inv.engine_equals_reference(model, g, tokens[:4, :4], seed=3)


@pytest.mark.slow
def test_full_graph_through_the_reference(model, tokens):
    g = full_graph(model)
    g.nodes["1.0"]["feature"] = Feature("token 0", lambda t: t[:, :1])
    inv.engine_equals_reference(model, g, tokens[:4, :3], seed=3, options=SamplingOptions(independent=True))


@pytest.mark.slow
@pytest.mark.parametrize("name, opt", [("chain", "node"), ("chain", "independent"), ("per-position", "node"),
                                       ("clean-per-position", "node"),
                                       ("k-and-v-masks", "copy"), ("positions", "node"), ("logits-mix", "node"),
                                       ("logits-mix", "copy"), ("logits-mlp-clean", "node"),
                                       ("logits-mlp-clean", "copy")])
def test_logits_at_positions(model, tokens, name, opt):
    """``evaluate_many(..., positions=)`` (the factored unembedding of ``scrub.run``) gives the full logits at
    those positions, for a claim, the full claim (read from the clean run) and the empty one."""
    options, at = OPTIONS[opt], torch.tensor([1, 3, 5])
    for g in (variants()[name], full_graph(model), empty_graph()):
        claim = as_claim(g, model)
        tree = treeify(claim, options.unit)
        data = assign_data(tree, tokens, seed=4, options=options, structure=Structure.of(model))
        clean = clean_run(model, tokens)
        full = evaluate(model, tree, data, clean)[0]  # [batch, seq, d_vocab]
        (part,), _ = evaluate_many(model, [tree], [data], clean, positions=at)
        assert part.shape == (8, 3, full.shape[-1])
        assert torch.allclose(part, full[:, at], atol=inv.ATOL, rtol=inv.RTOL)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["chain", "recomputed-positions", "k-and-v-masks"])
def test_trees_evaluated_together_as_alone(model, tokens, name):
    """``evaluate_many`` stacks several trees' nodes into shared calls; each tree's logits equal its own
    evaluation, also for two claims that differ only below a node both compute on the same data."""
    a = variants()[name]
    b = variants()[name]
    for g in (a, b):
        for node in ("0.1", "mlp.0"):
            if node in g:
                g.nodes[node]["feature"] = feature(TokenMod(2, 0) if g is a else TokenMod(3, 1))
    clean = clean_run(model, tokens)
    trees = [treeify(as_claim(g, model)) for g in (a, b)]
    datas = [assign_data(t, tokens, seed=1) for t in trees]
    together, _ = evaluate_many(model, trees, datas, clean)
    for tree, data, logits in zip(trees, datas, together, strict=True):
        assert torch.allclose(logits, evaluate(model, tree, data, clean)[0], atol=inv.ATOL, rtol=inv.RTOL)
    assert not torch.allclose(together[0], together[1], atol=inv.ATOL, rtol=inv.RTOL)

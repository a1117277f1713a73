"""Path patching (Wang et al. 2022; Goldowsky-Dill et al. 2023) as a special case of treeified evaluation.

Owns ``PatchPath`` (a sender's route to the logits through named receiver inputs), the tree and data
assignments that patch a set of paths, the sender x receiver effect matrix (``patch_matrix``, computed by
the vectorised single-edge code in ``scrub/patching/matrix.py``) and the metrics it reports (its literal
TransformerLens-hook oracle, ``hooked_patch_logits``, is in ``scrub.testing.oracles``).
Any set of paths goes through the tree engine: it becomes a ``TreeNode`` tree in which every copy on a
patched path claims the next copy towards the sender, the sender's copy reads the corrupted datum and
everything unclaimed reads the clean reference, then ``engine.evaluate_many`` runs it.

Data convention: one ``CleanRun`` on ``torch.cat([reference, corrupted])``, so datum ``i`` is reference
row ``i`` and datum ``n + i`` its corrupted partner. Patching a path ``s -> R:c -> logits`` replaces
``s``'s contribution to ``R``'s input ``c`` by its output on the corrupted input and adds the resulting
change of ``R``'s output to the logits directly; all other paths keep their clean values. If a path
and a longer path through it are both patched, the shorter one covers the longer (it patches all inputs
of the sender's copy).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from scrub.claims.sites import (
    HEAD_CHANNELS,
    Channel,
    Component,
    Head,
    Logits,
    Mlp,
    SiteError,
    parse_channel,
    parse_component,
)
from scrub.claims.structure import Structure
from scrub.engine.compute import CleanRun, check_supported, clean_run
from scrub.engine.evaluator import evaluate_many
from scrub.engine.treeify import Assignment, Assignments, TreeInput, TreeNode
from scrub.errors import ScrubError
from scrub.metrics import METRIC_KINDS, Metric, MetricKind, make_metric  # noqa: F401 (defined in scrub.metrics; importable here as before)
from scrub.model.finite import check_weights
from scrub.patching.checks import API, check_connects
from scrub.patching.matrix import matrix_values

TREES_PER_CALL = 64  # trees stacked into one evaluate_many call (bounds the stacked q/k/v inputs)


@dataclass(frozen=True)
class PatchPath:
    """``sender`` -> receivers[0] (through its input channel) -> ... -> logits."""

    sender: Component
    via: tuple[tuple[Component, Channel], ...] = ()

    def __str__(self) -> str:
        return " -> ".join([str(self.sender), *(f"{r}:{c.value}" for r, c in self.via), "logits"])

    def from_logits(self) -> tuple[tuple[Component, Channel], ...]:
        """The (component, channel it enters the previous one through) steps, walking from the logits."""
        comps = [r for r, _ in self.via][::-1] + [self.sender]
        chans = [Channel.IN] + [c for _, c in self.via][::-1]
        return tuple(zip(comps, chans, strict=True))


def parse_path(text: str, model: HookedTransformer) -> PatchPath:
    """``"0.0 -> 1.6:k -> logits"`` (the final ``logits`` may be omitted) into a checked ``PatchPath``."""
    cfg = model.cfg
    parts = [p.strip() for p in text.split("->") if p.strip()]
    if parts and parts[-1] == "logits":
        parts = parts[:-1]
    if not parts:
        raise SiteError(f"empty path {text!r}: write e.g. '0.0 -> 1.6:k -> logits'")
    sender = parse_component(parts[0], cfg)
    if isinstance(sender, Logits):
        raise SiteError(f"path {text!r} starts at the logits; a path starts at a sender")
    via: list[tuple[Component, Channel]] = []
    prev = sender
    for part in parts[1:]:
        name, _, chan = part.partition(":")
        comp = parse_component(name, cfg)
        if isinstance(comp, Head):
            if not chan:
                raise SiteError(f"path {text!r}: say which input of head {comp} the path enters, e.g. '{comp}:k'")
            channel = parse_channel(chan)
            if channel == Channel.IN:
                raise SiteError(f"unknown input channel {chan!r}: heads take 'q', 'k' or 'v'")
        elif isinstance(comp, Mlp) and not chan:
            channel = Channel.IN
        else:
            raise SiteError(f"path {text!r}: {part!r} cannot receive a path step (use heads 'L.H:q|k|v' or 'mlp.L')")
        structure = Structure.of(model)
        if not structure.feeds(prev, comp, channel if isinstance(comp, Head) else None):
            raise SiteError(f"path {text!r}: {comp} is not computed after {prev}, so {prev} cannot feed it "
                            f"({structure.why_not(prev, comp, channel)})")
        via.append((comp, channel))
        prev = comp
    return PatchPath(sender, tuple(via))


# --- the tree and its data ----------------------------------------------------------------------------

def _key(component: Component, channel: Channel) -> str:
    return f"{component}:{channel.value}"


def patch_tree(paths: Sequence[PatchPath]) -> tuple[TreeNode, frozenset[tuple[str, ...]]]:
    """The tree of copies that patches ``paths``, and the tree paths of the copies that read the corrupted
    datum (the senders). Copies off the patched paths are not built: they read the clean reference."""
    trie: dict = {}
    for p in paths:
        node = trie
        for step in p.from_logits()[:-1]:
            node = node.setdefault(step, {})
            if node is _SENDER:
                break
        else:
            node[p.from_logits()[-1]] = _SENDER  # covers any longer path through this sender copy
    senders: set[tuple[str, ...]] = set()

    def build(component: Component, path: tuple[str, ...], sub) -> TreeNode:
        if sub is _SENDER:
            senders.add(path)
            return TreeNode(component, path, None, ())
        inputs = tuple(TreeInput(chan, build(comp, path + (_key(comp, chan),), child), None)
                       for (comp, chan), child in sorted(sub.items(), key=lambda kv: _key(*kv[0])))
        return TreeNode(component, path, None, inputs)

    return build(Logits(), ("logits",), trie), frozenset(senders)


_SENDER: dict = {"__sender__": True}  # trie marker (never mutated)


def patch_assignments(root: TreeNode, senders: frozenset[tuple[str, ...]], n: int) -> Assignments:
    """Sender copies read datum ``n + i`` (corrupted), every other copy datum ``i`` (reference)."""
    # data indices are CPU bookkeeping, like the sampler's draws; they index device tensors as they are
    ref, corr = torch.arange(n, device="cpu"), torch.arange(n, device="cpu") + n  # [n] x2
    no = torch.zeros(n, dtype=torch.bool, device="cpu")  # [n]
    out = Assignments()
    for node in root.walk():
        d = corr if node.path in senders else ref
        out.by_path[node.path] = Assignment(d, d, no, torch.ones(n, dtype=torch.bool, device="cpu"))
    return out


def second_repeat_positions(length: int) -> Tensor:
    """Prediction positions whose next token lies in the second repeat and is predictable by induction
    (BOS + ``length`` tokens repeated twice): t = length + 1 .. 2 * length - 1."""
    return torch.arange(length + 1, 2 * length)  # [length - 1]


# --- evaluation ---------------------------------------------------------------------------------------

def _check_pair(model: HookedTransformer, reference: Tensor, corrupted: Tensor) -> None:
    check_supported(model)
    if reference.shape != corrupted.shape or reference.dim() != 2:
        raise ScrubError(f"reference and corrupted must be token batches of one shape [n, seq]; got "
                         f"{tuple(reference.shape)} and {tuple(corrupted.shape)}")


def pair_run(model: HookedTransformer, reference: Tensor, corrupted: Tensor) -> CleanRun:
    """One clean run over reference rows then corrupted rows."""
    _check_pair(model, reference, corrupted)
    return clean_run(model, torch.cat([reference, corrupted]))  # on [2n, seq]


@torch.no_grad()
def patched_logits(model: HookedTransformer, reference: Tensor, corrupted: Tensor, paths: Sequence[PatchPath],
                   clean: CleanRun | None = None) -> Tensor:
    """Logits [n, seq, d_vocab] on ``reference`` with ``paths`` patched from ``corrupted``."""
    clean = clean or pair_run(model, reference, corrupted)
    root, senders = patch_tree(paths)
    (logits,), _ = evaluate_many(model, [root], [patch_assignments(root, senders, reference.shape[0])], clean)
    return logits


@torch.no_grad()
def patch_effects(model: HookedTransformer, reference: Tensor, corrupted: Tensor,
                  path_sets: Sequence[Sequence[PatchPath]], metric: Callable[[Tensor], Tensor], *,
                  clean: CleanRun | None = None, positions: Tensor | None = None,
                  trees_per_call: int = TREES_PER_CALL) -> Tensor:
    """``metric`` of the logits for each set of patched paths, [n_sets]; copies of many sets share batched
    calls. With ``positions`` only those positions are unembedded (the metric then sees [n, n_pos, vocab])."""
    clean = clean or pair_run(model, reference, corrupted)
    n = reference.shape[0]
    out = []
    for start in range(0, len(path_sets), trees_per_call):
        trees = [patch_tree(ps) for ps in path_sets[start : start + trees_per_call]]
        roots = [t for t, _ in trees]
        datas = [patch_assignments(t, s, n) for t, s in trees]
        values, _ = evaluate_many(model, roots, datas, clean, reduce=metric, positions=positions)
        out += [float(v) for v in values]
    return torch.tensor(out, device="cpu")  # [n_sets] a table of Python floats, returned to the caller


@dataclass(frozen=True)
class PatchMatrix:
    """Effects (patched - clean metric) of every sender -> receiver:channel -> logits path and every
    sender -> logits path. Senders and receivers are heads, and MLPs when asked for (``include_mlps`` or
    ``Mlp`` components in the lists). ``effects[s, r, c]`` is NaN where ``s`` does not feed ``r``'s input
    ``c`` (``Structure.feeds``: ``r`` is not computed after ``s``). An MLP receiver has one input: its
    effect ``s -> mlp.L -> logits`` is written to every channel column (and listed once by ``to_dict``)."""

    senders: tuple[Component, ...]
    receivers: tuple[Component, ...]
    channels: tuple[Channel, ...]
    effects: Tensor  # [sender, receiver, channel], float64
    to_logits: Tensor  # [sender], float64
    metric: str
    clean: float
    corrupted: float

    def to_dict(self) -> dict:
        pairs = {}
        for i, s in enumerate(self.senders):
            for j, r in enumerate(self.receivers):
                for k, c in enumerate(self.channels):
                    if torch.isnan(self.effects[i, j, k]) or (isinstance(r, Mlp) and k > 0):
                        continue
                    name = f"{s} -> {r}" if isinstance(r, Mlp) else f"{s} -> {r}:{c.value}"
                    pairs[name] = float(self.effects[i, j, k])
        return {"metric": self.metric, "clean": self.clean, "corrupted": self.corrupted, "paths": pairs,
                "to_logits": {f"{s} -> logits": float(v) for s, v in zip(self.senders, self.to_logits, strict=True)}}

    def _repr_html_(self) -> str:
        """The notebook view: the effects as a heatmap and as a graph, top k (``scrub.views.report``)."""
        from scrub.views.report import patch_html

        return patch_html(self)

    def to_html(self, path: str | Path) -> Path:
        """The notebook view as one self-contained HTML page at ``path``."""
        from scrub.views.report import write_patch

        return write_patch(self, path)

    def top(self, k: int = 10) -> list[tuple[str, float]]:
        """The ``k`` paths with the largest absolute effect."""
        d = self.to_dict()
        items = list(d["paths"].items()) + list(d["to_logits"].items())
        return sorted(items, key=lambda kv: -abs(kv[1]))[:k]


def head_channels(values: Sequence[str | Channel]) -> tuple[Channel, ...]:
    """Receiver input channels of a head (q, k, v), parsed; 'in' is refused."""
    channels = tuple(parse_channel(c) for c in values)
    if Channel.IN in channels:
        raise SiteError("unknown input channel 'in': heads take 'q', 'k' or 'v'")
    if not channels:
        raise SiteError("no input channel: heads take 'q', 'k' or 'v'")
    return channels


def matrix_components(model: HookedTransformer, components: Sequence[Component | str] | None,
                      include_mlps: bool, role: str) -> tuple[Component, ...]:
    """The senders or receivers of a matrix: the given heads/MLPs (names parsed), or by default every head
    (and every MLP with ``include_mlps``) in computation order."""
    structure = Structure.of(model)
    if components is None:
        if include_mlps and not structure.has_mlps:
            raise SiteError("include_mlps: this model is attention-only and has no MLPs")
        return tuple(c for c in structure.sources if isinstance(c, Head) or (include_mlps and isinstance(c, Mlp)))
    parsed = tuple(parse_component(c, model.cfg) for c in components)
    if bad := [str(c) for c in parsed if not isinstance(c, (Head, Mlp))]:
        raise SiteError(f"{', '.join(bad)}: {role} are heads written 'LAYER.HEAD' (e.g. '1.6') or MLPs 'mlp.LAYER'")
    return parsed


@torch.no_grad()
def patch_matrix(model: HookedTransformer, reference: Tensor, corrupted: Tensor, metric: Metric, *,
                 senders: Sequence[Component] | None = None, receivers: Sequence[Component] | None = None,
                 channels: Sequence[Channel] = HEAD_CHANNELS, include_mlps: bool = False,
                 progress: bool = True) -> PatchMatrix:
    """Every sender -> receiver:channel -> logits and sender -> logits effect (``patch_matrix.matrix_values``:
    one clean run, then each path costs about one receiver recomputation and a d_head-wide unembedding).
    ``include_mlps``: MLPs are senders and receivers too (by default; explicit lists may name MLPs either
    way). ``metric``: a ``Metric`` (anything with ``positions`` and ``__call__`` on [batch, n_pos, d_vocab]
    logits; a ``many`` method on [paths, batch, n_pos, d_vocab] is used when present). ``progress``: a tqdm
    bar on stderr (shown on a terminal only)."""
    check_weights(model, "the model")  # else a table of nan
    named = receivers is not None
    senders = matrix_components(model, senders, include_mlps, "senders")
    receivers = matrix_components(model, receivers, include_mlps, "receivers")
    check_connects(model, senders, receivers, receivers_given=named, spelling=API)  # else a silently empty table
    channels = head_channels(channels)
    clean = pair_run(model, reference, corrupted)
    values = matrix_values(model, clean, metric, metric.positions, senders, receivers, channels, progress=progress)
    n = reference.shape[0]
    clean_value = float(metric(clean.logits[:n][:, metric.positions]))
    corrupted_value = float(metric(clean.logits[n:][:, metric.positions]))
    return PatchMatrix(senders, receivers, channels, values.effects, values.to_logits,
                       getattr(metric, "kind", "metric"), clean_value, corrupted_value)


def every_path_to_logits(model: HookedTransformer) -> list[PatchPath]:
    """One path per source straight into the logits: patching them all is running on the corrupted input."""
    return [PatchPath(s) for s in Structure.of(model).sources]


def edge_paths(model: HookedTransformer, sender: Component, receiver: Component, channel: Channel,
               limit: int = 20_000) -> list[PatchPath]:
    """Every path that leaves ``sender`` through ``receiver``'s ``channel`` and then reaches the logits by any
    route: patching them all is edge patching (the receiver's changed output also flows through later
    components), as auto-circuit does. ``PatchPath(sender, ((receiver, channel),))`` alone is the direct path."""
    structure = Structure.of(model)
    later = [(r, c) for r in structure.receivers[:-1] for c in structure.channels(r)]
    out: list[PatchPath] = []

    def extend(via: tuple[tuple[Component, Channel], ...]) -> None:
        if len(out) >= limit:
            raise ScrubError(f"more than {limit} paths continue from {sender} -> {receiver}:{channel.value}")
        out.append(PatchPath(sender, via))
        for comp, chan in later:
            if structure.feeds(via[-1][0], comp, chan):
                extend(via + ((comp, chan),))

    extend(((receiver, channel),))
    return out


# --- a model copy with the per-head input hooks switched on (``scrub.discovery``, ``scrub.testing.oracles``) ---

def split_qkv_copy(model: HookedTransformer) -> HookedTransformer:
    """A copy of ``model`` with per-head q/k/v input hooks (and the MLP input hook) switched on (the user's
    model is not changed)."""
    hooked = copy.deepcopy(model)
    hooked.cfg.use_split_qkv_input = True
    hooked.cfg.use_hook_mlp_in = True
    hooked.setup()
    return hooked

"""Do later components compose with the induction heads? Path patching (``scrub.patching.paths.patch_matrix``) from
each induction head into every later head's Q, K and V and into every MLP that reads it, and straight into
the logits: the analogue of looking for IOI's S-inhibition heads (Wang et al. 2022), which read the
duplicate-token and induction heads through their Q.

Two settings: repeated random tokens (reference: BOS + L random tokens x 2; corrupted: a fresh random
sequence of the same shape; loss at the second-repeat positions) and natural text (reference: held-out
windows; corrupted: other windows; loss at the induction-candidate positions of each reference row). An
effect is patched minus clean loss (nats): positive = the path carries something that lowers the loss.

Intervals: the examples are split into chunks, the matrix is computed on each chunk, and the interval is
the chunk mean +- t(0.975, chunks - 1) x standard error over chunks (chunks are independent draws).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from scrub.claims.sites import Head, Mlp, parse_component
from scrub.claims.structure import Structure
from scrub.data.batches import induction_candidates
from scrub.metrics import Metric, make_metric, masked_loss
from scrub.patching.paths import patch_matrix, second_repeat_positions

if TYPE_CHECKING:
    from scrub.patching.paths import PatchPath

T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086)  # t quantiles for 1..20 degrees of freedom (1.96 beyond)
CHANNELS = ("q", "k", "v")


def candidate_metric(tokens: Tensor) -> Metric:
    """Loss at each row's induction-candidate prediction positions of ``tokens`` [batch, seq]."""
    return masked_loss(tokens, induction_candidates(tokens)[:, :-1])  # mask [batch, seq-1]


@dataclass(frozen=True)
class Composition:
    """Path-patching effects (nats of loss) from ``senders`` (the induction heads) into ``receivers`` (the
    later heads and MLPs) per channel, and into the logits, with chunk intervals."""

    data: str
    senders: tuple[str, ...]
    receivers: tuple[str, ...]
    effect: Tensor  # [sender, receiver, channel] chunk mean; NaN where the sender does not feed that input
    low: Tensor  # [sender, receiver, channel]
    high: Tensor  # [sender, receiver, channel]
    direct: Tensor  # [sender, 3]: mean, low, high of sender -> logits
    clean: float  # metric of the clean reference
    corrupted: float  # metric of the corrupted input (every path patched)
    n_examples: int
    n_chunks: int

    def paths(self) -> list[dict]:
        """Every sender -> receiver[:channel] path with its interval (MLPs: one entry, channel "in")."""
        out = []
        for i, s in enumerate(self.senders):
            for j, r in enumerate(self.receivers):
                for k, c in enumerate(CHANNELS):
                    if torch.isnan(self.effect[i, j, k]) or (r.startswith("mlp.") and k > 0):
                        continue
                    out.append({"sender": s, "receiver": r, "channel": "in" if r.startswith("mlp.") else c,
                                "value": float(self.effect[i, j, k]), "low": float(self.low[i, j, k]),
                                "high": float(self.high[i, j, k])})
        return out

    def to_dict(self) -> dict:
        return {"data": self.data, "senders": list(self.senders), "receivers": list(self.receivers),
                "paths": self.paths(), "clean": self.clean, "corrupted": self.corrupted,
                "direct": {s: {"value": float(d[0]), "low": float(d[1]), "high": float(d[2])}
                           for s, d in zip(self.senders, self.direct, strict=True)},
                "n_examples": self.n_examples, "n_chunks": self.n_chunks}


def later_components(model: HookedTransformer, senders: tuple[str, ...]) -> tuple[str, ...]:
    """Every head and MLP that some sender feeds (heads of later layers; MLPs of its layer and later)."""
    structure = Structure.of(model)
    parsed = [parse_component(s, model.cfg) for s in senders]
    return tuple(str(r) for r in structure.sources if isinstance(r, (Head, Mlp))
                 and any(structure.feeds(s, r) for s in parsed))


def _interval(chunks: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """chunks [k, ...] -> mean, low, high [...] (t interval over chunks; NaN stays NaN)."""
    k = chunks.shape[0]
    mean = chunks.mean(0)
    if k < 2 or chunks[0].numel() == 0:
        return mean, mean.clone(), mean.clone()
    t = T975[k - 2] if k - 1 <= len(T975) else 1.96
    half = t * chunks.std(0) / k ** 0.5
    return mean, mean - half, mean + half


@torch.no_grad()
def composition(model: HookedTransformer, senders: tuple[str, ...], reference: Tensor, corrupted: Tensor,
                metric_of: Callable[[Tensor, Tensor], Any], *, data: str, chunk: int,
                step: Callable[[], None] | None = None) -> Composition:
    """The matrix on each chunk of ``chunk`` rows of ``reference``/``corrupted`` [n, seq]; ``metric_of(ref,
    cor)`` builds the chunk's metric."""
    receivers = later_components(model, senders)
    sender_sites = [parse_component(s, model.cfg) for s in senders]
    receiver_sites = [parse_component(r, model.cfg) for r in receivers]
    effects, direct, clean, corr = [], [], [], []
    for start in range(0, reference.shape[0], chunk):
        ref, cor = reference[start : start + chunk], corrupted[start : start + chunk]
        m = patch_matrix(model, ref, cor, metric_of(ref, cor), senders=sender_sites, receivers=receiver_sites,
                         progress=False)
        effects.append(m.effects.float() if receivers else torch.zeros(len(senders), 0, 3))
        direct.append(m.to_logits.float())
        clean.append(m.clean)
        corr.append(m.corrupted)
        if step:
            step()
    mean, low, high = _interval(torch.stack(effects))  # [sender, receiver, channel]
    d = torch.stack(_interval(torch.stack(direct)), -1)  # [sender, 3]
    return Composition(data, tuple(senders), receivers, mean, low, high, d, float(torch.tensor(clean).mean()),
                       float(torch.tensor(corr).mean()), reference.shape[0], len(effects))


def rrt_metric(length: int):
    return lambda ref, cor: make_metric("loss", ref, cor, second_repeat_positions(length))


def natural_metric(ref: Tensor, cor: Tensor) -> Metric:
    return candidate_metric(ref)


# --- the K path of the mechanism: direct, or through the components between the two heads -----------------

@dataclass(frozen=True)
class KPaths:
    """Path-patching effects (nats) of the previous-token head's output reaching an induction head's K
    directly (through the residual stream) and through each component computed between them (a head's V,
    an MLP), each on to the logits; chunk intervals. ``paths`` rows: (induction head, previous-token head,
    route, mean, low, high), route "direct" or the intermediate "L.H:v" / "mlp.L"."""

    data: str
    paths: tuple[tuple[str, str, str, float, float, float], ...]
    n_examples: int
    n_chunks: int

    def to_dict(self) -> dict:
        return {"data": self.data, "n_examples": self.n_examples, "n_chunks": self.n_chunks,
                "paths": [{"receiver": r, "previous": p, "route": route, "value": v, "low": lo, "high": hi}
                          for r, p, route, v, lo, hi in self.paths]}


def k_routes(model: HookedTransformer, previous_of) -> list[tuple[str, str, str, PatchPath]]:
    """(receiver, previous-token head, route name, PatchPath) for the direct route and every route through
    one component between the two: a head (via its V) or an MLP. ``previous_of``: (receiver, head) pairs."""
    from scrub.claims.sites import Channel
    from scrub.patching.paths import PatchPath

    structure = Structure.of(model)
    out = []
    for receiver, prev in previous_of:
        r, p = parse_component(receiver, model.cfg), parse_component(prev, model.cfg)
        out.append((receiver, prev, "direct", PatchPath(p, ((r, Channel.K),))))
        for c in structure.sources:
            if not isinstance(c, (Head, Mlp)) or c == r:
                continue
            if structure.feeds(p, c, Channel.V if isinstance(c, Head) else None) and structure.feeds(c, r, Channel.K):
                channel = Channel.V if isinstance(c, Head) else Channel.IN
                name = f"{c}:v" if isinstance(c, Head) else str(c)
                out.append((receiver, prev, name, PatchPath(p, ((c, channel), (r, Channel.K)))))
    return out


@torch.no_grad()
def k_paths(model: HookedTransformer, previous_of, reference: Tensor, corrupted: Tensor,
            metric_of: Callable[[Tensor, Tensor], Any], *, data: str, chunk: int,
            step: Callable[[], None] | None = None) -> KPaths:
    """Every route of ``k_routes`` patched alone, on chunks of ``chunk`` rows."""
    from scrub.patching.paths import pair_run, patch_effects

    routes = k_routes(model, previous_of)
    values = []
    for start in range(0, reference.shape[0], chunk):
        ref, cor = reference[start : start + chunk], corrupted[start : start + chunk]
        metric = metric_of(ref, cor)
        clean = pair_run(model, ref, cor)
        patched = patch_effects(model, ref, cor, [[path] for *_, path in routes], metric, clean=clean,
                                positions=metric.positions)  # [route]
        base = float(metric(clean.logits[: ref.shape[0]][:, metric.positions]))
        values.append(patched.double() - base)
        if step:
            step()
    mean, low, high = _interval(torch.stack(values))  # [route]
    rows = tuple((r, p, name, float(m), float(lo), float(hi))
                 for (r, p, name, _), m, lo, hi in zip(routes, mean, low, high, strict=True))
    return KPaths(data, rows, reference.shape[0], len(values))

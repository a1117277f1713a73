"""The single-edge path-patching matrix, vectorised: every sender -> receiver:channel -> logits and every
sender -> logits effect without building a tree per path.

A path ``s -> R:c -> logits`` changes exactly one thing downstream of the clean run: R's input ``c`` gains
Δ_s = out_s(corrupted) - out_s(reference), and R's changed output reaches the final residual directly
(everything else is frozen at its clean value). So, per receiver layer:

* the clean residual R reads comes from ``CleanRun.resid_before`` (summed once per run);
  Δ_s comes straight from the clean run on cat([reference, corrupted]) (``CleanRun.out``);
* ``ln1(resid + Δ_s)`` is computed once per sender and shared by every receiver head of the layer and
  every channel; the two unpatched channels read the shared clean ``ln1(resid)``;
* ``compute.heads_z_normed`` recomputes the receivers' attention (the only attention maths: rotary, GQA,
  soft-capping live there) for a chunk of (sender, receiver) copies, up to the last scored position only,
  and Δz_R = z_patched - z_clean;
* Δz_R reaches the logits in factored form at the metric's positions only (``_Unembed``): the clean final
  residual is unembedded once, each path adds Δz_R @ (W_O[R] Ã) (d_head wide), and the LayerNorm scale of
  the patched residual comes from d_head-wide products with precomputed W_O[R]-Gram terms; the same product
  subtracts each row's clean max logit, so the loss needs no max pass of its own (``_Matrix.values``);
* MLP receivers are recomputed with ``compute.mlp_forward`` at the metric's positions only (an MLP acts
  position by position); their change, like an MLP sender's direct path, is unembedded d_model wide.

Each path then costs about one head recomputation, one d_head x d_vocab product and the metric. The
metric sees [paths, batch, n_pos, d_vocab] logits in one call when it has a ``many`` method
(``patching.Metric`` does), else it is called once per path. Results equal ``patching.patch_effects`` (the
tree engine) and ``scrub.testing.oracles.hooked_patch_logits`` (literal hooks); see tests/test_path_matrix.py.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from scrub.claims.sites import Channel, Component, Head, Mlp
from scrub.claims.structure import Structure
from scrub.engine.compute import CleanRun, heads_z_normed, mlp_forward, normalise
from scrub.engine.unembed import FactoredUnembed, unembed
from scrub.progress import bar as progress_bar

MATRIX_BUDGET = 1 << 22  # floats in one stacked receiver input (or attention scores) of a chunk of copies
UNEMBED_BUDGET = 1 << 21  # floats of logits per metric call: small chunks stay in cache (~3x faster than 20 MB)


@dataclass(frozen=True)
class MatrixValues:
    """Raw output of ``matrix_values``: metric values of the patched runs minus ``base``."""

    effects: Tensor  # [sender, receiver, channel]; NaN where the sender does not feed that input
    to_logits: Tensor  # [sender]
    base: float  # the metric of the unpatched logits, computed the same (factored) way as the paths


@torch.no_grad()
def matrix_values(model: HookedTransformer, clean: CleanRun, metric: Callable[[Tensor], Tensor], positions: Tensor,
                  senders: Sequence[Component], receivers: Sequence[Component], channels: Sequence[Channel], *,
                  progress: bool = True, budget: int = MATRIX_BUDGET,
                  unembed_budget: int = UNEMBED_BUDGET) -> MatrixValues:
    """Effects of every ``sender -> receiver:channel -> logits`` path and every ``sender -> logits`` path.

    ``clean``: the clean run on cat([reference, corrupted]) (rows 0..n-1 reference, n..2n-1 corrupted);
    ``metric``: logits [batch, n_pos, d_vocab] -> scalar, with an optional ``many`` ([paths, batch, n_pos,
    d_vocab] -> [paths]); ``positions`` [n_pos]: the sequence positions the metric scores. Senders are
    heads and MLPs; receivers are heads (patched through each of ``channels``) and MLPs (one input: the
    effect is written to every channel column). ``budget``: floats per stacked receiver input of a chunk
    of copies; ``unembed_budget``: floats of logits per metric call."""
    job = _Matrix(model, clean, metric, positions, tuple(senders), tuple(receivers), tuple(channels), budget,
                  unembed_budget)
    with _bar(job.total, progress) as bar:
        job.bar = bar
        for i, s in enumerate(job.senders):  # sender -> logits: Δ_s straight into the final residual
            job.to_logits[i] = job.values(lambda sl, centred: job.direct(s, centred), 1)[0]  # noqa: B023 (values() calls it at once)
            bar.update(1)
        layers: dict[int, list[int]] = {}
        for j, r in enumerate(job.receivers):
            if isinstance(r, Head):
                layers.setdefault(r.layer, []).append(j)
        for layer, cols in sorted(layers.items()):
            job.head_receivers(layer, cols)
        for j, r in enumerate(job.receivers):
            if isinstance(r, Mlp):
                job.mlp_receiver(j)
    return MatrixValues(job.effects, job.to_logits, job.base)


class _Matrix:
    """The state of one matrix computation: the clean residuals, the unembedding, the results."""

    def __init__(self, model: HookedTransformer, clean: CleanRun, metric, positions: Tensor, senders, receivers,
                 channels, budget: int, unembed_budget: int):
        self.model, self.clean, self.budget = model, clean, budget
        self.senders, self.receivers, self.channels = senders, receivers, channels
        self.structure = Structure.of(model)
        self.n = clean.tokens.shape[0] // 2
        self.positions = positions.to(clean.tokens.device)  # [n_pos]
        self.out = _Unembed(model, clean.resid_before(self.structure.receivers[-1])[: self.n, self.positions])
        self.per_call = max(1, unembed_budget // (self.n * len(self.positions) * self.out.d_vocab))
        self.score = _Score(metric)
        self.centre = self.score.centred and self.out.factored is not None  # see ``values``
        self.base = float(self.score(self.out.resid(torch.zeros_like(self.out.base)[None]))[0])
        feeds = [[[self.structure.feeds(s, r, c if isinstance(r, Head) else None) for c in channels]
                  for r in receivers] for s in senders]
        # the table and its bookkeeping are on the CPU: filled from Python floats, returned to the caller
        self.feeds = torch.tensor(feeds, dtype=torch.bool, device="cpu").reshape(len(senders), len(receivers),
                                                                              len(channels))
        self.effects = torch.full(self.feeds.shape, float("nan"), dtype=torch.float64,
                                  device="cpu")  # [sender, receiver, channel]
        self.to_logits = torch.full((len(senders),), float("nan"), dtype=torch.float64, device="cpu")  # [sender]
        heads = [j for j, r in enumerate(receivers) if isinstance(r, Head)]
        mlps = [j for j, r in enumerate(receivers) if isinstance(r, Mlp)]
        self.total = int(self.feeds[:, heads].sum()) + int(self.feeds[:, mlps, 0].sum()) + len(senders)
        self.bar: _Progress = _NoBar()  # matrix_values sets its bar

    def values(self, logits_of: Callable[[slice, bool], Tensor], k: int) -> list[float]:
        """Metric values of ``k`` paths, minus the base, in calls of ``per_call`` paths. ``logits_of(slice,
        centred)`` gives their logits [paths, n, n_pos, d_vocab]; with ``centred`` each row is moved by the
        maximum of its clean logits (inside the unembedding product), so a metric that ignores a constant per
        row (``Metric.many(centred=True)``) skips its own max subtraction: two of the ~7 d_vocab-wide passes.
        Should a patched logit overflow against that constant, the chunk is redone with plain logits."""
        out: list[float] = []
        for start in range(0, k, self.per_call):
            part = slice(start, min(k, start + self.per_call))
            values = self.score(logits_of(part, self.centre), centred=self.centre)
            if self.centre and not bool(values.isfinite().all()):
                values = self.score(logits_of(part, False))
            out += values.tolist()
        return [v - self.base for v in out]

    def head_receivers(self, layer: int, cols: list[int]) -> None:
        """Fill ``effects[:, cols, :]`` for receiver heads ``cols``, all of one layer."""
        rows = [i for i in range(len(self.senders)) if bool(self.feeds[i, cols].any())]
        if not rows:
            return
        n, positions = self.n, self.positions
        heads = torch.tensor([self.receivers[j].head for j in cols], device=positions.device)  # [n_r] indexes weights
        n_r = len(cols)
        ln1 = self.model.blocks[layer].ln1
        seq = int(positions.max()) + 1  # causal attention: later positions change no scored query
        resid = self.clean.resid_before(self.receivers[cols[0]])[: self.n, :seq]  # [n, seq, d_model]
        _, seq, d_model = resid.shape
        pos = self.clean.pos[0, :seq] if self.structure.pos == "shortformer" else None  # [seq, d_model]
        normed = normalise(ln1, resid)  # [n, seq, d_model]: the clean input of every channel
        z_clean = heads_z_normed(self.model, layer, heads, normed, normed, normed, pos)  # [n_r, n, seq, d_head]
        z_clean = z_clean[:, :, positions]  # [n_r, n, n_pos, d_head]
        chunk = max(1, self.budget // (n_r * n * seq * max(d_model, seq)))
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            k = len(part)
            delta = torch.stack([_delta(self.clean, self.senders[i], n)[:, :seq] for i in part])  # [k, n, seq, d_model]
            patched = normalise(ln1, resid + delta)  # [k, n, seq, d_model]: shared by every head and channel
            del delta
            if k == 1:  # every copy reads one input: heads_z_normed projects it unstacked
                xs = patched[0]  # [n, seq, d_model]
            else:
                xs = patched[:, None].expand(k, n_r, n, seq, d_model).reshape(k * n_r, n, seq, d_model)  # [copy, ...]
            del patched
            index = heads.repeat(k)  # [copy]: copy = sender * n_r + receiver
            for c, channel in enumerate(self.channels):
                fed = self.feeds[part][:, cols, c]  # [k, n_r]
                if not bool(fed.any()):
                    continue
                xq, xk, xv = (xs if ch == channel else normed for ch in (Channel.Q, Channel.K, Channel.V))
                z = heads_z_normed(self.model, layer, index, xq, xk, xv, pos)  # [copy, n, seq, d_head]
                dz = z.view(k, n_r, n, seq, -1)[:, :, :, positions] - z_clean  # [k, n_r, n, n_pos, d_head]
                del z
                for r, j in enumerate(cols):
                    receiver = self.receivers[j]
                    values = self.values(lambda sl, centred: self.out.head(receiver, dz[sl, r], centred), k)  # noqa: B023 (values() calls it at once)
                    for i, v, f in zip(part, values, fed[:, r].tolist(), strict=True):
                        if f:
                            self.effects[i, j, c] = v
                            self.bar.update(1)

    def mlp_receiver(self, j: int) -> None:
        """Fill ``effects[:, j, :]`` for one MLP receiver, recomputed at the scored positions only (an MLP
        acts position by position)."""
        rows = [i for i in range(len(self.senders)) if bool(self.feeds[i, j, 0])]
        if not rows:
            return
        receiver, n, positions = self.receivers[j], self.n, self.positions
        resid = self.clean.resid_before(receiver)[: self.n, positions]  # [n, n_pos, d_model]
        mlp_clean = mlp_forward(self.model, receiver.layer, resid[None])  # [1, n, n_pos, d_model]
        width = max(self.model.cfg.d_mlp or 0, resid.shape[-1])
        chunk = max(1, self.budget // (n * len(positions) * width))
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            delta = torch.stack([_delta(self.clean, self.senders[i], n)[:, positions] for i in part])
            # delta: [k, n, n_pos, d_model]
            change = mlp_forward(self.model, receiver.layer, resid + delta) - mlp_clean  # [k, n, n_pos, d_model]
            values = self.values(lambda sl, centred: self.out.resid(change[sl], centred), len(part))  # noqa: B023 (values() calls it at once)
            for i, v in zip(part, values, strict=True):
                self.effects[i, j, :] = v
                self.bar.update(1)

    def direct(self, sender: Component, centred: bool) -> Tensor:
        """Logits [1, n, n_pos, d_vocab] with ``sender -> logits`` patched."""
        n, positions = self.n, self.positions
        if isinstance(sender, Head):
            z = self.clean.z[sender.layer][:, positions, sender.head]  # [2n, n_pos, d_head]
            return self.out.head(sender, (z[n:] - z[:n])[None], centred)
        return self.out.resid(_delta(self.clean, sender, n)[:, positions][None], centred)


def _delta(clean: CleanRun, sender: Component, n: int) -> Tensor:
    """out_s(corrupted) - out_s(reference), [n, seq, d_model]."""
    full = clean.out(sender)  # [2n, seq, d_model]
    return full[n:] - full[:n]


# --- clean residuals ----------------------------------------------------------------------------------

# --- the logits of one changed addend -------------------------------------------------------------------

class _Unembed:
    """Logits [paths, n, n_pos, d_vocab] of the clean final residual plus one addend per path, factored
    through ``unembed.FactoredUnembed`` when the model ends in a LayerNorm: logits = (base·Ã + x·M) / s + c
    with s the LayerNorm scale of the patched residual. For a head's Δz (x d_head wide, M = W_O[h] Ã) the
    scale needs |centred(base + Δz W_O[h])|², expanded as |b|² + 2 Δz·(b W̄ᵀ) + Δz (W̄ W̄ᵀ) Δzᵀ with b the
    centred base and W̄ = W_O[h] centred over d_model, so nothing per path is d_model wide. Without a final
    LayerNorm every path goes through ``unembed.unembed``."""

    def __init__(self, model: HookedTransformer, base: Tensor):
        self.model = model
        self.base = base  # [n, n_pos, d_model]
        self.d_vocab = model.cfg.d_vocab_out if getattr(model.cfg, "d_vocab_out", -1) > 0 else model.cfg.d_vocab
        self.factored = FactoredUnembed.of(model)
        self.heads: dict[Head, tuple[Tensor, Tensor, Tensor]] = {}
        self.a: Tensor | None = None
        if self.factored is not None:
            self.lin = base @ self.factored.a  # [n, n_pos, d_vocab]
            self.centred = base - base.mean(-1, keepdim=True)  # [n, n_pos, d_model]
            self.sq = self.centred.pow(2).sum(-1)  # [n, n_pos]
            inv = (self.sq / base.shape[-1] + self.factored.eps).rsqrt()[..., None]  # [n, n_pos, 1]
            self.top = (self.lin * inv + self.factored.c).amax(-1)[..., None]  # [n, n_pos, 1] clean max logit

    def head(self, head: Head, dz: Tensor, centred: bool = False) -> Tensor:
        """dz [paths, n, n_pos, d_head]: the change of ``head``'s z. ``centred``: minus the clean max logit
        of each row (factored form only)."""
        w_o = self.model.blocks[head.layer].attn.W_O.detach()[head.head]  # [d_head, d_model]
        if self.factored is None:
            return unembed(self.model, self.base + dz @ w_o)
        if head not in self.heads:
            w_c = w_o - w_o.mean(-1, keepdim=True)  # [d_head, d_model]
            self.heads[head] = (self._with_bias(self.factored.head_map(head)), self.centred @ w_c.T, w_c @ w_c.T)
        m, u, gram = self.heads[head]  # [d_head + 1, d_vocab], [n, n_pos, d_head], [d_head, d_head]
        sq = self.sq + 2 * (dz * u).sum(-1) + ((dz @ gram) * dz).sum(-1)  # [paths, n, n_pos]
        return self._finish(dz, m, sq, centred)

    def resid(self, delta: Tensor, centred: bool = False) -> Tensor:
        """delta [paths, n, n_pos, d_model]: a change of the final residual."""
        if self.factored is None:
            return unembed(self.model, self.base + delta)
        resid = self.base + delta  # [paths, n, n_pos, d_model]
        sq = (resid - resid.mean(-1, keepdim=True)).pow(2).sum(-1)  # [paths, n, n_pos]
        if self.a is None:
            self.a = self._with_bias(self.factored.a)
        return self._finish(delta, self.a, sq, centred)

    def _with_bias(self, m: Tensor) -> Tensor:
        """[width, d_vocab] -> [width + 2, d_vocab]: then the logit bias c and a row of ones (for the shift)."""
        assert self.factored is not None  # only the factored form gets here
        return torch.cat([m, self.factored.c[None], torch.ones_like(self.factored.c)[None]])

    def _finish(self, x: Tensor, m: Tensor, sq: Tensor, centred: bool) -> Tensor:
        """(base·Ã + x·m) / s + c - t for x [paths, n, n_pos, width], m [width + 2, d_vocab] (``_with_bias``),
        the centred squared norms sq [paths, n, n_pos] of the patched residuals and t the clean max logit of
        the row if ``centred`` (else 0), computed as [x/s, 1, -t]·[m; c; 1] + base·Ã/s: one matmul and one
        fused multiply-add d_vocab wide."""
        assert self.factored is not None  # only the factored form gets here
        inv = (sq.clamp_min(0) / self.base.shape[-1] + self.factored.eps).rsqrt()[..., None]  # [paths, n, n_pos, 1]
        shift = -self.top.expand_as(inv) if centred else torch.zeros_like(inv)  # [paths, n, n_pos, 1]
        x = torch.cat([x * inv, torch.ones_like(inv), shift], -1)  # [paths, n, n_pos, width + 2]
        return (x @ m).addcmul_(self.lin, inv)  # [paths, n, n_pos, d_vocab]


# --- metric and progress ------------------------------------------------------------------------------

class _Score:
    """logits [paths, n, n_pos, d_vocab] (a temporary: the metric may overwrite it) -> [paths] float64, via
    the metric's ``many`` when it has one, else one call per path."""

    def __init__(self, metric: Callable[[Tensor], Tensor]):
        self.metric = metric
        self.many = getattr(metric, "many", None)
        params = inspect.signature(self.many).parameters if self.many is not None else {}
        self.overwrite = "overwrite" in params
        self.centred = "centred" in params  # the metric accepts rows moved by a constant

    def __call__(self, logits: Tensor, centred: bool = False) -> Tensor:
        if self.many is None:
            return torch.stack([torch.as_tensor(self.metric(x)) for x in logits]).double()
        kwargs = ({"overwrite": True} if self.overwrite else {}) | ({"centred": True} if centred else {})
        return self.many(logits, **kwargs).double()


class _Progress(Protocol):
    def update(self, n: int, /) -> object: ...


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def update(self, k: int) -> None:
        pass


def _bar(total: int, progress: bool):
    """A tqdm bar on stderr (shown on a terminal only), or nothing."""
    return progress_bar(total, "path patching", unit="path") if progress else _NoBar()

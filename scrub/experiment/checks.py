"""Checks of a run that sit beside ``run``'s own argument checks: where the model and tokens are (never on the
meta device), that the weights and the scored losses are finite, and the data warnings and content-based
self-draw rate (``scrub.data.sanity``) added to a result. Each is one call in ``scrub.experiment.runner``."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Mapping

import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from scrub.data import sanity
from scrub.errors import ScrubError
from scrub.model.finite import NonFiniteError, check_weights
from scrub.model.loading import check_model

if TYPE_CHECKING:
    from scrub.engine.treeify import Assignments, SamplingOptions, TreeNode
    from scrub.metrics import ExampleLosses


class PlacementError(ScrubError):
    """The model or the tokens are somewhere a run cannot compute (the meta device); names the fix."""


def check_placement(model: HookedTransformer, data: object) -> None:
    """Refuse a model or tokens on the meta device (shapes without values), and weights whose dtype is not
    the config's (``model.half()``), naming how to get real ones."""
    try:
        check_model(model, "scrub.run")
    except ScrubError as err:
        raise PlacementError(str(err)) from None
    if isinstance(data, Tensor) and data.device.type == "meta":
        raise PlacementError("the token ids are on the meta device (a shape without values): pass real token ids, "
                             "e.g. scrub.natural_batch(n, seq_len) or a tensor on the CPU")


def check_finite_model(model: HookedTransformer) -> None:
    """Refuse a model whose weights hold NaN or infinity, before anything is blamed on a hypothesis."""
    check_weights(model, "the model")


def check_finite_losses(joined: Mapping[str, ExampleLosses]) -> None:
    """Refuse to report numbers computed from non-finite losses (clean, baseline or scrubbed run)."""
    for run in ("clean", "baseline", "scrubbed"):
        total = joined[run].total  # [n]
        bad = ~torch.isfinite(total)  # [n]
        if bool(bad.any()):
            first = int(bad.nonzero()[0])
            raise NonFiniteError(f"the {run} run's loss is not finite on {int(bad.sum())} example(s) (first: example "
                                 f"{first}) although every weight is finite: the model overflows on these inputs (in "
                                 f"float16 or bfloat16? run it in float32), so no number would mean anything")


def content_self_rate(tree: TreeNode, data: Tensor, *, seed: int, options: SamplingOptions, structure,
                      group: Tensor) -> float:
    """Share of all draws of ``tree`` over the whole dataset ``data`` [n, seq] whose sequence equals the
    datum's (``group`` [n]: the distinct sequence of each example), copies included."""
    from scrub.engine.sampling import Sampler
    from scrub.engine.treeify import assign

    sampler = Sampler(data, seed=seed, pool_size=options.pool, allow_self=options.allow_self)
    ids = torch.arange(data.shape[0], device="cpu")  # [n] dataset ids for the CPU sampler
    drawn = assign(tree, sampler, ids, options=options, structure=structure)
    return _rate(drawn, group)


def _rate(drawn: Assignments, group: Tensor) -> float:
    """Feature and unclaimed draws of ``drawn`` (dataset ids) that land in the datum's group, over all draws."""
    flags = []
    for a in drawn.by_path.values():
        feature = a.forced_self.reshape(-1)  # [draws]
        if a.keys is not None and a.rows is not None and a.forced_self.numel() == a.rows.numel():
            keys = a.keys.reshape(-1, *([1] * (a.rows.dim() - 1)))  # [k] or [k, 1]
            feature = (group[a.datum[a.rows]] == group[keys]).reshape(-1) | feature  # [draws]
        flags += [feature, group[a.other] == group[a.datum]]  # [rows]: the unclaimed draw
    every = torch.cat(flags) if flags else torch.zeros(0, dtype=torch.bool, device="cpu")  # CPU draws' flags
    return float(every.float().mean()) if every.numel() else 0.0


def with_data_checks(result, model: HookedTransformer, data: Tensor, tree: TreeNode, *, seed: int,
                     options: SamplingOptions, structure):
    """``result`` with the data warnings added and, where examples are copies of others, the self-draw rate
    counting a draw of a copy as the datum itself (unchanged without copies)."""
    warnings = sanity.data_warnings(model, data, result.n_examples, options.pool)
    group, distinct = sanity.duplicate_groups(data.cpu())
    rate = result.self_sample_rate
    if distinct < data.shape[0]:
        rate = content_self_rate(tree, data.cpu(), seed=seed, options=options, structure=structure, group=group)
    return replace(result, warnings=tuple(result.warnings) + tuple(warnings), self_sample_rate=rate)


def rank_check(claim, base, data: Tensor, first: Tensor, *, seed: int, batch_size: int, options: SamplingOptions,
               n_bootstrap: int, metric: str, positions: str) -> dict[str, object]:
    """What every rank of a torchrun launch must agree on, labelled for the error: the content of the
    hypothesis and the baseline (``distributed.claim_fingerprint`` on the first batch ``first``), the data
    [n, seq] by content, and the run's options."""
    from scrub.experiment.distributed import claim_fingerprint, digest

    out: dict[str, object] = {}
    for label, c in (("hypothesis", claim), ("baseline", base)):
        out[f"{label} name"] = c.name
        out |= {f"{label} {part}": value for part, value in claim_fingerprint(c, first).items()}
    return out | {"data": digest(data), "seed": seed, "batch size": batch_size, "sampling options": repr(options),
                  "n_bootstrap": n_bootstrap, "metric": metric, "positions": positions}

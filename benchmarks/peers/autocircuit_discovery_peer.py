"""auto-circuit 1.0.1's EAP and ACDC on a scrub checkpoint, for compare_discovery.py; side virtualenv only.

Reads a checkpoint (``autocircuit_peer.load``) and a ``.pt`` file with ``reference``, ``corrupted`` [n, seq]
and ``lo``, ``hi``: the scored logit positions lo..hi-1 (contiguous, so that auto-circuit's ``out_slice``
selects them). Prints one JSON object:

- ``eap``: ``mask_gradient_prune_scores`` with ``mask_val=0`` (integrated gradients off: auto-circuit's EAP),
  ``grad_function="logprob"``, ``answer_function="avg_val"``, one batch: the gradient of
  −mean log p(next token) over the scored tokens w.r.t. each edge's mask, the mask scaling
  (corrupted − clean source output), i.e. the first-order estimate of loss(edge patched) − loss(clean).
- ``acdc``: ``acdc_prune_scores`` at the single τ (``--tau``, as a x 10^b), KL target, one batch: the kept
  edges, each visited edge's step ``faith − prev_faith`` (recorded around ``multibatch_kl_div``), the seconds
  and the forwards (full, and partial ones from ``start_at_layer``). Visiting order: auto-circuit's own
  (``model.edges`` is a set of dataclasses with None fields; on Python 3.11 hash(None) is an address,
  so its order within a layer changes from run to run whatever PYTHONHASHSEED) or, with ``--order``, the
  given edge names (auto-circuit sorts them stably by destination layer).
    /work/venv-autocircuit/bin/python benchmarks/peers/autocircuit_discovery_peer.py CKPT DATA.pt --tau 2 -2 \
        [--order JSON] [--no-eap] [--no-acdc] [--float64]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import torch
from auto_circuit.data import PromptPairBatch
from auto_circuit.prune_algos import ACDC
from auto_circuit.prune_algos.ACDC import acdc_prune_scores
from auto_circuit.prune_algos.mask_gradient import mask_gradient_prune_scores
from auto_circuit.utils.graph_utils import patchable_model
from auto_circuit.utils.patchable_model import PatchableModel
from autocircuit_peer import load


class Forwards:
    """Counts calls of the wrapped HookedTransformer: full forwards and partial ones (``start_at_layer``), the
    latter also by the layer they start at."""

    def __init__(self, model: PatchableModel) -> None:
        self.full, self.by_layer = 0, Counter[int]()
        model.wrapped_model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs) -> None:
        layer = kwargs.get("start_at_layer")
        if layer is None:
            self.full += 1
        else:
            self.by_layer[int(layer)] += 1

    def take(self) -> dict:
        out = {"full": self.full, "partial": sum(self.by_layer.values()),
               "partial_by_start_layer": {str(k): v for k, v in sorted(self.by_layer.items())}}
        self.full, self.by_layer = 0, Counter()
        return out


def eap(model: PatchableModel, batch: PromptPairBatch, count: Forwards) -> dict:
    start = time.perf_counter()
    scores = mask_gradient_prune_scores(model, [batch], None, grad_function="logprob", answer_function="avg_val",
                                        mask_val=0.0)  # per dest module: [n_src] or [n_heads, n_src]
    seconds = time.perf_counter() - start
    by_edge = {e.name: float(scores[e.dest.module_name][e.patch_idx]) for e in model.edges}
    return {"scores": by_edge, "seconds": seconds, "forwards": count.take(), "backward": 1}


def acdc(model: PatchableModel, batch: PromptPairBatch, tau: tuple[int, int], order: list[str] | None,
         count: Forwards) -> dict:
    native = model.edges
    if order is not None:
        by_name = {e.name: e for e in native}
        if sorted(order) != sorted(by_name):
            raise SystemExit(f"--order must name every edge once ({len(by_name)} edges)")
        model.edges = [by_name[n] for n in order]  # type: ignore[assignment]  # ACDC only iterates and sorts it
    visited = [e.name for e in sorted(model.edges, key=lambda x: x.dest.layer, reverse=True)]  # ACDC's own sort
    faiths: list[float] = []
    kl = ACDC.multibatch_kl_div

    def recording(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        out = kl(a, b)  # []
        faiths.append(float(out))
        return out

    ACDC.multibatch_kl_div = recording
    try:
        start = time.perf_counter()
        scores = acdc_prune_scores(model, [batch], None, tao_exps=[tau[1]], tao_bases=[tau[0]])
        seconds = time.perf_counter() - start
    finally:
        ACDC.multibatch_kl_div = kl
        model.edges = native
    by_name = {e.name: e for e in native}
    kept = [n for n in visited if float(scores[by_name[n].dest.module_name][by_name[n].patch_idx]) == float("inf")]
    steps, prev, kept_set = {}, 0.0, set(kept)
    for name, faith in zip(visited, faiths, strict=True):
        steps[name] = faith - prev
        prev = prev if name in kept_set else faith
    return {"tau": tau[0] * 10.0 ** tau[1], "order": visited, "kept": kept, "steps": steps, "final_kl": prev,
            "seconds": seconds, "forwards": count.take()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("--tau", type=int, nargs=2, required=True, metavar=("BASE", "EXP"), help="τ = BASE x 10^EXP")
    parser.add_argument("--order", default=None, help="JSON list of every edge name: ACDC's visiting order")
    parser.add_argument("--no-eap", action="store_true")
    parser.add_argument("--no-acdc", action="store_true")
    parser.add_argument("--float64", action="store_true", help="run the model in float64 (rounding check)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = torch.load(args.data)
    ref, cor, lo, hi = data["reference"], data["corrupted"], int(data["lo"]), int(data["hi"])  # [n, seq] x2
    base = load(args.checkpoint)
    base = base.to(torch.float64) if args.float64 else base
    model = patchable_model(base, factorized=True, slice_output=None, separate_qkv=True,
                            device=torch.device("cpu"))
    model.out_slice = (slice(None), slice(lo, hi))  # the scored logit positions
    answers = ref[:, lo + 1 : hi + 1, None]  # [n, hi-lo, 1] the next token at each scored position
    batch = PromptPairBatch(key=0, batch_diverge_idx=0, clean=ref, corrupt=cor, answers=answers,
                            wrong_answers=answers)
    count = Forwards(model)
    out: dict = {"edges": len(model.edges)}
    if not args.no_eap:
        out["eap"] = eap(model, batch, count)
    order = None if args.order is None else list(json.loads(args.order))
    if not args.no_acdc:
        out["acdc"] = acdc(model, batch, (args.tau[0], args.tau[1]), order, count)
    print(json.dumps(out))


if __name__ == "__main__":
    main()

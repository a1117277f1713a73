"""``run``: a causal scrubbing experiment from a hypothesis and data to loss recovered with intervals.

Streams the dataset in batches; per batch it does one clean forward pass, draws the data of every tree
copy (sampling from the other examples of that batch), evaluates the hypothesis and the baseline with
the engine, and keeps per-example losses at the scored positions. Under torchrun the batches are shared
out across the processes (``scrub.distributed``) and every process returns the one-process result.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import networkx as nx
import torch
from torch import Tensor
from tqdm import tqdm
from transformer_lens import HookedTransformer

from scrub import distributed
from scrub.compute import check_supported, clean_run
from scrub.engine import evaluate
from scrub.data import all_positions, induction_candidates
from scrub.hypothesis import Claim, HypothesisError, empty_graph, load_hypothesis, validate
from scrub.metrics import ExampleLosses, bootstrap_recovered, example_losses, recovered, token_losses
from scrub.treeify import SamplingOptions, assign_data, treeify

Positions = str | Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class ScrubResult:
    """Losses at the scored positions, loss recovered with a bootstrap interval, and the per-example view."""

    hypothesis: str
    baseline: str
    loss_clean: float
    loss_baseline: float
    loss_scrubbed: float
    loss_recovered: float
    ci_low: float
    ci_high: float
    n_examples: int
    n_tokens: int
    self_sample_rate: float
    per_example_clean: tuple[float, ...]
    per_example_baseline: tuple[float, ...]
    per_example_scrubbed: tuple[float, ...]

    def per_example_recovered(self) -> Tensor:
        """Loss recovered of each example alone (unstable where its baseline and clean losses are close)."""
        c, b, s = (torch.tensor(x) for x in (self.per_example_clean, self.per_example_baseline, self.per_example_scrubbed))
        return recovered(c, b, s)

    def to_dict(self, *, per_example: bool = False) -> dict:
        out = asdict(self)
        if not per_example:
            for key in ("per_example_clean", "per_example_baseline", "per_example_scrubbed"):
                out.pop(key)
        return out

    def summary(self) -> str:
        return (f"{self.hypothesis} vs {self.baseline}: loss recovered {self.loss_recovered:.3f} "
                f"[95% CI {self.ci_low:.3f}, {self.ci_high:.3f}]  (clean {self.loss_clean:.4f}, "
                f"baseline {self.loss_baseline:.4f}, scrubbed {self.loss_scrubbed:.4f}; "
                f"{self.n_examples} examples, {self.n_tokens} tokens)")


def as_claim(hypothesis: Claim | nx.DiGraph | str | Path, model: HookedTransformer, *, name: str = "graph") -> Claim:
    """Accept a Claim, a graph, or the path of a hypothesis file."""
    if isinstance(hypothesis, Claim):
        return hypothesis
    if isinstance(hypothesis, nx.DiGraph):
        claim = validate(hypothesis, model)
        return Claim(name, claim.nodes, claim.edges, claim.root)
    if isinstance(hypothesis, (str, Path)):
        return load_hypothesis(hypothesis, model)
    raise HypothesisError(f"a hypothesis is a networkx.DiGraph, a hypothesis file path or a Claim, got {type(hypothesis).__name__}")


def score_mask(tokens: Tensor, positions: Positions) -> Tensor:
    """Which prediction positions are scored: [batch, seq-1] bool."""
    if callable(positions):
        mask = positions(tokens)
    elif positions == "all":
        mask = all_positions(tokens)
    elif positions == "candidates":
        mask = induction_candidates(tokens)  # the current token occurred before: induction can help
    else:
        raise ValueError(f"positions must be 'all', 'candidates' or a function tokens -> bool mask, got {positions!r}")
    return mask[:, :-1]


def _check_tokens(model: HookedTransformer, data: Tensor) -> Tensor:
    if not isinstance(data, Tensor) or data.dim() != 2:
        raise ValueError("data must be a LongTensor of token ids [n_examples, seq]")
    if data.shape[1] > model.cfg.n_ctx:
        raise ValueError(f"sequences of length {data.shape[1]} are longer than the model's n_ctx {model.cfg.n_ctx}; "
                         f"use sequences of at most {model.cfg.n_ctx} tokens")
    if data.numel() and (int(data.max()) >= model.cfg.d_vocab or int(data.min()) < 0):
        raise ValueError(f"token id {int(data.max())} is outside the model's vocabulary of {model.cfg.d_vocab}: "
                         f"was the data made with another tokenizer?")
    if data.shape[0] < 2:
        raise ValueError("need at least 2 examples: resampling draws inputs from the other examples")
    return data.long()


@torch.no_grad()
def run(model: HookedTransformer, hypothesis: Claim | nx.DiGraph | str | Path, data: Tensor, *,
        baseline: Claim | nx.DiGraph | str | Path | None = None, positions: Positions = "all", seed: int = 0,
        batch_size: int = 32, options: SamplingOptions = SamplingOptions(), device: str | None = None,
        n_bootstrap: int = 1000, progress: bool = True) -> ScrubResult:
    """Scrub ``hypothesis`` on ``data`` [n, seq] and report loss recovered against ``baseline``
    (default: the empty hypothesis, every path resampled).

    The model stays where it is: the run uses its device (``device``, if given, must match it). Launched by
    torchrun, every process calls ``run`` with the same arguments; batch ``i`` is evaluated by rank
    ``i % world_size`` and every rank returns the result one process would (draws depend only on ``seed``
    and the batch index)."""
    check_supported(model)
    model_device = next(model.parameters()).device
    if device is not None and torch.device(device) != model_device:
        raise ValueError(f"the model is on {model_device} but device={device!r}; move it first with "
                         f"model.to({device!r}) (scrub never moves or changes your model)")
    device = model_device
    data = _check_tokens(model, data)
    claim = as_claim(hypothesis, model)
    base = as_claim(baseline if baseline is not None else empty_graph(), model, name="empty")
    tree, base_tree = treeify(claim, options.unit), treeify(base, options.unit)
    current = distributed.setup(device)  # None for one process
    done: list[tuple[int, tuple[dict[str, ExampleLosses], float]]] = []  # (batch index, (losses, self rate))
    batches = distributed.shard(range(0, data.shape[0], batch_size), current)  # this rank's (i, start)
    for i, start in tqdm(batches, desc=f"scrub {claim.name}", disable=not progress, leave=False):
        tokens = data[start : start + batch_size].to(device)  # [batch, seq]
        if tokens.shape[0] < 2:
            continue
        clean = clean_run(model, tokens)
        mask = score_mask(tokens, positions)  # [batch, seq-1]
        salt = f"batch{i}"
        scrub_data = assign_data(tree, tokens, seed=seed, salt=salt, options=options)
        base_data = assign_data(base_tree, tokens, seed=seed, salt=salt, options=options)  # common random numbers
        scrubbed, _ = evaluate(model, tree, scrub_data, clean)
        baselined, _ = evaluate(model, base_tree, base_data, clean)
        losses = {key: example_losses(token_losses(logits, tokens).cpu(), mask.cpu())
                  for key, logits in (("clean", clean.logits), ("baseline", baselined), ("scrubbed", scrubbed))}
        done.append((i, (losses, scrub_data.self_sample_rate())))
    check = None if current is None else (
        claim.name, base.name, tuple(data.shape), hashlib.sha256(data.cpu().numpy().tobytes()).hexdigest(), seed,
        batch_size, options, positions if isinstance(positions, str) else "function", n_bootstrap)
    evaluated = distributed.gather(done, current, check=check)  # every rank's batches, in batch order
    parts = {key: [losses[key] for losses, _ in evaluated] for key in ("clean", "baseline", "scrubbed")}
    self_rates = [rate for _, rate in evaluated]
    joined = {k: ExampleLosses(torch.cat([p.total for p in v]), torch.cat([p.count for p in v])) for k, v in parts.items()}
    keep = joined["clean"].count > 0
    joined = {k: ExampleLosses(v.total[keep], v.count[keep]) for k, v in joined.items()}
    lc, lb, ls = (joined[k].mean() for k in ("clean", "baseline", "scrubbed"))
    ci = bootstrap_recovered(joined["clean"], joined["baseline"], joined["scrubbed"], n_resamples=n_bootstrap, seed=seed)
    return ScrubResult(
        hypothesis=claim.name, baseline=base.name, loss_clean=lc, loss_baseline=lb, loss_scrubbed=ls,
        loss_recovered=float(recovered(lc, lb, ls)), ci_low=ci.low, ci_high=ci.high,
        n_examples=int(keep.sum()), n_tokens=int(joined["clean"].count.sum()),
        self_sample_rate=float(sum(self_rates) / max(len(self_rates), 1)),
        per_example_clean=tuple(joined["clean"].per_example().tolist()),
        per_example_baseline=tuple(joined["baseline"].per_example().tolist()),
        per_example_scrubbed=tuple(joined["scrubbed"].per_example().tolist()),
    )


"""Several processes: shard a run's batches across the ranks of a ``torch.distributed`` process group.

Launched the standard way, ``torchrun --nproc-per-node=N -m scrub run FILE ...``: torchrun sets
``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; ``setup`` starts the process group the first time it is
needed (``nccl`` when the run's device is a GPU, ``gloo`` otherwise) or uses one the caller started.
Batch ``i`` belongs to rank ``i % world_size``; every draw is seeded by the batch index alone, so each
batch is computed exactly as one process computes it, and ``gather`` hands every rank all batches back
in batch order.

A process without torchrun's environment (``WORLD_SIZE`` > 1) never calls into ``torch.distributed``.
No module-level state: everything is read from the environment or from ``torch.distributed`` itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Sequence, TypeVar

import torch

from scrub.errors import ScrubError

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among the processes that share a run."""

    rank: int
    size: int

    def is_main(self) -> bool:
        return self.rank == 0


def launched(env: Mapping[str, str] = os.environ) -> bool:
    """Whether torchrun (or another env:// launcher) started this process as one of several."""
    return int(env.get("WORLD_SIZE", "1")) > 1


def local_rank(env: Mapping[str, str] = os.environ) -> int:
    return int(env.get("LOCAL_RANK", "0"))


def _active() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def world(env: Mapping[str, str] = os.environ) -> World | None:
    """The active process group of a launch of several processes, else None (starts nothing)."""
    if not launched(env) or not _active():
        return None
    import torch.distributed as dist

    size = dist.get_world_size()
    return World(dist.get_rank(), size) if size > 1 else None


def is_main(env: Mapping[str, str] = os.environ) -> bool:
    """Whether this process prints: rank 0 of the process group (or of torchrun's environment before the
    group exists), or a lone process."""
    current = world(env)
    if current is not None:
        return current.is_main()
    return not launched(env) or int(env.get("RANK", "0")) == 0


def device(model: torch.nn.Module | None = None, env: Mapping[str, str] = os.environ) -> torch.device:
    """Where a process runs: ``cuda:LOCAL_RANK`` under torchrun (any number of processes, so
    ``--nproc-per-node=1`` is the one-GPU reference) when CUDA is available, else the model's device (the
    CPU without a model). Only a caller that owns its model (the CLI) places it here."""
    if "LOCAL_RANK" in env and torch.cuda.is_available():
        return torch.device("cuda", local_rank(env))
    if model is not None:
        return next(model.parameters()).device
    return torch.device("cpu")


def backend(run_device: torch.device | str) -> str:
    """``nccl`` for a GPU run, ``gloo`` for a CPU run."""
    return "nccl" if torch.device(run_device).type == "cuda" else "gloo"


def setup(run_device: torch.device | str, env: Mapping[str, str] = os.environ) -> World | None:
    """The process group a run on ``run_device`` shares, started once if torchrun launched this process and
    nobody started it yet; None for a single process (without touching ``torch.distributed``)."""
    if not launched(env):
        return None
    import torch.distributed as dist

    if not dist.is_initialized():
        run_device = torch.device(run_device)
        if run_device.type == "cuda":  # object collectives on nccl go through the current device
            torch.cuda.set_device(run_device)
        dist.init_process_group(backend(run_device))
    return world(env)


def shutdown(env: Mapping[str, str] = os.environ) -> None:
    """End the process group of a launch of several processes, if one is active (the CLI does at exit)."""
    if launched(env) and _active():
        import torch.distributed as dist

        dist.destroy_process_group()


def shard(items: Sequence[T], current: World | None) -> list[tuple[int, T]]:
    """This rank's ``(index, item)`` pairs: index ``i`` belongs to rank ``i % size`` (a lone process: all)."""
    if current is None:
        return list(enumerate(items))
    return [(i, item) for i, item in enumerate(items) if i % current.size == current.rank]


def reassemble(per_rank: Sequence[Sequence[tuple[int, T]]]) -> list[T]:
    """Every rank's ``(index, result)`` pairs joined in index order; an index computed twice is an error."""
    joined = sorted((pair for pairs in per_rank for pair in pairs), key=lambda pair: pair[0])
    indices = [i for i, _ in joined]
    if len(set(indices)) != len(indices):
        raise RuntimeError(f"a batch was computed by more than one rank: {indices}")
    return [result for _, result in joined]


def gather(mine: list[tuple[int, T]], current: World | None, *, check: object = None) -> list[T]:
    """All ranks' ``(index, result)`` pairs on every rank, in index order (results are pickled: keep them
    small and on the CPU). ``check`` is compared across ranks: a sharded run is a collective, so every rank
    must call it with the same arguments; a mismatch raises ``ValueError`` on every rank."""
    if current is None:
        return reassemble([mine])
    import torch.distributed as dist

    gathered: list = [None] * current.size
    dist.all_gather_object(gathered, (check, mine))
    differ = [rank for rank, (c, _) in enumerate(gathered) if c != gathered[0][0]]
    if differ:
        main, other = gathered[0][0], gathered[differ[0]][0]  # rank 0's check and the first one that differs
        what = ([k for k in main if other.get(k) != main[k]] if isinstance(main, dict) and isinstance(other, dict)
                else [])
        raise ScrubError(f"ranks {differ} were given other arguments than rank 0"
                         f"{' (' + ', '.join(what) + ' differ)' if what else ''}: under torchrun every rank must run "
                         f"the same hypothesis, baseline, data and options (a hypothesis file must not depend on "
                         f"RANK or on anything else that differs between processes)")
    return reassemble([pairs for _, pairs in gathered])


def digest(*parts: object) -> str:
    """A short sha256 of ``parts``: tensors by dtype, shape and bytes, anything else by ``repr``."""
    import hashlib

    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            t = part.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(repr(part).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def claim_fingerprint(claim, tokens: torch.Tensor) -> dict[str, str]:
    """What a claim says, as digests comparable across ranks: its edges (source, target, channel), its
    nodes' features by name and by their codes on ``tokens`` [batch, seq] (e.g. the first batch), its
    q/k masks as matrices and its edges' positions as masks on ``tokens``."""
    seq = tokens.shape[1]
    edges = sorted((e.source, e.target, e.channel.value) for e in claim.edges)
    features = [(n.id, n.feature.name, digest(n.feature.codes(tokens))) for n in sorted(claim.nodes, key=lambda n: n.id)
                if n.feature is not None]
    masks = [(e.source, e.target, e.channel.value, digest(e.qk_mask.matrix(seq, tokens.device)))
             for e in claim.edges if e.qk_mask is not None]
    positions = [(e.source, e.target, e.channel.value, digest(e.positions(tokens)))
                 for e in claim.edges if e.positions is not None]
    return {"edges": digest(edges), "features": digest(sorted(features)), "masks": digest(sorted(masks)),
            "positions": digest(sorted(positions))}

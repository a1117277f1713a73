"""A discovery run's progress in one file, so that a run stopped by Ctrl-C, a kill or a crash continues where
it was (``discover(..., resume=path)``, ``scrub discover --resume``) and ends with the result it would have had.

The file holds the run's fingerprint (the model's weights and config, the data, the scored positions, the
options and the searched receivers, each as a digest), the attribution scores once they are computed and the
greedy search's ``Checkpoint`` after each receiver (at most every ``EVERY`` seconds, and after the last).
Each write goes through ``scrub.jsonable.atomic_write`` (a temporary sibling renamed over the file): the file
is always whole.
"""

from __future__ import annotations

import io
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from scrub.discovery.attribution import Attribution
from scrub.discovery.edges import Edge
from scrub.discovery.search import Checkpoint, Decision, How, Verdict
from scrub.errors import ScrubError
from scrub.jsonable import atomic_write

FORMAT = 1  # of the file
EVERY = 5.0  # seconds between two writes of the search's progress at most


class ResumeError(ScrubError):
    """A resume file that cannot continue this run; the message says why and what to do."""


@dataclass
class Journal:
    """The progress file of one run: ``fingerprint`` (part -> digest) says which run it belongs to, ``edges``
    (every edge of the model, in ``all_edges`` order) how edges are numbered in it. Mutable only in what it
    holds and when it last wrote."""

    path: Path
    fingerprint: dict[str, str]
    edges: Sequence[Edge]
    attribution: Attribution | None = None
    search: Checkpoint | None = None
    _written: float = field(default=float("-inf"), repr=False)

    @classmethod
    def open(cls, path: Path | str, fingerprint: dict[str, str], edges: Sequence[Edge]) -> "Journal":
        """The journal at ``path``: what an earlier run of the same fingerprint kept there, or empty if there is
        no file. A file of another run (or unreadable) is a ``ResumeError`` naming what differs."""
        path = Path(path)
        if path.is_dir():
            raise ResumeError(f"resume file {path} is a directory; name a file (it is created if missing)")
        if not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
            raise ResumeError(f"resume file {path}: its folder {path.parent} does not exist or cannot be written")
        for stale in path.parent.glob(f".{path.name}.*.tmp"):  # a killed write's temporary file (atomic_write)
            stale.unlink(missing_ok=True)
        journal = cls(path, dict(fingerprint), tuple(edges))
        if not path.exists():
            return journal
        try:
            kept = torch.load(path, weights_only=True)
            if kept.get("format") != FORMAT:
                raise ValueError(f"format {kept.get('format')!r}, not {FORMAT}")
        except Exception as err:  # noqa: BLE001  any unreadable file is refused the same way
            raise ResumeError(f"resume file {path} cannot be read ({err}); remove it to start over") from None
        differ = sorted(k for k in set(kept["fingerprint"]) | set(fingerprint)
                        if kept["fingerprint"].get(k) != fingerprint.get(k))
        if differ:
            raise ResumeError(f"resume file {path} was written by a discovery with another {', '.join(differ)}; "
                              f"run with the same model, data and arguments, or remove the file to start over")
        journal.attribution = _attribution_of(kept["attribution"], journal.edges)
        journal.search = _checkpoint_of(kept["search"], journal.edges)
        return journal

    def keep_attribution(self, attribution: Attribution) -> None:
        self.attribution = attribution
        self._write()

    def keep_search(self, checkpoint: Checkpoint, *, last: bool = False) -> None:
        """Keep the search's progress; written at most every ``EVERY`` seconds, and always when ``last``."""
        self.search = checkpoint
        if last or time.monotonic() - self._written >= EVERY:
            self._write()

    def flush(self) -> None:
        """Write what is held now (the search's last checkpoint may be newer than the file)."""
        self._write()

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    def _write(self) -> None:
        number = {e: i for i, e in enumerate(self.edges)}
        content: dict[str, Any] = {"format": FORMAT, "fingerprint": self.fingerprint,
                                   "attribution": _attribution_dict(self.attribution, number),
                                   "search": _checkpoint_dict(self.search, number)}
        buffer = io.BytesIO()
        torch.save(content, buffer)
        atomic_write(self.path, buffer.getvalue())  # the file is the old one or the new one, never half of either
        self._written = time.monotonic()


def _attribution_dict(a: Attribution | None, number: dict[Edge, int]) -> dict[str, Any] | None:
    if a is None:
        return None
    scores = torch.tensor([a.scores[e] for e in number], dtype=torch.float64)  # [edges] exact float64 values
    return {"scores": scores, "forward": a.forward, "backward": a.backward}


def _attribution_of(kept: dict[str, Any] | None, edges: Sequence[Edge]) -> Attribution | None:
    if kept is None:
        return None
    return Attribution(dict(zip(edges, kept["scores"].tolist(), strict=True)), kept["forward"], kept["backward"])


def _checkpoint_dict(c: Checkpoint | None, number: dict[Edge, int]) -> dict[str, Any] | None:
    if c is None:
        return None
    decisions = [(number[d.edge], d.verdict.value, d.how.value, d.effect, None if d.ci is None else list(d.ci))
                 for d in c.decisions]
    return {"done": c.done, "decisions": decisions, "kept": sorted(number[e] for e in c.kept), "base": c.base,
            "rng": c.rng, "skipped": c.skipped, "spot_checked": c.spot_checked,
            "spot_violations": c.spot_violations, "trees": c.trees}


def _checkpoint_of(kept: dict[str, Any] | None, edges: Sequence[Edge]) -> Checkpoint | None:
    if kept is None:
        return None
    decisions = tuple(Decision(edges[i], Verdict(v), How(h), effect, None if ci is None else (ci[0], ci[1]))
                      for i, v, h, effect, ci in kept["decisions"])
    return Checkpoint(kept["done"], decisions, frozenset(edges[i] for i in kept["kept"]), kept["base"], kept["rng"],
                      kept["skipped"], kept["spot_checked"], kept["spot_violations"], kept["trees"])

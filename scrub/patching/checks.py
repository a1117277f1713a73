"""Checks of a path-patching request that only the model's structure can tell: a sender -> receiver pair that
cannot connect (the receiver is computed before the sender, or in the same layer) is refused, naming why."""

from __future__ import annotations

from typing import Sequence

from transformer_lens import HookedTransformer

from scrub.claims.sites import Component
from scrub.claims.structure import Structure
from scrub.errors import ScrubError


class UnconnectedError(ScrubError):
    """No sender feeds any receiver: every sender -> receiver cell would be empty."""


def check_connects(model: HookedTransformer, senders: Sequence[Component], receivers: Sequence[Component]) -> None:
    """Refuse ``senders`` and ``receivers`` of which no pair connects (each receiver reads only components
    computed before it); a request where some pairs connect is patched on those."""
    structure = Structure.of(model)
    if any(s in structure.residual_senders(r) for r in receivers for s in senders if r in structure.receivers):
        return
    sender, receiver = senders[0], receivers[0]
    raise UnconnectedError(f"no sender feeds any receiver: {receiver} reads only the components computed before it, "
                           f"and {sender} is not one of them ({receiver} comes first or in the same layer); choose "
                           f"senders in earlier layers than the receivers (e.g. --senders {receiver} --receivers "
                           f"{sender}), or leave --receivers out for every receiver a sender feeds")

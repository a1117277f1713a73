"""Checks of a path-patching request that only the model's structure can tell: a sender -> receiver pair that
cannot connect (the receiver is computed before the sender, or in the same layer) is refused, naming why and
a pair that does connect."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from transformer_lens import HookedTransformer

from scrub.claims.sites import Component, Head, Mlp
from scrub.claims.structure import Structure
from scrub.errors import ScrubError


class UnconnectedError(ScrubError):
    """No sender feeds any receiver: every sender -> receiver cell would be empty."""


@dataclass(frozen=True)
class Spelling:
    """How the refusal names the choices: as the command's flags or as ``patch_matrix``'s arguments."""

    senders: str  # a format with {} for a component
    receivers: str
    no_receivers: str
    between: str  # between a senders and a receivers choice


CLI = Spelling("--senders {}", "--receivers {}", "leave --receivers out", " ")
API = Spelling("senders=['{}']", "receivers=['{}']", "pass receivers=None", ", ")


def check_connects(model: HookedTransformer, senders: Sequence[Component], receivers: Sequence[Component], *,
                   receivers_given: bool = True, spelling: Spelling = CLI) -> bool:
    """Whether some sender feeds some receiver (each receiver reads only components computed before it). None
    does: refused where the receivers were named (``receivers_given``); else False (every receiver was asked
    for and none comes after the senders: only their paths straight to the logits remain). ``spelling``: the
    fixes as command-line flags or as ``patch_matrix`` arguments."""
    structure = Structure.of(model)
    if any(structure.feeds(s, r) for r in receivers for s in senders if r in structure.receivers):
        return True
    if not receivers_given or not senders or not receivers:  # an empty list asks for no cell: nothing to refuse
        return False
    sender, receiver = senders[0], receivers[0]
    if sender == receiver:
        why = f"{sender} cannot feed itself"
    elif not (isinstance(sender, (Head, Mlp)) and isinstance(receiver, (Head, Mlp))):
        why = structure.why_not(sender, receiver)  # (the command line passes heads and MLPs only)
    elif sender.layer == receiver.layer:
        why = (f"{sender} and {receiver} are in one layer, and {receiver} reads the residual stream before {sender} "
               f"writes")
    else:
        why = f"{receiver} (layer {receiver.layer}) is computed before {sender} (layer {sender.layer})"
    later = [r for r in structure.receivers if isinstance(r, (Head, Mlp)) and any(structure.feeds(s, r)
                                                                                  for s in senders)]
    earlier = [s for s in structure.sources if isinstance(s, (Head, Mlp)) and any(structure.feeds(s, r)
                                                                                 for r in receivers)]
    flag_s, flag_r = spelling.senders.format, spelling.receivers.format
    pair = f"{flag_s(receiver)}{spelling.between}{flag_r(sender)}"
    swapped = [f"the pair the other way round ({pair})"] if structure.feeds(receiver, sender) else []
    choices = swapped + ([f"receivers after the senders (e.g. {flag_r(later[0])})"] if later else []) + (
        [f"senders before the receivers (e.g. {flag_s(earlier[0])})"] if earlier else [])
    fixes = [f"choose {' or '.join(choices)}"] if choices else []
    if not earlier:
        reads = "reads" if len(receivers) == 1 else "read"
        fixes.append(f"no head or MLP feeds {', '.join(map(str, receivers))}, which {reads} only the embeddings")
    if not later:
        fixes.append(f"{spelling.no_receivers} for the paths of {', '.join(map(str, senders))} straight to the logits")
    raise UnconnectedError(f"no sender feeds any receiver: {why}; " + "; ".join(fixes))

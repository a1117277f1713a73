"""Good induction candidates: token ids at which "hard" induction (AB ... A -> B) pays, chosen from text, and a
positions function that scores only at them (REMIX-comparable scoring).

Redwood's induction work (Chan et al. 2022; REMIX day 3) scores the loss only at positions whose current token is
in a fixed list of about 10,000 of GPT-2's 50,257 tokens (``remix_d3_data/induction_candidates.pt``), chosen on
OpenWebText as tokens A at which hard induction is particularly helpful (their write-up's appendix says how; the
list itself is a GPT-2-vocabulary file that cannot be used with this tokenizer). This module builds a list of the
same kind for the scrub tokenizer from a token stream by one explicit statistic, so it is *comparable in spirit,
not the same list or rule*:

- an *event* is a position t whose token A occurred earlier in the same document, at most ``window`` tokens
  back (the most recent such occurrence j), and whose next token is in the same document;
- the event is a *hit* when the token after the earlier occurrence repeats: ``stream[j + 1] == stream[t + 1]``;
- a token is a good candidate when it occurs at least ``min_count`` times, has at least ``min_events`` events,
  and at least ``min_hit_rate`` of its events are hits.

Defaults (``MIN_COUNT`` 20, ``MIN_EVENTS`` 10, ``MIN_HIT_RATE`` 0.3, ``WINDOW`` 255): on the shipped validation
stream they pick about 340 of the 2,048 tokens (17% of the vocabulary, against REMIX's ~20%), covering about a
quarter of the positions (speaker names, name fragments, rare words; over every event 24% are hits).

Scoring (``good_candidates``) is REMIX's: a prediction position is scored when its current token is in the list,
whether or not it occurred earlier in the sequence (REMIX's mask does not ask; intersect with
``scrub.data.batches.induction_candidates`` for the stricter set). Unlike REMIX's fixed list, the list is chosen without
the text it scores: the only shipped text is ``scrub/assets/val_tokens.npy`` (the training split is not shipped),
and every natural-text batch of scrub and of the study is cut from that stream, so ``good_candidates(tokens)``
finds the rows of ``tokens`` in the stream (by content) and leaves every event that touches them out of the
statistic (``stream_coverage``). Each batch is thus scored with a list chosen on the rest of the stream, and the
list can differ slightly from batch to batch. Rows not found in the stream (e.g. repeated random tokens) leave
nothing out.

Pure functions on tensors; ``GoodCandidates`` keeps a stream's events (about a second to compute) for reuse.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from scrub.errors import ScrubError

BOS_ID = 0
WINDOW = 255  # an earlier occurrence counts at most this many tokens back (the study's windows: BOS + 255)
MIN_COUNT = 20  # occurrences of a token in the stream (after exclusion)
MIN_EVENTS = 10  # second (or later) occurrences with an earlier one in the window
MIN_HIT_RATE = 0.3  # share of those events where the next token repeats the one after the earlier occurrence


@dataclass(frozen=True)
class RepeatEvents:
    """Every event of a stream: position ``t`` [events], the earlier occurrence ``j`` [events], and ``hit``
    [events] (``stream[j + 1] == stream[t + 1]``)."""

    t: Tensor
    j: Tensor
    hit: Tensor


def repeat_events(stream: Tensor, *, window: int = WINDOW, bos_id: int = BOS_ID) -> RepeatEvents:
    """The events of a 1-D token ``stream`` whose documents each start with ``bos_id`` (see the module
    docstring). BOS itself is never an event."""
    stream = torch.as_tensor(stream, dtype=torch.long).flatten()  # [n]
    n = len(stream)
    empty = torch.zeros(0, dtype=torch.long, device=stream.device)  # [0] every tensor here follows the stream
    if n < 3:
        return RepeatEvents(empty, empty, torch.zeros(0, dtype=torch.bool, device=stream.device))
    doc = torch.cumsum(stream == bos_id, 0)  # [n] document index
    order = torch.sort(stream * n + torch.arange(n, device=stream.device)).indices  # [n] by token, then position
    tok = stream[order]
    same = torch.zeros(n, dtype=torch.bool, device=stream.device)  # [n]
    same[1:] = tok[1:] == tok[:-1]  # the entry before is an earlier occurrence of the same token
    t = order[same]
    j = torch.roll(order, 1)[same]  # the most recent earlier occurrence
    keep = (doc[t] == doc[j]) & (t - j <= window) & (t + 1 < n) & (stream[t] != bos_id)
    t, j = t[keep], j[keep]
    keep = doc[(t + 1).clamp(max=n - 1)] == doc[t]  # the next token is in the same document
    t, j = t[keep], j[keep]
    return RepeatEvents(t, j, stream[j + 1] == stream[t + 1])


def good_candidate_tokens(stream: Tensor, vocab_size: int, *, exclude: Tensor | None = None,
                          events: RepeatEvents | None = None, min_count: int = MIN_COUNT,
                          min_events: int = MIN_EVENTS, min_hit_rate: float = MIN_HIT_RATE,
                          window: int = WINDOW, bos_id: int = BOS_ID) -> Tensor:
    """bool [vocab_size]: the good induction candidates of ``stream`` (module docstring). ``exclude`` (bool
    [len(stream)]) leaves out the positions it marks: their occurrences, and every event whose t, t + 1, j or
    j + 1 is marked. ``events``: ``repeat_events(stream, window=window, bos_id=bos_id)`` if already computed."""
    stream = torch.as_tensor(stream, dtype=torch.long).flatten()  # [n]
    ev = events if events is not None else repeat_events(stream, window=window, bos_id=bos_id)
    tokens, t, j, hit = stream, ev.t, ev.j, ev.hit
    if exclude is not None:
        exclude = torch.as_tensor(exclude, dtype=torch.bool).flatten()
        if exclude.shape != stream.shape:
            raise ScrubError(f"exclude has shape {list(exclude.shape)}, the stream {list(stream.shape)}")
        tokens = stream[~exclude]
        keep = ~(exclude[t] | exclude[t + 1] | exclude[j] | exclude[j + 1])
        t, hit = t[keep], hit[keep]
    in_vocab = lambda x: x[(x >= 0) & (x < vocab_size)]  # noqa: E731
    count = torch.bincount(in_vocab(tokens), minlength=vocab_size)[:vocab_size]  # [vocab]
    n_events = torch.bincount(in_vocab(stream[t]), minlength=vocab_size)[:vocab_size]  # [vocab]
    hits = torch.bincount(in_vocab(stream[t][hit]), minlength=vocab_size)[:vocab_size]  # [vocab]
    rate = hits.double() / n_events.clamp(min=1).double()  # [vocab]
    good = (count >= min_count) & (n_events >= max(min_events, 1)) & (rate >= min_hit_rate)  # [vocab]
    if 0 <= bos_id < vocab_size:
        good[bos_id] = False
    return good


def stream_coverage(stream: Tensor, rows: Tensor, *, bos_id: int = BOS_ID) -> Tensor:
    """bool [len(stream)]: the stream positions that some row of ``rows`` [batch, seq] was cut from. A row is
    found where its tokens (after a leading BOS, which ``scrub.data.batches.natural_batch`` prepends) occur contiguously
    in the stream; rows found nowhere (other text, random tokens) mark nothing."""
    stream = torch.as_tensor(stream, dtype=torch.long).flatten()  # [n]
    covered = torch.zeros(len(stream), dtype=torch.bool, device=stream.device)  # [n]
    for row in torch.as_tensor(rows, dtype=torch.long).reshape(-1, rows.shape[-1]).cpu():
        body = row[1:] if len(row) > 1 and int(row[0]) == bos_id else row  # [L]
        size = len(body)
        if size == 0 or size > len(stream):
            continue
        starts = torch.nonzero(stream[: len(stream) - size + 1] == body[0]).flatten()  # [c]
        for k in range(1, min(size, 8)):  # narrow the candidates token by token (few survive the first ones)
            starts = starts[stream[starts + k] == body[k]]
        if len(starts):  # then compare whole rows
            span = starts[:, None] + torch.arange(size, device=stream.device)  # [c, L]
            starts = starts[(stream[span] == body.to(stream.device)).all(-1)]
        for s in starts.tolist():
            covered[s : s + size] = True
    return covered


@dataclass(frozen=True)
class GoodCandidates:
    """The good-candidate positions function of one token stream, its events computed once: call it on tokens
    [batch, seq] for a bool mask [batch, seq] (True where the current token is a good induction candidate of the
    stream with the text of ``tokens`` left out; BOS never). Build it once per run and reuse it."""

    stream: Tensor  # [n]
    events: RepeatEvents
    __name__ = "good_candidates"  # reads like a positions function in errors

    @classmethod
    def shipped(cls) -> GoodCandidates:
        """The list over the shipped validation stream (``scrub.data.batches.load_val_tokens``; about a second)."""
        from scrub.data.batches import load_val_tokens

        stream = load_val_tokens()  # [n]
        return cls(stream, repeat_events(stream))

    def __call__(self, tokens: Tensor) -> Tensor:
        stream = self.stream
        vocab = int(max(int(tokens.max()) + 1, int(stream.max()) + 1)) if tokens.numel() else int(stream.max()) + 1
        good = good_candidate_tokens(stream, vocab, exclude=stream_coverage(stream, tokens.cpu()), events=self.events)
        return good.to(tokens.device)[tokens]  # [batch, seq]


def good_candidates(tokens: Tensor) -> Tensor:
    """bool [batch, seq]: ``GoodCandidates.shipped()(tokens)``, the positions function for
    ``scrub.run(..., positions=good_candidates)``: the scored prediction positions are those whose current token
    is in the list, as in REMIX (module docstring). It reads the shipped stream on every call; for many batches
    build ``GoodCandidates.shipped()`` once (``positions="good_candidates"`` in ``scrub.run`` does)."""
    return GoodCandidates.shipped()(tokens)

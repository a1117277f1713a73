"""The data layer: token batches and scored positions (``batches``), good induction candidates (``candidates``)."""

from scrub.data.batches import (
    all_positions,
    check_length,
    induction_candidates,
    loss_mask,
    natural_batch,
    repeated_random_tokens,
)

__all__ = ["all_positions", "check_length", "induction_candidates", "loss_mask", "natural_batch",
           "repeated_random_tokens"]

"""scrub: causal scrubbing and path patching on TransformerLens models. Public API re-exports only.

Re-exported here: model loading, component names, tokenizer, data batches, behavioral head scores,
the scrubbing entry points (``run``, hypothesis helpers, features and query-key masks) and path patching.

The names load on first use (PEP 562), so ``import scrub`` and the ``scrub`` command start without torch; a
Ctrl-C while they load is the command's to report, not a traceback at import.
"""

# ruff: noqa: F401  (the TYPE_CHECKING imports below exist for type checkers, not for use here)
from __future__ import annotations

from typing import TYPE_CHECKING

from scrub.lazy import exports

EXPORTS: dict[str, tuple[str, ...]] = {  # module -> the public names it defines (the one list of them)
    "scrub.claims.features": ("Feature",),
    "scrub.claims.files": ("load_hypothesis",),
    "scrub.claims.hypothesis": ("Claim", "HypothesisError", "add_path", "empty_graph", "full_graph", "validate"),
    "scrub.claims.masks": ("QKMask",),
    "scrub.claims.sites": ("Head", "SiteError", "parse_component"),
    "scrub.data.batches": (
        "all_positions",
        "check_length",
        "induction_candidates",
        "loss_mask",
        "natural_batch",
        "repeated_random_tokens",
    ),
    "scrub.discovery.api": ("discover",),
    "scrub.engine.treeify": ("SamplingOptions", "Unit"),
    "scrub.experiment.runner": ("ScrubResult", "run"),
    "scrub.heads.scores": (
        "HeadScores",
        "IclScore",
        "Thresholds",
        "behavioral_induction_heads",
        "head_scores",
        "in_context_learning",
        "previous_token_heads",
    ),
    "scrub.model.loading": ("ModelLoadError", "load_model", "save_checkpoint"),
    "scrub.model.tokenizer": ("Tokenizer", "check_compatible", "load_tokenizer"),
    "scrub.patching.paths": (
        "PatchMatrix",
        "PatchPath",
        "parse_path",
        "patch_effects",
        "patch_matrix",
        "patched_logits",
    ),
}
__all__, __getattr__, __dir__ = exports("scrub", EXPORTS, globals())


if TYPE_CHECKING:  # what type checkers and editors see; tests/test_layout.py checks it equals EXPORTS
    from scrub.claims.features import Feature
    from scrub.claims.files import load_hypothesis
    from scrub.claims.hypothesis import Claim, HypothesisError, add_path, empty_graph, full_graph, validate
    from scrub.claims.masks import QKMask
    from scrub.claims.sites import Head, SiteError, parse_component
    from scrub.data.batches import (
        all_positions,
        check_length,
        induction_candidates,
        loss_mask,
        natural_batch,
        repeated_random_tokens,
    )
    from scrub.discovery.api import discover
    from scrub.engine.treeify import SamplingOptions, Unit
    from scrub.experiment.runner import ScrubResult, run
    from scrub.heads.scores import (
        HeadScores,
        IclScore,
        Thresholds,
        behavioral_induction_heads,
        head_scores,
        in_context_learning,
        previous_token_heads,
    )
    from scrub.model.loading import ModelLoadError, load_model, save_checkpoint
    from scrub.model.tokenizer import Tokenizer, check_compatible, load_tokenizer
    from scrub.patching.paths import PatchMatrix, PatchPath, parse_path, patch_effects, patch_matrix, patched_logits

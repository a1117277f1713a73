"""scrub: causal scrubbing and path patching on TransformerLens models. Public API re-exports only.

Re-exported here: model loading, component names, tokenizer, data batches, behavioral head scores,
the scrubbing entry points (``run``, hypothesis helpers, features and query-key masks) and path patching.
"""

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
from scrub.discovery.api import discover as discover
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

__all__ = [
    "run", "ScrubResult", "SamplingOptions", "Unit", "Feature", "QKMask", "Claim", "HypothesisError", "add_path",
    "empty_graph", "full_graph", "load_hypothesis", "validate", "PatchPath", "PatchMatrix", "parse_path",
    "patched_logits", "patch_effects", "patch_matrix",
    "load_model", "save_checkpoint", "ModelLoadError", "Head", "SiteError", "parse_component",
    "Tokenizer", "load_tokenizer", "check_compatible", "natural_batch", "repeated_random_tokens",
    "induction_candidates", "all_positions", "loss_mask", "check_length", "head_scores", "in_context_learning",
    "HeadScores", "IclScore", "Thresholds", "previous_token_heads", "behavioral_induction_heads",
]

"""scrub: causal scrubbing and path patching on TransformerLens models. Public API re-exports only.

Re-exported here: model loading, component names, tokenizer, data batches, behavioral head scores,
the scrubbing entry points (``run``, hypothesis helpers, features and query-key masks) and path patching.
"""

from scrub.data import (
    all_positions,
    check_length,
    induction_candidates,
    loss_mask,
    natural_batch,
    repeated_random_tokens,
)
from scrub.experiment import ScrubResult, run
from scrub.features import Feature
from scrub.hypothesis import Claim, HypothesisError, add_path, empty_graph, full_graph, validate
from scrub.hypothesis_file import load_hypothesis
from scrub.masks import QKMask
from scrub.model import ModelLoadError, load_model, save_checkpoint
from scrub.patching import PatchMatrix, PatchPath, parse_path, patch_effects, patch_matrix, patched_logits
from scrub.scores import (
    HeadScores,
    IclScore,
    Thresholds,
    behavioral_induction_heads,
    head_scores,
    in_context_learning,
    previous_token_heads,
)
from scrub.sites import Head, SiteError, parse_component
from scrub.tokenizer import Tokenizer, check_compatible, load_tokenizer
from scrub.treeify import SamplingOptions, Unit

__all__ = [
    "run", "ScrubResult", "SamplingOptions", "Unit", "Feature", "QKMask", "Claim", "HypothesisError", "add_path",
    "empty_graph", "full_graph", "load_hypothesis", "validate", "PatchPath", "PatchMatrix", "parse_path",
    "patched_logits", "patch_effects", "patch_matrix",
    "load_model", "save_checkpoint", "ModelLoadError", "Head", "SiteError", "parse_component",
    "Tokenizer", "load_tokenizer", "check_compatible", "natural_batch", "repeated_random_tokens",
    "induction_candidates", "all_positions", "loss_mask", "check_length", "head_scores", "in_context_learning",
    "HeadScores", "IclScore", "Thresholds", "previous_token_heads", "behavioral_induction_heads",
]

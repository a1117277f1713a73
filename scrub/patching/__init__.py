"""Path patching on the engine: paths and single-path effects (``paths``), the vectorised sender x receiver
matrix (``matrix``)."""

from scrub.patching.paths import PatchMatrix, PatchPath, parse_path, patch_effects, patch_matrix, patched_logits

__all__ = ["PatchMatrix", "PatchPath", "parse_path", "patch_effects", "patch_matrix", "patched_logits"]

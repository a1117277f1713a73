"""The naive reference for either sampling unit: node-mode data are unrolled into the per-copy tree first."""

from __future__ import annotations

from torch import Tensor
from transformer_lens import HookedTransformer

from scrub.hypothesis import Claim
from scrub.reference import naive_logits
from scrub.treeify import Assignments, TreeNode, unroll


def naive(model: HookedTransformer, claim: Claim, root: TreeNode, data: Assignments, tokens: Tensor) -> Tensor:
    """Logits of the claim computed literally, one real forward pass per tree copy."""
    if root.shared:
        root, data = unroll(root, data, claim)
    return naive_logits(model, root, data, tokens)

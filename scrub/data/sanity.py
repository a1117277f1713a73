"""Data that make a run's numbers mean less than they say, told as warnings (never errors): sequences that do
not start with the BOS token the model was trained with, rows that are copies of other rows, too few examples
for a bootstrap interval, and a resampling pool larger than the dataset. Pure functions of the tokens."""

from __future__ import annotations

from torch import Tensor
from transformer_lens import HookedTransformer

MIN_INTERVAL_EXAMPLES = 20  # a percentile bootstrap over fewer examples gives an interval that means little


def expected_bos(model: HookedTransformer) -> int | None:
    """The BOS id the model was trained to see first: the scrub tokenizer's for a model of its vocabulary, a
    TransformerLens tokenizer's when the model prepends one; None when nothing is known."""
    from scrub.model.tokenizer import load_tokenizer

    try:
        tokenizer = load_tokenizer()
    except (OSError, ValueError):
        tokenizer = None
    if tokenizer is not None and tokenizer.vocab_size == model.cfg.d_vocab:
        return tokenizer.bos_id
    hf = getattr(model, "tokenizer", None)
    if hf is not None and model.cfg.default_prepend_bos and getattr(hf, "bos_token_id", None) is not None:
        return int(hf.bos_token_id)
    return None


def duplicate_groups(data: Tensor) -> tuple[Tensor, int]:
    """Per example [n], the index of its distinct sequence; and how many distinct sequences there are."""
    unique, inverse = data.unique(dim=0, return_inverse=True)  # [m, seq], [n]
    return inverse, int(unique.shape[0])


def bos_warning(data: Tensor, bos: int | None) -> str | None:
    """A warning when examples [n, seq] do not start with ``bos`` (the model's training BOS)."""
    if bos is None:
        return None
    missing = int((data[:, 0] != bos).sum())
    if not missing:
        return None
    return (f"{missing} of {data.shape[0]} examples do not start with the BOS token (id {bos}) the model was trained "
            f"with: its predictions there are unlike training and loss recovered can leave [0, 1] for that reason "
            f"alone; prepend BOS to every example (scrub.natural_batch does)")


def duplicate_warning(data: Tensor) -> str | None:
    """A warning when some examples [n, seq] are copies of others."""
    _, distinct = duplicate_groups(data)
    n = data.shape[0]
    if distinct == n:
        return None
    return (f"{n - distinct} of {n} examples are copies of another example ({distinct} distinct sequences): a draw "
            f"of a copy is the datum itself (counted as a self draw), and the interval treats copies as independent "
            f"examples; remove the duplicates")


def few_examples_warning(n_examples: int) -> str | None:
    """A warning when the interval rests on fewer than ``MIN_INTERVAL_EXAMPLES`` examples."""
    if n_examples >= MIN_INTERVAL_EXAMPLES:
        return None
    return (f"the interval is bootstrapped from {n_examples} example(s), fewer than the {MIN_INTERVAL_EXAMPLES} it "
            f"needs to mean much; use more examples (--n)")


def pool_warning(pool: int | None, n: int) -> str | None:
    """A warning when the resampling pool asked for is larger than the dataset (every example is used)."""
    if pool is None or pool <= n:
        return None
    return (f"the pool of {pool} is larger than the dataset of {n} examples: draws come from all {n} (pool used: "
            f"{n}); pass --pool ≤ {n}, or none")


def data_warnings(model: HookedTransformer, data: Tensor, n_examples: int, pool: int | None) -> list[str]:
    """Every data warning for examples ``data`` [n, seq] scored on ``n_examples`` of them."""
    found = (bos_warning(data, expected_bos(model)), duplicate_warning(data), few_examples_warning(n_examples),
             pool_warning(pool, data.shape[0]))
    return [w for w in found if w is not None]

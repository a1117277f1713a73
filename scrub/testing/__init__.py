"""``scrub.testing``: the kit for property-testing the resampling engine, your own features, masks and claims.

- ``models``: ``ModelSpec`` tiny random models over every supported architecture; ``tiny_model``, ``random_tokens``.
- ``strategies``: hypothesis strategies (models, token batches, claims, features, masks, sampling options); the
  only module that imports ``hypothesis`` (``pip install scrub[testing]``).
- ``oracles`` (and ``reference``): the naive literal evaluator, literal hook path patching, activation patching.
- ``invariants``: one function per engine contract; ``purity``: a claim's functions depend on what they should.
- ``check``: ``check_claim`` runs every contract that applies to a claim (``scrub check`` prints them).
- ``graphs``, ``pieces``, ``reproducer``: claim edits, reproducible features and masks, failure messages.

See docs/testing.md, "Property-test your extension".
"""

from scrub.testing.check import check_claim, run_checks

__all__ = ["check_claim", "run_checks"]

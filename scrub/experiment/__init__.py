"""Scrubbing experiments: ``run`` from a claim and data to loss recovered (``runner``), under torchrun too
(``distributed``)."""

from scrub.experiment.runner import ScrubResult, run

__all__ = ["ScrubResult", "run"]

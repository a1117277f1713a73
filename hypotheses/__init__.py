"""Hypothesis files (one claim each, ``hypothesis(model) -> networkx.DiGraph``) and their shared helpers
(``_heads``: head roles from the behavioral scores; ``_build``: graph builders). Importable as a package so
experiments can build the same graphs."""

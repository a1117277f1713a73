"""Tools to test scrub and its extensions: the naive literal evaluator (``reference``)."""

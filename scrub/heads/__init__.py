"""Behavioral head scores: prefix matching, copying, previous-token and in-context learning (``scores``)."""

"""``ScrubError``: the base of every error that means "the input is wrong", never "scrub has a bug".

Every user-facing error (a bad model, hypothesis, feature, mask, site, run argument) subclasses it; it is
a ``ValueError`` so that ``except ValueError`` in callers keeps working. The CLI turns exactly these into
exit code 2 with one line; anything else is a bug and is shown as one.
"""


class ScrubError(ValueError):
    """Bad input to scrub: the message names the problem and the fix."""

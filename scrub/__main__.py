"""``python -m scrub ...``: the ``scrub`` command (and what ``torchrun -m scrub ...`` starts in every process)."""

from scrub.cli import main

if __name__ == "__main__":
    raise SystemExit(main())

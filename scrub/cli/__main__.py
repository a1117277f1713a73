"""``python -m scrub.cli``: the same as the ``scrub`` command."""

import sys

from scrub.cli import main

sys.exit(main())

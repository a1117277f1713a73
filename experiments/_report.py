"""The induction study's Markdown report of one model and its ``results.json``. The report is the sections of
``experiments/_report_sections.py`` in order; every number in it is read from a ``StudyResults``
(``experiments/_results.py``; nothing is typed by hand), and Redwood's published numbers are the only constants.
"""

from __future__ import annotations

import json
from pathlib import Path

from experiments._report_sections import SECTIONS
from experiments._results import StudyResults


def write_report(res: StudyResults, out: Path) -> Path:
    """``out/induction_study.md`` and ``out/results.json`` of one model's run; returns the report's path."""
    lines = [line for section in SECTIONS for line in section(res)]
    path = out / "induction_study.md"
    path.write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps(res.summary(), indent=1) + "\n")
    return path

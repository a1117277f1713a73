"""One JSON writer for every output (``--json``, results files, the data of HTML views): strict JSON, in
which a non-finite number becomes ``null`` instead of the ``NaN`` that other readers reject."""

from __future__ import annotations

import json
import math
from enum import Enum
from typing import Any


def plain(value: Any) -> Any:
    """``value`` as JSON-ready data: tuples as lists, enums as their values, dict keys as strings and
    non-finite floats as ``None``; anything else as it is."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, Enum):
        return value.value
    return value


def dumps(value: Any, **options: Any) -> str:
    """``json.dumps`` of ``plain(value)`` that refuses to write ``NaN`` (``options`` as ``json.dumps`` takes)."""
    return json.dumps(plain(value), allow_nan=False, **options)

"""One JSON writer for every output (``--json``, results files, the data of HTML views): strict JSON, in
which a non-finite number becomes ``null`` instead of the ``NaN`` that other readers reject; and one way to
write a text file (pages, hypothesis files, tables) that is never left half-written."""

from __future__ import annotations

import json
import math
import os
import tempfile
from enum import Enum
from pathlib import Path
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


def atomic_write(path: str | Path, content: str | bytes) -> Path:
    """Write ``content`` (text, or bytes) to ``path`` through a temporary file in its folder and a rename: a
    reader, a Ctrl-C or a full disk never sees a half-written file, and an earlier file stays whole until the
    new one is complete. The temporary file is ``.<name>.<random>.tmp``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if isinstance(content, bytes):
            with os.fdopen(fd, "wb") as binary:
                binary.write(content)
        else:
            with os.fdopen(fd, "w", encoding="utf-8") as text:
                text.write(content)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path

"""One progress bar for every long run: tqdm on stderr (so ``--json`` stdout stays one object), shown only
on a terminal unless asked for, and removed when it ends."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def bar(total: int | None, desc: str, *, unit: str = "it", show: bool | None = None, leave: bool = False) -> Any:
    """A tqdm bar of ``total`` steps. ``show``: None = on a terminal only, False = never, True = always."""
    from tqdm import tqdm  # noqa: PLC0415 (tqdm is imported only by runs that report progress)

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=None if show is None else not show,
                leave=leave)


def each(items: Sequence[T], desc: str, *, unit: str = "it", show: bool | None = None) -> Iterator[T]:
    """``items`` one by one, with a bar that advances as each is done."""
    with bar(len(items), desc, unit=unit, show=show) as progress:
        for item in items:
            yield item
            progress.update(1)

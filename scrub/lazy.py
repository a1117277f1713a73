"""Package names that load on first use (PEP 562): ``import scrub`` and the ``scrub`` command start without
torch, so ``scrub --help`` is quick and a Ctrl-C while the engine loads is the command's to report."""

from __future__ import annotations

import importlib
from typing import Any, Callable


def exports(package: str, homes: dict[str, tuple[str, ...]],
            namespace: dict[str, Any]) -> tuple[list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """For ``package`` whose public names live in the modules of ``homes`` (module -> names): its ``__all__``,
    a ``__getattr__`` that imports a name's module on first use and keeps the name in ``namespace``, and a
    ``__dir__`` that lists the names before they load."""
    home = {name: module for module, names in homes.items() for name in names}

    def getattr_(name: str) -> Any:
        if name not in home:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(home[name]), name)
        namespace[name] = value
        return value

    def dir_() -> list[str]:
        return sorted(set(namespace) | set(home))

    return list(home), getattr_, dir_

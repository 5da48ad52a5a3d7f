"""Submodules reachable as attributes of their package without being imported up front."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType


def submodule_getattr(package: str, names: tuple[str, ...]) -> Callable[[str], ModuleType]:
    """A module-level ``__getattr__`` (PEP 562) for ``package`` that imports the submodules
    ``names`` on first access (``recfuse.metrics`` after ``import recfuse`` alone) and raises
    the usual AttributeError for any other name."""

    def __getattr__(name: str) -> ModuleType:
        if name in names:
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__

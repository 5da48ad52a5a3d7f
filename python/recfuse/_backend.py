"""Backend registry and choice: ``backend=`` argument > ``RECFUSE_BACKEND`` > auto.

Auto order: cuda (native, device present) -> cpu (native) -> numba -> numpy. The cupy
backend is used only when asked for by name (it serves machines that have CuPy and a GPU
but no native CUDA build).
"""

from __future__ import annotations

import functools
import importlib
import os
from types import ModuleType
from typing import NamedTuple

BACKEND_NAMES = ("cuda", "cpu", "numba", "cupy", "numpy")
AUTO_ORDER = ("cuda", "cpu", "numba", "numpy")
_MODULE_SUFFIX = {
    "cuda": "cuda", "cpu": "cpu", "numba": "numba_backend", "cupy": "cupy_backend",
    "numpy": "numpy_backend",
}
# Kernel families: each has one module per backend in its package (recfuse._als.cpu, ...).
# A backend's availability (built module, device, optional package) is probed once, through
# the ALS family, which every backend implements.
FAMILIES = {"als": "recfuse._als", "topk": "recfuse._topk", "mlp": "recfuse._mlp"}
_MODULES = {name: f"{FAMILIES['als']}.{suffix}" for name, suffix in _MODULE_SUFFIX.items()}


class BackendInfo(NamedTuple):
    name: str
    available: bool
    detail: str  # why not, when unavailable; what it runs on, when available


@functools.lru_cache(maxsize=None)
def _probe(name: str) -> tuple[ModuleType | None, BackendInfo]:
    try:
        module = importlib.import_module(_MODULES[name])
        available, detail = module.availability()
    except Exception as error:  # a broken optional backend must not break the others
        return None, BackendInfo(name, False, f"{type(error).__name__}: {error}")
    return (module if available else None), BackendInfo(name, bool(available), detail)


def backends() -> list[BackendInfo]:
    """The table of backends: name, whether it is available here, and why (not).

    >>> [b.name for b in backends()]
    ['cuda', 'cpu', 'numba', 'cupy', 'numpy']
    """
    return [_probe(name)[1] for name in BACKEND_NAMES]


def _family_module(name: str, family: str) -> ModuleType | None:
    """The backend's module of ``family``; None when that backend has none (yet)."""
    if family == "als":
        return _probe(name)[0]
    module = f"{FAMILIES[family]}.{_MODULE_SUFFIX[name]}"
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name != module:
            raise
        return None


def resolve_backend(backend: str = "auto", family: str = "als") -> ModuleType:
    """Return the ``family`` module ("als", "topk", "mlp") of ``backend`` ("auto" or a backend name).

    An explicit backend that is not available raises ``RuntimeError`` with the reason.
    """
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a string, got {type(backend).__name__}")
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {tuple(FAMILIES)}, got {family!r}")
    if backend == "auto":
        backend = os.environ.get("RECFUSE_BACKEND", "auto") or "auto"
    if backend == "auto":
        for name in AUTO_ORDER:
            if _probe(name)[0] is not None and _family_module(name, family) is not None:
                return _family_module(name, family)
        raise RuntimeError("no recfuse backend is available")  # numpy always is
    if backend not in BACKEND_NAMES:
        raise ValueError(f"backend must be 'auto' or one of {BACKEND_NAMES}, got {backend!r}")
    module, info = _probe(backend)
    if module is None:
        raise RuntimeError(f"backend {backend!r} is not available: {info.detail}")
    found = _family_module(backend, family)
    if found is None:
        raise RuntimeError(f"backend {backend!r} has no {family} kernels")
    return found

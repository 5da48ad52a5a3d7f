"""Backend registry and choice: ``backend=`` argument > ``RECFUSE_BACKEND`` > auto.

Auto order: cuda (native, device present) -> cpu (native) -> numba -> numpy. The cupy
backend is used only when asked for by name (it serves machines that have CuPy and a GPU
but no native CUDA build).

Each model family ("als", "sgd", ...) has its own module per backend, with the functions
its models call; a backend that has no module for a family is unavailable for it. A module
may define only some of its family's functions (the CUDA SGD module runs SVD only): a model
names the function it needs and "auto" passes over the modules that lack it.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import NamedTuple

from ._validation import check_backend

BACKEND_NAMES = ("cuda", "cpu", "numba", "cupy", "numpy")
AUTO_ORDER = ("cuda", "cpu", "numba", "numpy")
_FAMILIES = {
    "als": {
        "cuda": "recfuse._als.cuda",
        "cpu": "recfuse._als.cpu",
        "numba": "recfuse._als.numba_backend",
        "cupy": "recfuse._als.cupy_backend",
        "numpy": "recfuse._als.numpy_backend",
    },
    "sgd": {
        "cuda": "recfuse._sgd.cuda",
        "cpu": "recfuse._sgd.cpu",
        "numba": "recfuse._sgd.numba_backend",
        "cupy": "recfuse._sgd.cupy_backend",
        "numpy": "recfuse._sgd.numpy_backend",
    },
    "mlp": {
        "cuda": "recfuse._mlp.cuda",
        "cpu": "recfuse._mlp.cpu",
        "numba": "recfuse._mlp.numba_backend",
        "cupy": "recfuse._mlp.cupy_backend",
        "numpy": "recfuse._mlp.numpy_backend",
    },
    "topk": {
        "cuda": "recfuse._topk.cuda",
        "cpu": "recfuse._topk.cpu",
        "numba": "recfuse._topk.numba_backend",
        "cupy": "recfuse._topk.cupy_backend",
        "numpy": "recfuse._topk.numpy_backend",
    },
}


FAMILIES = tuple(_FAMILIES)  # the model families, each with its own backend modules


class BackendInfo(NamedTuple):
    name: str
    available: bool
    detail: str  # why not, when unavailable; what it runs on, when available


_probed: dict[tuple[str, str], tuple[ModuleType | None, BackendInfo]] = {}


def _probe(name: str, family: str = "als") -> tuple[ModuleType | None, BackendInfo]:
    """The module of ``family`` for backend ``name`` (None when unavailable) and its table row,
    probed once, except a cpu backend found unavailable: a misspelt or unsupported
    RECFUSE_SIMD makes it so until the variable is corrected in the process, as
    ``_validation._native_usable`` allows, and the row and "auto" must then follow (asking
    again is cheap: the module is imported, the native level check raises at once). Once a
    level is in use it stays, whatever the variable says later."""
    key = (name, family)
    found = _probed.get(key)
    if found is None:
        found = _probe_now(name, family)
        if found[0] is not None or name != "cpu":
            found = _probed.setdefault(key, found)  # threads probing at once share one answer
    return found


def _probe_now(name: str, family: str) -> tuple[ModuleType | None, BackendInfo]:
    if name not in _FAMILIES[family]:
        return None, BackendInfo(name, False, f"no {family} kernels for this backend")
    try:
        module = importlib.import_module(_FAMILIES[family][name])
        available, detail = module.availability()
    except Exception as error:  # a broken optional backend must not break the others
        return None, BackendInfo(name, False, f"{type(error).__name__}: {error}")
    return (module if available else None), BackendInfo(name, bool(available), detail)


def backends(family: str = "als") -> list[BackendInfo]:
    """The table of backends for a model family: name, whether it is available here, and
    why (not).

    >>> [b.name for b in backends()]
    ['cuda', 'cpu', 'numba', 'cupy', 'numpy']
    """
    _check_family(family)
    return [_probe(name, family)[1] for name in BACKEND_NAMES]


def _check_family(family: str) -> None:
    if not isinstance(family, str):
        raise TypeError(f"family must be a string, one of {tuple(_FAMILIES)}, got "
                        f"{type(family).__name__} {family!r:.60}")
    if family not in _FAMILIES:
        raise ValueError(f"family must be one of {tuple(_FAMILIES)}, got {family!r}")


def resolve_backend(backend: str = "auto", family: str = "als",
                    needs: str | None = None, precision: str | None = None) -> ModuleType:
    """Return the module of ``family`` for ``backend`` ("auto" or one of ``BACKEND_NAMES``).

    ``needs``: the name of a function the caller will use; "auto" passes over modules that
    do not define it. ``precision``: "auto" also passes over modules whose ``PRECISIONS``
    (where a module declares them) lack it; an explicit backend's own code refuses it. ``backend="auto"`` takes ``RECFUSE_BACKEND`` when it is set, as if given
    by name (its errors then name the variable: the caller passed no backend). An explicit
    backend that is not available, or lacks ``needs``, raises ``RuntimeError`` with the
    reason.
    """
    check_backend(backend)
    _check_family(family)
    if needs is not None and not (isinstance(needs, str) and needs):
        raise TypeError(f"needs must be None or a kernel's name (a non-empty str), got "
                        f"{type(needs).__name__} {needs!r:.60}")
    source = ""  # where the name came from, for the errors: the argument, or the variable
    if backend == "auto":
        backend = os.environ.get("RECFUSE_BACKEND", "auto") or "auto"
        source = " (from RECFUSE_BACKEND)" if backend != "auto" else ""
        check_backend(backend, source)
    if backend == "auto":
        for name in AUTO_ORDER:
            module, _ = _probe(name, family)
            if module is not None and (needs is None or hasattr(module, needs)) and (
                    precision is None or precision in getattr(module, "PRECISIONS", (precision,))):
                return module
        if needs is not None:  # numpy always is available: it is the kernel that none has
            raise RuntimeError(f"no available backend has a {needs} kernel for the {family} "
                               f"family" + (f" in {precision}" if precision else ""))
        raise RuntimeError("no recfuse backend is available" + (
            f" for precision {precision!r}" if precision else ""))
    module, info = _probe(backend, family)
    if module is None:
        raise RuntimeError(f"backend {backend!r}{source} is not available: {info.detail}")
    if needs is not None and not hasattr(module, needs):
        able = [name for name in BACKEND_NAMES
                if (found := _probe(name, family)[0]) is not None and hasattr(found, needs)]
        raise RuntimeError(f"backend {backend!r}{source} has no {needs} kernel for the {family} "
                           f"family; available backends that have one: {able}")
    return module

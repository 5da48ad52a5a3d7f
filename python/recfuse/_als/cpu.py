"""The native CPU backend: recfuse._core (C++17, OpenMP, runtime SIMD level)."""

from __future__ import annotations

import sys

from .common import AlsParams, CsrArrays, HostTrainer

NAME = "cpu"

try:
    from .. import _core
except ImportError as error:  # pragma: no cover - only when the package was not built
    _core = None
    _IMPORT_ERROR = f"recfuse._core failed to import: {error}"
else:
    _IMPORT_ERROR = ""


def availability() -> tuple[bool, str]:
    if _core is None:
        return False, _IMPORT_ERROR
    return True, f"SIMD level {_core.simd_level()}"


def half_sweep(R: CsrArrays, Y, X, params: AlsParams, gram=None) -> int:
    return _core.als_half_sweep(
        R.indptr, R.indices, R.data, Y, X, gram,
        regularization=params.regularization, alpha=params.alpha,
        raw_confidence=params.raw_confidence, cholesky=params.cholesky,
        cg_steps=params.cg_steps, num_threads=params.num_threads,
    )


def data_loss(R: CsrArrays, X, Y, params: AlsParams) -> float:
    return _core.als_data_loss(
        R.indptr, R.indices, R.data, X, Y, None,
        alpha=params.alpha, raw_confidence=params.raw_confidence, num_threads=params.num_threads,
    )


def make_trainer(user_items: CsrArrays, item_users: CsrArrays, X, Y, params: AlsParams):
    return HostTrainer(sys.modules[__name__], user_items, item_users, X, Y, params)

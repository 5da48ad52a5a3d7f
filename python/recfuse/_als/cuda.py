"""The native CUDA backend: recfuse._cuda (kernels in cuda/als.cu).

``half_sweep`` and ``data_loss`` take host NumPy arrays and copy them to the device and
back; ``make_trainer`` returns ``recfuse._cuda.AlsTrainer``, which keeps both CSR matrices
and both factor matrices on the device for the whole fit (its ``factors()`` returns new
NumPy arrays). The module imports ``recfuse._cuda`` only when asked, so importing this file
never fails, on a machine without a driver or where the module was not built.
"""

from __future__ import annotations

import importlib.util

from .common import AlsParams, CsrArrays

NAME = "cuda"


def _module():
    from .. import _cuda

    return _cuda


def _built() -> bool:
    """Whether a recfuse._cuda extension file is there at all."""
    try:
        return importlib.util.find_spec(f"{__package__.rpartition('.')[0]}._cuda") is not None
    except Exception:  # noqa: BLE001
        return False


def availability() -> tuple[bool, str]:
    try:
        from .. import _cuda
    except Exception as error:  # noqa: BLE001 - a broken build must not break the registry
        if not _built():
            return False, "recfuse._cuda was not built (no nvcc at build time)"
        return False, f"recfuse._cuda failed to import: {error}"
    try:
        if _cuda.device_count() == 0:
            reason = _cuda.device_error() or "the CUDA runtime reports 0 devices"
            return False, f"no CUDA device: {reason}"
        return True, _cuda.device_name(0)
    except Exception as error:  # noqa: BLE001
        return False, f"no CUDA device: {error}"


def half_sweep(R: CsrArrays, Y, X, params: AlsParams, gram=None) -> int:
    return int(
        _module().als_half_sweep(
            R.indptr, R.indices, R.data, Y, X, gram,
            regularization=params.regularization, alpha=params.alpha,
            raw_confidence=params.raw_confidence, cholesky=params.cholesky,
            cg_steps=params.cg_steps,
        )
    )


def data_loss(R: CsrArrays, X, Y, params: AlsParams) -> float:
    return float(
        _module().als_data_loss(
            R.indptr, R.indices, R.data, X, Y, None,
            alpha=params.alpha, raw_confidence=params.raw_confidence,
        )
    )


def make_trainer(user_items: CsrArrays, item_users: CsrArrays, X, Y, params: AlsParams):
    """A ``recfuse._cuda.AlsTrainer``: sweep_users/sweep_items/data_loss/factors on the device."""
    return _module().AlsTrainer(
        user_items.indptr, user_items.indices, user_items.data,
        item_users.indptr, item_users.indices, item_users.data,
        X, Y,
        params.regularization, params.alpha, params.raw_confidence, params.cholesky,
        params.cg_steps,
    )

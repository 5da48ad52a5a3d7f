"""The NumPy backend: the reference kernels themselves (slow; always available).

A half-sweep and the loss run with NumPy's floating-point errors ignored, as the native and
Numba kernels run (and as the NumPy SGD backend does): an overflowing fit goes to inf/NaN
quietly and the model's own check refuses it with "diverged" (a ValueError), where under
``np.seterr(all="raise")`` or ``-W error`` NumPy's FloatingPointError or RuntimeWarning would
escape instead, on this backend only.
"""

from __future__ import annotations

import numpy as np

from .. import reference
from .common import AlsParams, CsrArrays, HostTrainer

NAME = "numpy"


def availability() -> tuple[bool, str]:
    return True, ""


@np.errstate(all="ignore")
def half_sweep(R: CsrArrays, Y, X, params: AlsParams, gram=None) -> int:
    X[...], failed = reference.als_half_sweep_counted(
        R.to_scipy(),
        Y,
        X,
        regularization=params.regularization,
        alpha=params.alpha,
        confidence=params.confidence,
        solver=params.solver,
        cg_steps=params.cg_steps,
        fixed_gram=gram,
    )
    return failed


@np.errstate(all="ignore")
def data_loss(R: CsrArrays, X, Y, params: AlsParams) -> float:
    X64, Y64 = X.astype(np.float64), Y.astype(np.float64)
    total = float(np.einsum("uk,kl,ul->", X64, Y64.T @ Y64, X64))
    rows = np.repeat(np.arange(R.shape[0]), np.diff(R.indptr))
    d = np.einsum("nk,nk->n", X64[rows], Y64[R.indices])
    w, q = reference.confidence_weights(R.data.astype(np.float64), params.alpha, params.confidence)
    return total + float((q * (1 - 2 * d) + w * d * d).sum())


def make_trainer(user_items: CsrArrays, item_users: CsrArrays, X, Y, params: AlsParams):
    import sys

    return HostTrainer(sys.modules[__name__], user_items, item_users, X, Y, params)

"""What every ALS backend module shares: the argument bundle and a host-side trainer.

A backend module (``recfuse._als.<name>``) defines:

``NAME``
    its name in ``recfuse.backends()``.
``availability() -> (bool, str)``
    whether it can run here and, if not, why (never raises).
``half_sweep(R, Y, X, params, gram=None) -> int``
    re-solve every row of the host NumPy array ``X`` in place against ``Y``
    (the contract of ``recfuse.reference.als_half_sweep``); returns the number of rows left
    unchanged because their system was not positive definite. ``gram``: the YᵀY to use
    (k x k, the model dtype) instead of ``Y``'s own, as a distributed block gives it.
``data_loss(R, X, Y, params) -> float``
    Σ_u [x_uᵀ YᵀY x_u + Σ_i (q_ui − 2 q_ui d_ui + w_ui d_ui²)] with d_ui = x_u·y_i, summed in
    float64 (the products may be in the model dtype):
    the unregularised, unnormalised part of ``recfuse.reference.als_loss``
    (``normalised_loss`` below finishes it).
``make_trainer(user_items, item_users, X, Y, params) -> Trainer``
    a training state for ``ALS.fit``; device backends keep the data resident there.

Arrays handed to a backend are already validated and converted: ``indptr`` int64,
``indices`` int32, ``data``, ``X`` and ``Y`` C-contiguous in the model dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np
import scipy.sparse as sp


class CsrArrays(NamedTuple):
    """A canonical CSR matrix as the four things a kernel needs."""

    indptr: np.ndarray  # int64, rows + 1
    indices: np.ndarray  # int32, nnz, sorted and unique within each row
    data: np.ndarray  # model dtype, nnz
    shape: tuple[int, int]

    @classmethod
    def from_scipy(cls, matrix: sp.csr_matrix, dtype) -> "CsrArrays":
        return cls(
            np.ascontiguousarray(matrix.indptr, dtype=np.int64),
            np.ascontiguousarray(matrix.indices, dtype=np.int32),
            np.ascontiguousarray(matrix.data, dtype=dtype),
            (int(matrix.shape[0]), int(matrix.shape[1])),
        )

    def to_scipy(self) -> sp.csr_matrix:
        return sp.csr_matrix((self.data, self.indices, self.indptr), shape=self.shape)

    def transpose(self) -> "CsrArrays":
        return CsrArrays.from_scipy(self.to_scipy().T.tocsr(), self.data.dtype)

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1])


@dataclass(frozen=True)
class AlsParams:
    regularization: float
    alpha: float
    confidence: str  # "linear" (c = 1 + alpha r) or "raw" (c = |r|, implicit's convention)
    solver: str  # "cg" or "cholesky"
    cg_steps: int
    num_threads: int  # 0: all cores

    @property
    def raw_confidence(self) -> bool:
        return self.confidence == "raw"

    @property
    def cholesky(self) -> bool:
        return self.solver == "cholesky"


class Trainer(Protocol):
    def sweep_users(self) -> int: ...
    def sweep_items(self) -> int: ...
    def data_loss(self) -> float: ...
    def factors(self) -> tuple[np.ndarray, np.ndarray]: ...


def normalised_loss(data_loss: float, X, Y, R: CsrArrays, params: AlsParams) -> float:
    """Turn a backend's data loss into ``recfuse.reference.als_loss`` (regularised, normalised)."""
    from ..reference import confidence_and_preference

    c, _ = confidence_and_preference(R.data.astype(np.float64), params.alpha, params.confidence)
    # Σ over all pairs: 1 for each pair not stored, c for each stored one (not 1 + Σ(c - 1),
    # which loses tiny confidences to rounding).
    total_confidence = (R.shape[0] * R.shape[1] - R.nnz) + float(c.sum())
    penalty = params.regularization * (
        float(np.square(X, dtype=np.float64).sum()) + float(np.square(Y, dtype=np.float64).sum())
    )
    return (data_loss + penalty) / total_confidence if total_confidence else 0.0


def resized_columns(table: np.ndarray, width: int, allocate=None) -> np.ndarray:
    """A new C-ordered table of ``width`` columns: ``table``'s first ones, then zeros (the
    zero padding of recfuse._als.cpu.training_width, or cutting it off). ``allocate(rows,
    cols, dtype)`` makes the new array (default: np.empty)."""
    rows = table.shape[0]
    out = (np.empty((rows, width), dtype=table.dtype) if allocate is None
           else allocate(rows, width, table.dtype))
    common = min(width, table.shape[1])
    out[:, :common] = table[:, :common]
    out[:, common:] = 0
    return out


class HostTrainer:
    """Trainer for backends that work on host arrays: two half-sweeps per iteration."""

    def __init__(self, backend, user_items: CsrArrays, item_users: CsrArrays, X, Y, params):
        self._backend = backend
        self._user_items, self._item_users = user_items, item_users
        self._X, self._Y, self._params = X, Y, params

    def sweep_users(self) -> int:
        return self._backend.half_sweep(self._user_items, self._Y, self._X, self._params)

    def sweep_items(self) -> int:
        return self._backend.half_sweep(self._item_users, self._X, self._Y, self._params)

    def data_loss(self) -> float:
        return self._backend.data_loss(self._user_items, self._X, self._Y, self._params)

    def factors(self) -> tuple[np.ndarray, np.ndarray]:
        return self._X, self._Y

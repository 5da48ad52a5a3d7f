"""The native CPU backend: recfuse._core (C++17, OpenMP, runtime SIMD level)."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np

from .common import AlsParams, CsrArrays, HostTrainer, resized_columns

NAME = "cpu"

try:
    from .. import _core
except ImportError as error:  # pragma: no cover - only when the package was not built
    _core = None
    # Python names a missing module "cannot import name ... (most likely due to a circular
    # import)": say what it is
    _IMPORT_ERROR = ("recfuse._core was not built (no compiled module in the package: "
                     "reinstall recfuse where a C++17 compiler is found)"
                     if importlib.util.find_spec("recfuse._core") is None
                     else f"recfuse._core failed to import: {error}")
else:
    _IMPORT_ERROR = ""


def availability() -> tuple[bool, str]:
    if _core is None:
        return False, _IMPORT_ERROR
    return True, f"SIMD level {_core.simd_level()}"


def half_sweep(R: CsrArrays, Y, X, params: AlsParams, gram=None, *,
               huge_page_copy: bool = True, woodbury_table=None) -> int:
    """One half-sweep; ``huge_page_copy`` and ``woodbury_table`` are the layout hints of a fit
    that keeps its tables on huge pages (HugePageTrainer)."""
    return _core.als_half_sweep(
        R.indptr, R.indices, R.data, Y, X, gram,
        regularization=params.regularization, alpha=params.alpha,
        raw_confidence=params.raw_confidence, cholesky=params.cholesky,
        cg_steps=params.cg_steps, num_threads=params.num_threads,
        huge_page_copy=huge_page_copy, woodbury_table=woodbury_table,
    )


def gram(Y, num_threads: int = 0):
    """YᵀY (k x k, Y's dtype: float32 or float64, C-contiguous): the kernel a half-sweep
    given no gram uses; the same bits for any thread count."""
    return _core.gram(Y, num_threads=num_threads)


def data_loss(R: CsrArrays, X, Y, params: AlsParams) -> float:
    return _core.als_data_loss(
        R.indptr, R.indices, R.data, X, Y, None,
        alpha=params.alpha, raw_confidence=params.raw_confidence, num_threads=params.num_threads,
    )


# The row widths the native kernels specialise (rows held in registers, register-tiled
# systems, the batched CG, the Woodbury path for short rows) and a fit pads to; other widths
# take plain loops. The kernels also specialise 256, which fits at 129..255 are not padded
# to: on 1M entries at k = 200 it cut a Cholesky iteration from 12.9 to 2.9 s where the
# Woodbury path applied, but not where YᵀY was too badly conditioned for it (11.7 s: the
# lane-batched 256 x 256 systems overflow L2), and the tables, 1.3-2x the factors, took the
# fit's memory to 1.9-2.2x CSR + CSRᵀ + factors, past issue 2's 1.5.
PADDED_WIDTHS = (32, 64, 128)


def training_width(k: int, params: AlsParams) -> int:
    """The width a fit's tables train at: k, or for a k below 128 that the kernels do not
    specialise, the next width they do, the extra columns zero. That is the same fit: a zero
    column of the fixed table gives every row's system a row and column of zeros plus λ on
    the diagonal, and a zero right-hand side there, so the column stays exactly zero and the
    others solve the k-column system (up to rounding). Per iteration on 1M entries (50k x
    20k, float32): CG k = 10 94 -> 51 ms, 48 202 -> 110, 100 360 -> 246; Cholesky k = 48 750
    -> 273, 100 1974 -> 360 (bench/README.md, "Unspecialised widths train padded"). The
    Cholesky solver keeps k below 16 (k = 4: 46 ms against 83 padded) and needs λ > 0 (the
    padded block would be singular); CG pads any such k."""
    if k in PADDED_WIDTHS or k > PADDED_WIDTHS[-1]:
        return k
    if params.cholesky and (k < 16 or params.regularization <= 0):
        return k
    return next(width for width in PADDED_WIDTHS if width > k)


def make_trainer(user_items: CsrArrays, item_users: CsrArrays, X, Y, params: AlsParams,
                 factors: int | None = None):
    """The trainer of a fit; ``factors``: the fit's k when X and Y are given already at
    ``training_width(factors)`` (ALS.fit draws its start there: no second copy)."""
    return HugePageTrainer(user_items, item_users, X, Y, params, factors)


class HugePageTrainer(HostTrainer):
    """The host trainer for factor tables that live on transparent huge pages for the whole
    fit (``factor_table``: tables of 4 MiB or more on Linux), so that no half-sweep copies its
    fixed table there first. Each half-sweep reads that table's rows in random
    order, once per stored entry, and on huge pages those reads stop missing the TLB; the
    copy per half-sweep that bought this cost more than the reads gained at k = 64 on this
    VM, whose first touches of fresh pages are slow (5M entries, CG, per iteration: 223 ms
    with the copy, 211 ms without huge pages). The fitted factors are these tables, or at a
    padded width (``training_width``) their first k columns moved to the front of their own
    memory (``take_factors``). The Cholesky solver's
    short rows (Woodbury) also get one table for the fit instead of fresh
    memory per half-sweep (5M entries, paired: 3% less time per iteration at k = 64, 6% at
    k = 128)."""

    def __init__(self, user_items: CsrArrays, item_users: CsrArrays, X, Y, params: AlsParams,
                 factors: int | None = None):
        self._k = X.shape[1] if factors is None else factors
        width = training_width(self._k, params)
        if X.shape[1] != width:  # the given tables are dropped: the padded ones replace them
            X, Y = _padded(X, width), _padded(Y, width)
        # X and Y come from factor_table (ALS.fit): those of 4 MiB or more are on huge pages
        self._x_huge, self._y_huge = _on_huge_pages(X), _on_huge_pages(Y)
        self._woodbury: np.ndarray | None = None  # made by the first Cholesky sweep
        super().__init__(sys.modules[__name__], user_items, item_users, X, Y, params)

    def _woodbury_table(self) -> np.ndarray | None:
        if self._params.cholesky and self._woodbury is None:
            X, Y = self._X, self._Y
            self._woodbury = factor_table(max(X.shape[0], Y.shape[0]), X.shape[1], X.dtype)
        return self._woodbury

    def sweep_users(self) -> int:
        return half_sweep(self._user_items, self._Y, self._X, self._params,
                          huge_page_copy=not self._y_huge, woodbury_table=self._woodbury_table())

    def sweep_items(self) -> int:
        return half_sweep(self._item_users, self._X, self._Y, self._params,
                          huge_page_copy=not self._x_huge, woodbury_table=self._woodbury_table())

    def factors(self) -> tuple[np.ndarray, np.ndarray]:
        """The tables at the fit's k: the training tables, or new ones without the padding
        (the Woodbury table is let go first, so that the copies do not add to the fit's
        peak memory; a later sweep makes it again)."""
        if self._X.shape[1] == self._k:
            return self._X, self._Y
        self._woodbury = None
        return _padded(self._X, self._k), _padded(self._Y, self._k)

    def take_factors(self) -> tuple[np.ndarray, np.ndarray]:
        """``factors()`` at the end of the fit, without copies: at a padded width each table's
        first k columns move to the front of its own memory, whose rest is given back where it
        is on huge pages (copies would have held both widths at once: 1.7-2x the fit's
        memory budget when the factors outweigh the ratings). The trainer is done after."""
        X, Y, k = self._X, self._Y, self._k
        self._X = self._Y = self._woodbury = None
        if X.shape[1] == k:
            return X, Y
        return _narrowed(X, k), _narrowed(Y, k)


_SMALL_TABLE_BYTES = 4 << 20  # below huge_page_table's smallest: never on huge pages


def _narrowed(table: np.ndarray, k: int) -> np.ndarray:
    """``table[:, :k]`` as a C-order (rows, k) array, in ``table``'s own memory unless the
    table is small (under 4 MiB: a copy): row r moves to element r·k, in row order, so each
    block of rows lands before the rows not yet moved (NumPy copies a block that overlaps
    its source through a buffer). Memory past the moved rows is given back where the table
    is on huge pages."""
    rows, width = table.shape
    if table.nbytes < _SMALL_TABLE_BYTES:
        # a small table: a copy of its own size, so that the fitted factors do not hold up
        # to 32 / k times their memory
        return np.ascontiguousarray(table[:, :k])
    flat = table.reshape(-1)
    start = 1  # row 0 is in place
    while start < rows:
        # rows start..end-1 land in [start·k, end·k), which ends before row start's source
        # (start·width) begins: no buffer copy past the first few rows
        end = min(rows, max(start + 1, start * width // k))
        flat[start * k:end * k].reshape(end - start, k)[...] = table[start:end, :k]
        start = end
    if _on_huge_pages(table):
        _core.release_table_tail(table.base, rows * k * table.itemsize)
    return flat[:rows * k].reshape(rows, k)


def _padded(table: np.ndarray, width: int) -> np.ndarray:
    """A new factor_table of ``width`` columns: ``table``'s, then zeros (or cut to width)."""
    return resized_columns(table, width, factor_table)


def factor_table(rows: int, cols: int, dtype) -> np.ndarray:
    """A new (rows, cols) table for a fit's factors: on huge pages where
    ``_core.huge_page_table`` gives them, so that the trainer need not copy it there."""
    table = _core.huge_page_table(rows, cols, np.dtype(dtype).name)
    return np.empty((rows, cols), dtype=dtype) if table is None else table


def _on_huge_pages(table) -> bool:
    """Whether ``factor_table`` put ``table`` on huge pages (its base is the capsule that
    unmaps them)."""
    return type(table.base).__name__ == "PyCapsule"

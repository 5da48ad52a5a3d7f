"""Input checks at the Python boundary: each error says which argument, what was expected
and what came. TypeError for the wrong kind of object or dtype, ValueError for the wrong
shape or value."""

from __future__ import annotations

import functools
import numbers
from collections import abc
import os
import sys
from typing import Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import DTypeLike

from ._typing import Integer

try:  # the one-pass checks below; NumPy's when the native module is not built
    from . import _core as _native
except ImportError:  # pragma: no cover - only when the package was not built
    _native = None

_native_ready = False  # set once a native call is known to work


def _native_usable() -> bool:
    """Whether the native one-pass checks can run. They dispatch by SIMD level, and an
    unsupported or misspelt RECFUSE_SIMD makes every native call raise; the cpu backend is
    then reported unavailable (recfuse.backends()) and the other backends, which validate
    their input here too, must still work: they get NumPy's checks. Once the level has been
    read it cannot become unusable (set_simd_level refuses what the CPU lacks), so success is
    remembered; a failure is asked again (RECFUSE_SIMD may be corrected in the process)."""
    global _native_ready
    if _native_ready:
        return True
    if _native is None:
        return False
    try:
        _native.simd_level()
    except ValueError:
        return False
    _native_ready = True
    return True

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
INT32_MAX = np.iinfo(np.int32).max
INT64_MAX = int(np.iinfo(np.int64).max)  # ids are int64: larger integers are refused
_FLOAT32, _INT64 = np.dtype(np.float32), np.dtype(np.int64)


def all_finite(array: np.ndarray) -> bool:
    """Whether no element of ``array`` is NaN or inf. One native pass without a temporary
    for a C-contiguous float32 array (a per-call check of 1,000 x 32 candidate features:
    2.3 µs of CPU time against NumPy's 4.7), ``np.isfinite(array).all()`` otherwise.

    >>> all_finite(np.array([1.0, np.inf], np.float32))
    False
    """
    if array.dtype is _FLOAT32 and array.flags.c_contiguous and _native_usable():
        return _native.all_finite(array)
    return bool(np.isfinite(array).all())


def id_bounds(ids: np.ndarray) -> tuple[int, int]:
    """(smallest, largest) of a non-empty integer array, in one pass when it is C-contiguous
    int64 (``ids.min()`` and ``ids.max()`` read it twice).

    >>> id_bounds(np.array([3, -1, 7]))
    (-1, 7)
    """
    if ids.dtype is _INT64 and ids.flags.c_contiguous and _native_usable():
        return _native.id_bounds(ids)
    return int(ids.min()), int(ids.max())


def check_int(value, name: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    if type(value) is int:  # the common case, without the slower ABC check below
        return _check_bounds(value, name, minimum, maximum)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    return _check_bounds(int(value), name, minimum, maximum)


# The most results per query a search or ranking returns: the native kernels count them in
# int32 (far more than any catalogue; rows are padded past the items that qualify).
MAX_K = 2**31 - 1


def check_k(k, name: str = "k") -> int:
    """``k``, the results per query: an integer in [1, MAX_K]."""
    return check_int(k, name, minimum=1, maximum=MAX_K)


# The most threads a call may ask for (0 = all cores); the native code counts them in int.
MAX_THREADS = 1 << 16


def check_threads(num_threads, name: str = "num_threads") -> int:
    """``num_threads``: an integer in [0, MAX_THREADS], 0 meaning all cores. The native
    kernels run at most 8 threads per processor (at least 64) whatever the count asked."""
    return check_int(num_threads, name, minimum=0, maximum=MAX_THREADS)


def check_result_size(rows: int, k: int, bytes_per_result: int = 12) -> None:
    """Refuse results of ``rows`` x ``k`` (padded) that could not fit this machine's memory:
    MemoryError naming k, rather than an allocation the system kills the process for."""
    memory = physical_memory()
    if memory is not None and rows * k * bytes_per_result > memory:
        raise MemoryError(f"k = {k} results for {rows} queries need "
                          f"{rows * k * bytes_per_result / 2**30:.1f} GiB (rows are padded "
                          f"to k), more than this machine's {memory / 2**30:.1f} GiB: lower k")


def _check_bounds(value: int, name: str, minimum: int | None, maximum: int | None) -> int:
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_float(value, name: str, *, minimum: float | None = None, strict: bool = False) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum}, got {value}")
    return value


def check_choice(value, name: str, choices) -> str:
    """``value`` when it is one of the strings ``choices``."""
    if not isinstance(value, str):  # an array would compare elementwise
        raise TypeError(f"{name} must be one of {tuple(choices)}, got {type(value).__name__} "
                        f"{value!r}")
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_float_dtype(dtype, name: str = "dtype") -> np.dtype:
    try:
        resolved = np.dtype(dtype)
    except TypeError as error:
        raise TypeError(f"{name} must be float32 or float64, got {dtype!r}") from error
    if resolved not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {resolved}")
    return resolved


def check_csr(
    matrix,
    name: str,
    *,
    dtype: DTypeLike,
    n_cols: int | None = None,
    n_rows: int | None = None,
    nonnegative: bool = False,
) -> sp.csr_matrix:
    """Return ``matrix`` as a canonical CSR matrix of ``dtype`` (a copy only when needed)."""
    if not sp.issparse(matrix):
        raise TypeError(
            f"{name} must be a scipy.sparse CSR matrix, got {type(matrix).__module__}."
            f"{type(matrix).__name__}"
        )
    if matrix.format != "csr":
        raise TypeError(
            f"{name} must be in CSR format, got {matrix.format.upper()}; convert it with .tocsr()"
        )
    if matrix.ndim != 2:
        raise ValueError(f"{name} must be 2-d, got {matrix.ndim}-d")
    rows, cols = matrix.shape
    if n_rows is not None and rows != n_rows:
        raise ValueError(f"{name} must have {n_rows} rows, got shape {matrix.shape}")
    if n_cols is not None and cols != n_cols:
        raise ValueError(f"{name} must have {n_cols} columns, got shape {matrix.shape}")
    if cols > INT32_MAX:
        raise ValueError(f"{name} has {cols} columns; at most {INT32_MAX} are supported")
    if rows > INT32_MAX:  # row ids become int32 column indices of the transpose (ALS)
        raise ValueError(f"{name} has {rows} rows; at most {INT32_MAX} are supported")
    if matrix.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {matrix.dtype}")
    # scipy builds a CSR matrix from given arrays without looking at them; its own methods
    # (sum_duplicates, tocsc) read and write out of bounds on a malformed one.
    nnz = check_csr_arrays(matrix.indptr, matrix.indices, rows, cols, name,
                           data_size=np.asarray(matrix.data).size)
    if nnz < matrix.indices.size:  # arrays longer than the entries (scipy allows it): trimmed
        matrix = sp.csr_matrix((matrix.data[:nnz], matrix.indices[:nnz], matrix.indptr),
                               shape=matrix.shape)
    data = finite_in(np.asarray(matrix.data), dtype, name)
    if data is not matrix.data:  # the values cast once, sharing the index arrays
        matrix = sp.csr_matrix((data, matrix.indices, matrix.indptr), shape=matrix.shape)
    summed = sorted_rows(matrix, add_repeats=True)
    if summed is not matrix:
        matrix = summed
        data = matrix.data  # the values a model reads are the sums: checked as such
        if data.size and not all_finite(data):
            raise ValueError(f"{name} must hold finite values once its repeated entries are "
                             f"added up, got {int((~np.isfinite(data)).sum())} sums beyond "
                             f"{np.dtype(dtype)} ({np.finfo(dtype).max:.3g})")
    if nonnegative and data.size and data.min() < 0:
        raise ValueError(
            f"{name} must hold non-negative values (confidence 1 + alpha * r), got min {data.min()}"
        )
    return sp.csr_matrix(matrix)


def rows_ascending(matrix, *, strict: bool) -> bool:
    """Whether each row of a CSR ``matrix`` (structure checked) lists its columns in
    ascending order (``strict``: no column twice, scipy's canonical format), read from the
    arrays: scipy caches ``has_sorted_indices`` / ``has_canonical_format`` on first use, and
    writes into the arrays in place do not reset them. One pass over the entries."""
    nnz = int(matrix.indptr[-1])
    if nnz < 2:
        return True
    entries = matrix.indices[:nnz]
    ascending = entries[1:] > entries[:-1] if strict else entries[1:] >= entries[:-1]
    starts = np.asarray(matrix.indptr[1:-1], dtype=np.int64)
    starts = starts[(starts > 0) & (starts < nnz)]
    ascending[starts - 1] = True  # a row's first entry follows another row's last
    return bool(ascending.all())


def sorted_rows(matrix, *, add_repeats: bool):
    """A CSR ``matrix`` (structure checked) with each row's columns ascending (and, with
    ``add_repeats``, repeated (row, col) entries added up): ``matrix`` itself when it is so
    already (``rows_ascending``), else a sorted copy."""
    if rows_ascending(matrix, strict=add_repeats):
        return matrix
    matrix = matrix.copy()
    # the copy's flags are scipy's guess; false ones would make it skip the work
    matrix.has_sorted_indices = False
    matrix.has_canonical_format = False
    if add_repeats:
        matrix.sum_duplicates()  # sorts indices and adds repeated (row, col) entries
    else:
        matrix.sort_indices()
    return matrix


def unshared_csr(matrix: sp.csr_matrix, given) -> sp.csr_matrix:
    """``matrix`` (``check_csr``'s result for the caller's ``given``) with a copy of each
    array it shares with ``given``: for a model to keep after its fit, which must not change
    when the caller later refills its own matrix. Models call it once their training
    buffers are freed, so the copies do not raise a fit's peak memory."""
    arrays = [mine.copy() if np.may_share_memory(mine, theirs) else mine
              for mine, theirs in zip((matrix.data, matrix.indices, matrix.indptr),
                                      (given.data, given.indices, given.indptr))]
    if all(a is b for a, b in zip(arrays, (matrix.data, matrix.indices, matrix.indptr))):
        return matrix
    kept = sp.csr_matrix(tuple(arrays), shape=matrix.shape)
    kept.has_canonical_format = True  # as matrix was: not for scipy to look at again
    return kept


def to_csr(matrix, name: str):
    """``matrix`` (a scipy sparse matrix or array of any format) in CSR, its index structure
    checked first (``check_sparse_structure``)."""
    return check_sparse_structure(matrix, name).tocsr()


def check_sparse_structure(matrix, name: str):
    """``matrix`` (any scipy sparse format), returned once its index arrays are checked
    against its shape: scipy's conversions and methods trust them and read or write out of
    bounds on malformed ones (an index past the shape, a decreasing indptr)."""
    if not sp.issparse(matrix):
        raise TypeError(f"{name} must be a scipy.sparse matrix, got "
                        f"{type(matrix).__module__}.{type(matrix).__name__}")
    rows, cols = matrix.shape
    if matrix.format in ("csr", "csc"):
        by_row = matrix.format == "csr"
        check_csr_arrays(matrix.indptr, matrix.indices, rows if by_row else cols,
                         cols if by_row else rows, name,
                         data_size=np.asarray(matrix.data).size,
                         minor="column" if by_row else "row")
    elif matrix.format == "bsr":
        block_rows, block_cols = matrix.blocksize
        check_csr_arrays(matrix.indptr, matrix.indices, rows // block_rows, cols // block_cols,
                         name, data_size=np.asarray(matrix.data).shape[0])
    elif matrix.format == "coo":
        for coordinates, size, axis in ((matrix.row, rows, "row"), (matrix.col, cols, "column")):
            coordinates = np.asarray(coordinates)
            if coordinates.size and (coordinates.min() < 0 or coordinates.max() >= size):
                raise ValueError(f"{name} has {axis} indices outside [0, {size})")
    return matrix


def csr_from_arrays(data, indices, indptr, shape, name: str, *, dtype: DTypeLike,
                    n_rows: int | None = None, n_cols: int | None = None) -> sp.csr_matrix:
    """The CSR matrix of arrays read from a file, checked (check_csr) after its structure
    was checked here: scipy would take malformed arrays as they are."""
    shape = tuple(np.asarray(shape).reshape(-1).tolist())
    if len(shape) != 2 or not all(isinstance(v, int) and v >= 0 for v in shape):
        raise ValueError(f"{name} must have a shape of two integers >= 0, got {shape}")
    check_csr_arrays(indptr, indices, shape[0], shape[1], name, data_size=np.asarray(data).size)
    return check_csr(sp.csr_matrix((data, indices, indptr), shape=shape), name, dtype=dtype,
                     n_rows=n_rows, n_cols=n_cols)


def check_csr_arrays(indptr, indices, n_rows: int, n_cols: int | None, name: str, *,
                     data_size: int | None = None, minor: str = "column") -> int:
    """Check that ``(indptr, indices)`` describe ``n_rows`` CSR rows: indptr 1-d of n_rows + 1
    integers from 0, never decreasing, at most len(indices) (and len(data)); the entries'
    indices in [0, n_cols) when n_cols is given. Returns the number of entries, indptr[-1]."""
    indptr, indices = np.asarray(indptr), np.asarray(indices)
    if indptr.shape != (n_rows + 1,) or indptr.dtype.kind not in "iu":
        raise ValueError(f"{name} must have an indptr of {n_rows + 1} integers (rows + 1), got "
                         f"shape {indptr.shape} and dtype {indptr.dtype}")
    if indices.ndim != 1 or (indices.size and indices.dtype.kind not in "iu"):
        raise ValueError(f"{name} must have 1-d integer indices, got shape {indices.shape} and "
                         f"dtype {indices.dtype}")
    nnz = int(indptr[-1])
    # compared, not differenced: np.diff of unsigned integers wraps and is never < 0
    if indptr[0] != 0 or (indptr[1:] < indptr[:-1]).any():
        raise ValueError(f"{name} has a malformed indptr: it must start at 0 and never "
                         f"decrease, got {indptr[0]} ... {nnz}")
    stored = indices.size if data_size is None else min(indices.size, data_size)
    if nnz > stored:
        raise ValueError(f"{name} has a malformed indptr: it ends at {nnz}, past its "
                         f"{indices.size} indices" + (
                             "" if data_size is None else f" and {data_size} values"))
    if n_cols is not None and nnz:
        entries = indices[:nnz]  # read in place: a widened copy would cost memory at fit
        low, high = id_bounds(entries) if entries.dtype == np.int64 else \
            (int(entries.min()), int(entries.max()))
        if low < 0 or high >= n_cols:
            raise ValueError(f"{name} has {minor} indices outside [0, {n_cols}): got "
                             f"{low if low < 0 else high}")
    return nnz


def finite_in(values: np.ndarray, dtype: DTypeLike, name: str) -> np.ndarray:
    """``values`` as ``dtype``, which must hold them all as finite numbers (no NaN or inf,
    and none of float64's large values that overflow float32)."""
    dtype = np.dtype(dtype)  # a type (np.float32) would print as "<class 'numpy.float32'>"
    with np.errstate(over="ignore", invalid="ignore"):
        cast = values.astype(dtype, copy=False)
    if cast.size and not all_finite(cast):
        bad = int((~np.isfinite(cast)).sum())
        beyond = "" if values.dtype == cast.dtype or not np.isfinite(values).all() else \
            f" as {dtype} (values beyond its range, {np.finfo(dtype).max:.3g})"
        raise ValueError(f"{name} must hold finite values, got {bad} NaN/inf{beyond}")
    return cast


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def caller_stacklevel() -> int:
    """The ``stacklevel`` for a ``warnings.warn`` made by this function's caller that names
    the first frame outside recfuse: the user's line, however many of recfuse's frames
    (serving, load helpers, decorators) lie between. (Python 3.12's ``skip_file_prefixes``
    does this; 3.10 and 3.11 have no such argument.)"""
    frame: Any = sys._getframe(1)  # the function that warns: stacklevel 1
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    return level


def settings_fit_dtype(settings: dict, names, dtype: DTypeLike) -> None:
    """Refuse a checked float setting among ``names`` in ``settings`` (None: not given) whose
    magnitude ``dtype`` cannot hold (1e300 in float32): ValueError naming it, rather than a
    kernel's inf (a NumPy cast warning, then "diverged" or a fit that kept its start)."""
    largest = float(np.finfo(dtype).max)
    for name in names:
        value = settings.get(name)
        if value is not None and abs(value) > largest:
            raise ValueError(f"{name} must be at most {np.dtype(dtype).name}'s largest value "
                             f"{largest:.3g} (the model's arithmetic is in that dtype), got "
                             f"{value:g}")


def array_of(value, name: str, what: str = "an array") -> np.ndarray:
    """``np.asarray(value)``, with an error that names the argument ("{name} must be
    {what}") for a ragged nesting of sequences, where NumPy's names none, and for a container
    without an order (a set, a mapping or its view, a generator), which NumPy would make a
    0-d object array of, as of a scipy.sparse matrix."""
    if sp.issparse(value):
        raise TypeError(f"{name} must be a dense array, got a scipy.sparse {value.format} "
                        f"matrix; convert it with .toarray()")
    if unordered(value):
        raise TypeError(f"{name} must be {what}, got {type(value).__name__}; pass "
                        f"sorted(...) or list(...)")
    # np.asarray would drop the mask and use the hidden values (NumPy's masked arrays only:
    # is_masked also reads pandas' nullable arrays' _mask, whose NA are missing values)
    if isinstance(value, np.ma.MaskedArray) and np.ma.is_masked(value):
        raise TypeError(f"{name} must be {what}, got a masked array with masked entries; "
                        f"pass .compressed() or .filled(...)")
    try:
        return np.asarray(value)
    except ValueError as error:
        raise ValueError(f"{name} must be {what}, got a ragged sequence (rows of different "
                         f"lengths)") from error


def unordered(value) -> bool:
    """Whether ``value`` is a container without an order or a length that NumPy would take
    as one object: a set, a mapping or its view, a generator or other bare iterable."""
    return isinstance(value, (abc.Set, abc.Mapping, abc.MappingView)) or (
        not hasattr(value, "__len__") and hasattr(value, "__iter__")
        and not isinstance(value, np.ndarray))


def refuse_bool_among(value, array: np.ndarray, name: str, what: str) -> None:
    """TypeError when ``value``, a (nested) list or tuple that NumPy made the non-bool
    ``array`` of, holds a bool: NumPy reads True as 1 among ints (and as 1.0 among floats)."""
    if isinstance(value, (list, tuple)) and array.dtype.kind != "b" and holds_bool(value):
        raise TypeError(f"{name} must hold {what}, got a bool among them")


def id_array(value, name: str, what: str = "an array of integers") -> np.ndarray:
    """``array_of(value)`` for ids, with the errors NumPy's conversion would hide: a bool
    among the ints of a list (NumPy reads True as 1), and missing values (a nullable or Arrow
    column's NA/null, which NumPy turns into NaN or None) named as missing."""
    array = array_of(value, name, what)
    refuse_bool_among(value, array, name, "integers (True/False are not ids)")
    missing = 0
    if array.dtype.kind == "f":
        missing = int(np.isnan(array).sum())
    elif array.dtype.kind == "O":
        missing = sum(1 for v in array.reshape(-1).tolist() if _is_missing(v))
    if missing:  # a TypeError, as for any value that is not an integer
        raise TypeError(f"{name} must hold integers, got {missing} missing values "
                        f"(None/NA/NaN)")
    return array


def holds_bool(values: list | tuple) -> bool:
    """Whether a (nested) list or tuple holds a Python or NumPy bool."""
    kinds = set(map(type, values))
    if bool in kinds or np.bool_ in kinds:
        return True
    return bool(kinds & {list, tuple}) and any(
        holds_bool(v) for v in values if isinstance(v, (list, tuple)))


def _is_missing(value) -> bool:
    """None, pandas' NA/NaT or a float NaN: what a column's missing entry converts to."""
    return value is None or type(value).__name__ in ("NAType", "NaTType") or (
        isinstance(value, float) and value != value)


def is_one_id(value, name: str) -> bool:
    """Whether ``value`` is one id (0-d) rather than a sequence of them; a ragged nesting is
    a ValueError naming ``name`` (NumPy's ``np.ndim`` would name none)."""
    return array_of(value, name, "an array of integers").ndim == 0


def int64_array(value, name: str) -> np.ndarray:
    """``value`` as a C-contiguous int64 array of its shape: integers only, none beyond int64
    (a uint64 id past it would wrap to a negative one; Python ints past it make an object
    array)."""
    array = id_array(value, name)
    if array.dtype.kind == "O" and array.size:
        values = array.reshape(-1).tolist()  # NumPy integers stay NumPy integers here
        if all(type(v) is int or isinstance(v, np.integer) for v in values):  # not bools
            values = [int(v) for v in values]
            _within_int64(min(values), max(values), name)
            return np.array(values, dtype=np.int64).reshape(array.shape)
    if array.size and array.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, got dtype {array.dtype}")
    if array.dtype.kind == "u" and array.size:
        _within_int64(0, int(array.max()), name)
    return np.ascontiguousarray(array, dtype=np.int64)


def _within_int64(low: int, high: int, name: str) -> None:
    if low < -INT64_MAX - 1 or high > INT64_MAX:
        raise ValueError(f"{name} must hold integers within int64 (ids below 2**63), got "
                         f"{low if low < -INT64_MAX - 1 else high}")


def check_ids(ids, name: str, upper: int | None, *, allow_new: bool = False) -> np.ndarray:
    """Return ``ids`` as a 1-d int64 array; every id must be in [0, upper) unless allow_new."""
    array = int64_array(ids, name)
    if array.ndim > 1:
        raise ValueError(f"{name} must be an integer or a 1-d array of integers, got shape {array.shape}")
    array = array.reshape(-1)
    if array.size and array.min() < 0:
        raise ValueError(f"{name} must be >= 0, got {array.min()}")
    if not allow_new and upper is not None and array.size and array.max() >= upper:
        raise ValueError(f"{name} must be < {upper}, got {array.max()}")
    return array


def check_factors(array, name: str, *, dtype: DTypeLike, n_cols: Integer | None = None,
                  copy: bool = True) -> np.ndarray:
    """A finite 2-d float array as a C-contiguous copy in ``dtype`` (``copy=False``: the
    array itself when it already is one, e.g. a read-only memory map)."""
    if array is None:  # e.g. the factors of a model not fitted yet
        raise TypeError(f"{name} must be a 2-d array, got None")
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-d, got shape {array.shape}")
    if array.dtype.kind not in "fiu":
        raise TypeError(f"{name} must hold real numbers, got dtype {array.dtype}")
    if n_cols is not None and array.shape[1] != n_cols:
        raise ValueError(f"{name} must have {n_cols} columns, got shape {array.shape}")
    cast = finite_in(array, dtype, name)
    if cast is not array:  # already a fresh array
        return np.ascontiguousarray(cast)
    return np.array(array, order="C", copy=True) if copy else np.ascontiguousarray(array)


def check_ratings(users, items, ratings, rating_scale=None, dtype=np.float64):
    """Validate (user, item, rating) triples for a model of ``dtype`` (the ratings must be
    finite in it); returns (users int64, items int64, ratings float64, scale) where scale is
    ``rating_scale`` as floats, or (min, max) of the ratings."""
    users = check_ids(users, "users", INT32_MAX)
    items = check_ids(items, "items", INT32_MAX)
    values = np.asarray(ratings)
    if values.ndim != 1:
        raise ValueError(f"ratings must be 1-d, got shape {values.shape}")
    if values.size and values.dtype.kind not in "biuf":
        raise TypeError(f"ratings must hold real numbers, got dtype {values.dtype}")
    if not users.size == items.size == values.size:
        raise ValueError(f"users, items and ratings must have the same length, got "
                         f"{users.size}, {items.size} and {values.size}")
    values = values.astype(np.float64)
    finite_in(values, np.dtype(dtype), "ratings")
    if rating_scale is None:
        scale = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    else:
        scale = check_rating_scale(rating_scale)
        outside = (values < scale[0]) | (values > scale[1])
        if outside.any():
            first = int(np.flatnonzero(outside)[0])
            raise ValueError(f"ratings must lie in rating_scale {scale}: {int(outside.sum())} do "
                             f"not, e.g. ratings[{first}] = {values[first]}")
    return users, items, values, scale


def check_rating_scale(rating_scale, *, strict: bool = True) -> tuple[float, float]:
    """``rating_scale``: a pair (lowest, highest) of finite numbers, lowest < highest, as a
    tuple, a list or a NumPy array of two. ``strict=False`` also takes lowest == highest:
    the scale a fit infers from ratings that are all equal (a saved model's, on load)."""
    if isinstance(rating_scale, np.ndarray) and rating_scale.ndim == 1:
        rating_scale = tuple(rating_scale.tolist())
    if not isinstance(rating_scale, (tuple, list)) or len(rating_scale) != 2:
        raise TypeError(f"rating_scale must be a pair (lowest, highest), got {rating_scale!r}")
    low = check_float(rating_scale[0], "rating_scale[0]")
    high = check_float(rating_scale[1], "rating_scale[1]")
    if not (low < high if strict else low <= high):
        relation = "<" if strict else "<="
        raise ValueError(f"rating_scale must have lowest {relation} highest, got {rating_scale!r}")
    return low, high


def read_only_view(array: np.ndarray) -> np.ndarray:
    """A read-only view of ``array`` (an object's own data handed out: a write in place
    raises instead of changing the object behind its back)."""
    view = array.view()
    view.flags.writeable = False
    return view


def check_flag(value, name: str) -> bool:
    """``value`` as a bool: True, False (NumPy's too) or the integers 1 and 0; anything else
    (None, a string, an array of per-user flags, a matrix passed in the wrong place) is a
    TypeError, not read by its truth value."""
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, numbers.Integral)
                                               and value in (0, 1)):
        return bool(value)
    raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r:.60}")


def check_path(value, name: str = "path", what: str = "a file") -> str:
    """``value`` (a str, bytes or os.PathLike) as a str path; anything else is a TypeError
    naming ``name`` ("{name} must be a str or os.PathLike naming {what}"), not
    ``os.fspath``'s, which names no argument."""
    try:
        return os.fsdecode(os.fspath(value))
    except TypeError:
        raise TypeError(f"{name} must be a str or os.PathLike naming {what}, got "
                        f"{type(value).__name__} {value!r:.60}") from None


def check_model_file(path: str, expected: str = "a model file") -> str:
    """``path`` when it names a regular file (after symbolic links); a folder, a missing
    path, or a FIFO or device (whose open() could block) is a FileNotFoundError."""
    if os.path.isdir(path):
        raise FileNotFoundError(f"no model file at {path!r}: it is a folder; give the path "
                                f"of {expected}")
    if not os.path.isfile(path):
        kind = " (it is not a regular file)" if os.path.exists(path) else ""
        raise FileNotFoundError(f"no model file at {path!r}{kind}")
    return path


def check_backend(backend, source: str = "") -> str:
    """A backend name: "auto" or one of recfuse's backends (whether it can run here is
    checked when it is used, so that a model made for a GPU host can be built elsewhere).
    ``source``, for the errors: where the name came from (" (from RECFUSE_BACKEND)")."""
    from ._backend import BACKEND_NAMES

    if not isinstance(backend, str):
        raise TypeError(f"backend{source} must be a string, got {type(backend).__name__}")
    if backend != "auto" and backend not in BACKEND_NAMES:
        raise ValueError(f"backend{source} must be 'auto' or one of {BACKEND_NAMES}, got "
                         f"{backend!r}")
    return backend


def check_random_state(random_state, name: str = "random_state"):
    """None, a seed >= 0, or a numpy.random.Generator, returned as given."""
    if random_state is not None and not isinstance(random_state, np.random.Generator):
        if isinstance(random_state, (bool, np.bool_)) or \
                not isinstance(random_state, numbers.Integral):
            kind = type(random_state).__name__
            raise TypeError(f"{name} must be an integer >= 0, a numpy.random.Generator or "
                            f"None, got {kind} {random_state!r:.60}" +
                            ("; pass numpy.random.default_rng(seed) instead"
                             if isinstance(random_state, np.random.RandomState) else ""))
        check_int(random_state, name, minimum=0)
    return random_state


def seeded_rng(seed, name: str = "seed") -> np.random.Generator:
    """``numpy.random.default_rng(seed)`` once ``seed`` is checked (check_random_state)."""
    return np.random.default_rng(check_random_state(seed, name))


@functools.lru_cache(maxsize=1)
def physical_memory() -> int | None:
    """This machine's memory in bytes, or None where the system does not say (asked once)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def check_count_fits(count: int, name: str, bytes_each: int) -> int:
    """``count`` things of ``bytes_each`` bytes must fit this machine's memory: MemoryError
    naming ``name`` up front, rather than an allocation the system kills the process for."""
    check_counts_fit((count, name, bytes_each))
    return count


def check_counts_fit(*counts: tuple[int, str, int]) -> None:
    """``check_count_fits`` for arrays that live together: ``(count, name, bytes_each)``
    triples whose sizes add up (a user table and an item table), so that two sizes each
    within memory but not both are refused too; MemoryError naming every argument."""
    memory = physical_memory()
    total = sum(count * bytes_each for count, _, bytes_each in counts)
    if memory is not None and total > memory:
        names = " and ".join(f"{name} = {count}" for count, name, _ in counts)
        verb = "needs" if len(counts) == 1 else "need"
        raise MemoryError(f"{names} {verb} {total / 2**30:.1f} GiB, more than this machine's "
                          f"{memory / 2**30:.1f} GiB")

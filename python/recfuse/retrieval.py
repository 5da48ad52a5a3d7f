"""Exact top-k retrieval: score every item for each query, drop what must not be shown,
keep the k best.

``recfuse.topk`` answers one call; ``recfuse.ItemIndex`` prepares an item table once (the
GPU keeps it on the device) and answers many. Both return ``(ids, scores)``:

- ids (int64) and scores (the table's dtype), one row per query, sorted by score
  descending, ties broken by the smaller item id, no id twice;
- when fewer than ``k`` items qualify (``k`` larger than the catalogue, or most items
  excluded), the row is padded with id -1 and score -inf;
- a one-dimensional query gives one-dimensional results.

The score of item j is ``q · v_j`` (``metric="dot"``) or the cosine of the angle between them
(``metric="cosine"``; a zero vector has cosine 0 with everything, and so has an item row whose
1/norm does not fit its dtype, i.e. a row of subnormal numbers), plus ``item_bias[j]`` when
given. Item j qualifies for a query when it is in ``allow`` (if given), not in ``deny``, not a
stored entry of the query's row of ``exclude``, and its score is a number above -inf: an item
whose score is NaN (a NaN in its row of the table; an inf too under ``"cosine"``, while under
``"dot"`` an inf gives a score of +-inf unless it meets a zero) is never returned, and does not
change the order of the others. Queries must be finite.

Scores are float32 (or float64) evaluations of that formula, and the ranking is by those
computed values. Where a dot product overflows partway (values near the dtype's largest),
the evaluation order decides between inf (ranked first) and NaN (never returned), and that
order differs between backends and SIMD levels (fused multiply-adds keep products
unrounded): keep the tables' values well inside the dtype's range.

``storage="bfloat16"`` (float32 items, cpu backend) returns the same ids and the same
scores, bit for bit, as ``storage="native"`` on the same SIMD level: it ranks with a proven
upper bound of each float32 score computed from bfloat16 copies of the items (and, on
CPUs with AVX512-BF16, of the query), and scores every item whose bound reaches the k-th best
again with the float32 kernel's own code.
"""

from __future__ import annotations

import threading

import numpy as np
import scipy.sparse as sp
from numpy.typing import ArrayLike, DTypeLike

from . import _validation as check
from ._backend import resolve_backend
from ._typing import Integer, SparseMatrix

METRICS = ("dot", "cosine")
STORAGES = ("auto", "native", "bfloat16")
# storage="auto" searches the bfloat16 copies when the catalogue holds at least this many
# items per requested result, else the float32 table. Measured on this project's CPU
# (bench/README.md, top-k section): bfloat16 was 1.09-2.7x faster from 2,000 items per
# result up and 0.5-0.8x at 500 and below.
BFLOAT16_ITEMS_PER_RESULT = 1000
# ... and from half as many when the items' norms are skewed (the 99th percentile at least
# SKEWED_NORMS times the median, as in trained factors, whose popular items are longer;
# Gaussian tables: 1.2): the bfloat16 search scans the longest items first and stops where
# a bound of the rest falls below the k-th best. Trained ALS factors on the 2-core Zen 3,
# one thread, float32 time / bfloat16 time for 1 to 256 queries: 5,000 items, k = 10:
# 1.08-2.7x; 10,000, k = 100: 1.04-1.26x; 300,000, k = 1,000: 7.2x (1 query), 1.04x (32);
# 500 items, k = 1: 0.90-1.05x (bench/README.md, "auto storage on trained factors").
BFLOAT16_SKEWED_ITEMS_PER_RESULT = 500
SKEWED_NORMS = 2.0
# ... and never below this many items (the plain rule's smallest table, at k = 1).
BFLOAT16_MIN_ITEMS = 1000
# Where the CPU has no AVX512-BF16 (the bfloat16 values widened to float32: AVX2, or AVX-512
# without BF16), the plain rule holds for single queries only: on the 2-core Zen 3 (two
# threads, Gaussian tables, no early stop) one query gained (1M x 64: 1.63x; a table read from
# memory) and batches lost (1M x 64, 32 queries: 0.43x; 50k x 128, 1,024 queries: 0.45x),
# while skewed norms paid at any batch size (ALS factors, 20k items, k = 10: 1.96x for one
# query, 4.5x for 1,000). bench/README.md, "auto storage where bfloat16 is widened".
# Values per block of the cosine norms' float64 temporaries (8 MB).
_NORM_BLOCK_VALUES = 1 << 20


class ItemIndex:
    """An item table prepared for repeated exact top-k searches.

    Parameters
    ----------
    items : array (n, d)
        Item vectors. float32 and float64 are kept as they are, longdouble becomes float64;
        other real dtypes are converted to float32. The CPU backends keep a reference to a C-contiguous array
        (do not change it while the index is in use); the GPU backends copy it to the device.
    item_bias : array (n,), optional
        Added to every score of item j (finite).
    metric : "dot" or "cosine"
    storage : "auto" (default), "native" or "bfloat16"
        "bfloat16" (float32 items, cpu backend) streams half the bytes per search and, where
        the CPU has AVX512-BF16, does twice the multiply-adds per instruction: each item's
        float32 score is bounded from bfloat16 copies, and the items whose bound reaches the
        k-th best are scored again from the float32 table with the float32 kernel's code, so
        ids and scores equal storage="native"'s bit for bit. It pays for single queries (a
        table read from memory) and for batches with small k; with large k (100 or more)
        the exact rescoring can make it slower than "native", and a zero query (every item
        tied) is scored item by item. The index keeps a reference to the float32 table as
        well. "auto" gives the same results as both: per search it uses the bfloat16 copies
        where they are available and the catalogue holds at least
        ``BFLOAT16_ITEMS_PER_RESULT`` items per result (n >= 1000 k; where the CPU has no
        AVX512-BF16, for single queries only), or half as many when the items' norms are
        skewed (trained factors; the metric "dot"), and at least ``BFLOAT16_MIN_ITEMS`` items
        (1000), the native table otherwise (and for zero queries), each prepared at its
        first use (so an index that serves both holds both).
    backend : "auto" or a backend name (see ``recfuse.backends()``)

    >>> import numpy as np
    >>> index = ItemIndex(np.eye(3, dtype=np.float32))
    >>> index.search(np.array([0.0, 2.0, 1.0], dtype=np.float32), k=2)
    (array([1, 2]), array([2., 1.], dtype=float32))
    """

    def __init__(self, items: ArrayLike, *, item_bias: ArrayLike | None = None,
                 metric: str = "dot", storage: str = "auto", backend: str = "auto") -> None:
        self.metric = check.check_choice(metric, "metric", METRICS)
        self.storage = check.check_choice(storage, "storage", STORAGES)
        self.items = _item_table(items)
        n, d = self.items.shape
        self.bias = None
        if item_bias is not None:
            self.bias = _vector(item_bias, "item_bias", n, self.items.dtype)
        self.scale = None
        if metric == "cosine":
            self.items = _within_dot_range(self.items)
            with np.errstate(under="ignore"):  # 1/norm of a row near 3e38 is subnormal in float32
                self.scale = _inverse_norms(self.items).astype(self.items.dtype)
        self.backend = backend
        self._module = resolve_backend(backend, "topk")
        self._bfloat16_possible = (self.items.dtype == np.float32
                                   and getattr(self._module, "BFLOAT16", False))
        self._check_storage(self.storage)
        self._skewed: bool | None = None  # the norms' skew, measured when a search asks
        self._tables: dict = {}  # "native" / "bfloat16" -> the backend's prepared table
        self._tables_lock = threading.Lock()
        if storage != "auto":
            self._prepared(storage)

    def __reduce__(self):
        """Pickled (and copied) as its table and settings: the copy prepares its own search
        tables (and resolves backend="auto" where it is loaded), as a new index would."""
        return (_index_from, (type(self), self.items, self.bias, self.metric, self.storage,
                              self.backend))

    def _check_storage(self, storage: str) -> None:
        """Refuses a ``storage`` (one of STORAGES) this table or backend cannot have."""
        if storage == "bfloat16" and self.items.dtype != np.float32:
            raise ValueError(f"storage='bfloat16' needs float32 items, got {self.items.dtype}")
        if storage == "bfloat16" and not self._bfloat16_possible:
            raise ValueError(f"storage='bfloat16' is not available on the "
                             f"{self._module.NAME!r} backend (use backend='cpu')")

    def _prepared(self, storage: str, num_threads: int = 0):
        """The backend's table for ``storage`` ("native" or "bfloat16"), prepared once (by
        the first search, on its ``num_threads``)."""
        table = self._tables.get(storage)
        if table is None:
            with self._tables_lock:  # concurrent first searches prepare it once
                table = self._tables.get(storage)
                if table is None:
                    extra = {"bfloat16": True} if storage == "bfloat16" else {}
                    table = self._module.prepare(self.items, self.bias, self.scale,
                                                 num_threads=num_threads, **extra)
                    self._tables[storage] = table
        return table

    def storage_for(self, k: Integer, queries: Integer | None = None) -> str:
        """The storage a search of ``queries`` queries (None: any number) for ``k`` results
        reads: "native" or "bfloat16"."""
        k = check.check_k(k)
        if queries is not None:
            queries = check.check_int(queries, "queries", minimum=0)
        if self.storage != "auto":
            return self.storage
        n = self.items.shape[0]
        if not self._bfloat16_possible or n < BFLOAT16_MIN_ITEMS:
            return "native"
        k = min(k, n)  # a search returns at most n (the rest is padding)
        # widened bfloat16 (no AVX512-BF16) on a scan that cannot stop early gains for a
        # single query only: batches take the plain rule where the norms are skewed
        if n >= BFLOAT16_ITEMS_PER_RESULT * k and (queries == 1 or self._module.bfloat16_dot()):
            return "bfloat16"
        if n < BFLOAT16_SKEWED_ITEMS_PER_RESULT * k:
            return "native"
        if self._skewed is None:  # once (a race measures it twice, alike)
            self._skewed = self.metric == "dot" and _skewed_norms(self.items)
        return "bfloat16" if self._skewed else "native"

    @property
    def shape(self) -> tuple[int, int]:
        """(items, d) of the table."""
        return self.items.shape

    def search(self, queries: ArrayLike, k: Integer, *, exclude: SparseMatrix | None = None,
               allow: ArrayLike | None = None, deny: ArrayLike | None = None,
               num_threads: Integer = 0) -> tuple[np.ndarray, np.ndarray]:
        """The k best qualifying items for each query: ``(ids, scores)``.

        queries : array (m, d) or (d,)
        k : int >= 1 (larger than the number of items pads every row)
        exclude : scipy sparse matrix (m, n), optional
            Per-query items never to return (e.g. the items a user has seen): every stored
            entry counts, whatever its value (but for a DIA matrix, whose diagonals store the
            zeros between its entries: its nonzero values count, as scipy converts it).
        allow, deny : sequences of item ids (repeats are fine) or boolean masks of the n
            items, optional. Only ``allow`` may be returned; ``deny`` never is.
        num_threads : int, 0 = all cores (CPU backends)
        """
        n, d = self.items.shape
        Q = _queries(queries, d, self.items.dtype, self.metric)
        single = np.ndim(queries) == 1  # once _queries has refused a ragged sequence
        k = check.check_k(k)
        check.check_result_size(Q.shape[0], k, 8 + self.items.dtype.itemsize)
        num_threads = check.check_threads(num_threads)
        excluded = None if exclude is None else _exclusions(exclude, Q.shape[0], n)
        mask = _item_mask(allow, deny, n)
        ids, scores = self._search_checked(Q, k, excluded, mask, num_threads, unit=True)
        if single:
            return ids[0], scores[0]
        return ids, scores

    def _search_checked(self, Q: np.ndarray, k: int, excluded, mask, num_threads: int,
                        unit: bool = False):
        """``search`` once its arguments are checked and converted: Q (m, d) finite,
        C-contiguous in the table's dtype (``unit``: rows already of length 1 where the
        metric is cosine, as ``_queries`` makes them); excluded None or (indptr int64
        (m + 1,), indices int32 sorted within each row); mask None or uint8 (n,)
        (``_item_mask``). For callers that hold such arrays already (``recfuse.Recommender``
        on every request)."""
        if self.metric == "cosine" and not unit:
            Q = _unit_rows(Q).astype(self.items.dtype)
        if Q.shape[0] == 0:
            return (np.empty((0, k), dtype=np.int64), np.empty((0, k), dtype=self.items.dtype))
        storage = self.storage_for(k, Q.shape[0])
        if storage == "bfloat16" and self.storage == "auto":
            # a zero query ties every item (score 0, or the bias): the bfloat16 search scores
            # each one exactly (1,000 items: 160 us against 17), the float32 one takes the
            # first ids; ALS gives a user without a positive the zero vector. Same answers.
            zero = np.asarray(~Q.any(axis=1))
            if zero.any():
                ids = np.empty((Q.shape[0], k), dtype=np.int64)
                scores = np.empty((Q.shape[0], k), dtype=self.items.dtype)
                for rows, part in ((zero, "native"), (~zero, "bfloat16")):
                    if rows.any():
                        ids[rows], scores[rows] = self._module.search(
                            self._prepared(part, num_threads), np.ascontiguousarray(Q[rows]),
                            k, _rows_of(excluded, rows), mask, num_threads)
                return ids, scores
        table = self._prepared(storage, num_threads)
        return self._module.search(table, Q, k, excluded, mask, num_threads)

    def __repr__(self) -> str:
        n, d = self.items.shape
        return (f"ItemIndex({n} items x {d}, {self.items.dtype.name}, metric={self.metric!r}, "
                f"storage={self.storage!r}, backend={self._module.NAME!r})")


def by_score_then_id(ids: np.ndarray, scores: np.ndarray, keep: int | None = None):
    """Rows of (ids, scores) ordered by score descending, ties by smaller id, padding (-1,
    -inf) last; the first ``keep`` of each. For results whose scores changed after the
    search (an offset added, lists merged): values that were apart can round to a tie."""
    order = np.lexsort((np.where(ids >= 0, ids, np.iinfo(np.int64).max), -scores), axis=-1)
    if keep is not None:
        order = order[:, :keep]
    return np.take_along_axis(ids, order, axis=1), np.take_along_axis(scores, order, axis=1)


def topk(queries: ArrayLike, items: ArrayLike, k: Integer, *,
         exclude: SparseMatrix | None = None, allow: ArrayLike | None = None,
         deny: ArrayLike | None = None, item_bias: ArrayLike | None = None,
         metric: str = "dot", storage: str = "auto", backend: str = "auto",
         num_threads: Integer = 0) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of ``queries`` against ``items``: ``(ids, scores)``.

    One-call form of ``ItemIndex(items, item_bias=..., metric=..., storage=..., backend=...)
    .search(...)``;
    see the module documentation for the contract (ordering, ties, padding, NaN).
    ``storage="auto"`` reads the float32 table here: the index lives for one call, and
    preparing its bfloat16 copies costs more than a call's search saves (100,000 x 64
    trained factors, one query: 42 ms against 3.6). Build an ``ItemIndex`` to search the
    same items repeatedly.

    >>> import numpy as np
    >>> items = np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32)
    >>> topk(np.array([[1, 0]], dtype=np.float32), items, k=2)
    (array([[0, 2]]), array([[1., 1.]], dtype=float32))
    """
    storage = check.check_choice(storage, "storage", STORAGES)
    index = ItemIndex(items, item_bias=item_bias, metric=metric, backend=backend)
    index._check_storage(storage)
    # set after construction: the search then packs the table on its num_threads (a
    # constructor given a storage packs it at once, on every core)
    index.storage = "native" if storage == "auto" else storage
    return index.search(queries, k, exclude=exclude, allow=allow, deny=deny,
                        num_threads=num_threads)


# ---------------------------------------------------------------------- input checks


def _real_array(value, name: str) -> np.ndarray:
    array = check.array_of(value, name, "an array of real numbers")  # sparse: refused
    if array.dtype.kind == "f" and array.dtype.itemsize < 4:  # float16: computed in float32
        return array.astype(np.float32)
    if array.dtype.kind not in "fiu":
        raise TypeError(f"{name} must hold real numbers, got dtype {array.dtype}")
    return array


def _skewed_norms(items: np.ndarray, sample: int = 1 << 16) -> bool:
    """Whether the 99th percentile of the rows' norms is at least ``SKEWED_NORMS`` times
    their median (over at most ``sample`` evenly spaced rows). Zero rows count; non-finite
    ones make it False."""
    rows = items[:: max(1, -(-items.shape[0] // sample))].astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        norms = np.sqrt(np.einsum("ij,ij->i", rows, rows))
    if not np.isfinite(norms).all():
        return False
    high, middle = np.percentile(norms, [99, 50])
    return bool(high >= SKEWED_NORMS * middle and high > 0)


def _row_blocks(rows: np.ndarray):
    """Slices of ``rows`` small enough that a float64 temporary of one stays near 8 MB."""
    block = max(1, _NORM_BLOCK_VALUES // max(1, rows.shape[1]))
    return (slice(start, start + block) for start in range(0, rows.shape[0], block))


def _largest_magnitudes(rows: np.ndarray) -> np.ndarray:
    """max |row| per row in float64 (NaN where a row holds NaN), block by block."""
    largest = np.empty(rows.shape[0], dtype=np.float64)
    with np.errstate(invalid="ignore"):
        for part in _row_blocks(rows):
            largest[part] = np.abs(rows[part]).max(axis=1, initial=0)
    return largest


def _inverse_norms(rows: np.ndarray) -> np.ndarray:
    """1 / ||row|| in float64, 0 for a zero row, NaN for a row holding NaN or inf.

    Rows are divided by their largest magnitude first, so huge or subnormal rows neither
    overflow nor underflow. A row whose 1/norm does not fit its own dtype (a float32 row of
    subnormals) counts as a zero row: the per-item scale is stored in that dtype."""
    largest = _largest_magnitudes(rows)
    usable = (largest > 0) & np.isfinite(largest)
    safe = np.where(usable, largest, 1.0)
    inverse = np.empty(rows.shape[0], dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        for part in _row_blocks(rows):
            scaled = rows[part] / safe[part, None]
            # ||scaled|| lies in [1, sqrt(d)]: 1/norm = (1/||scaled||) / largest cannot overflow.
            inverse[part] = 1.0 / np.sqrt(
                np.einsum("ij,ij->i", scaled, scaled, dtype=np.float64)) / safe[part]
    inverse[~usable] = 0.0
    inverse[inverse > np.finfo(rows.dtype).max] = 0.0
    inverse[~np.isfinite(largest)] = np.nan
    return inverse


def _within_dot_range(rows: np.ndarray) -> np.ndarray:
    """``rows``, with those whose dot product with a unit vector could overflow their dtype
    (largest magnitude above max / (2 sqrt(d))) scaled down by a power of two, exactly: a
    cosine index multiplies each dot product by the row's 1/norm, which stays the same
    cosine. A copy only when some row is scaled."""
    limit = float(np.finfo(rows.dtype).max) / (2.0 * np.sqrt(rows.shape[1]))
    largest = _largest_magnitudes(rows)
    big = np.isfinite(largest) & (largest > limit)
    if not big.any():
        return rows
    rows = rows.copy()
    rows[big] *= np.exp2(-np.ceil(np.log2(largest[big] / limit)))[:, None].astype(rows.dtype)
    return rows


def _index_from(cls, items, bias, metric: str, storage: str, backend: str) -> ItemIndex:
    """The ItemIndex (of class ``cls``: a subclass stays one) an ``ItemIndex.__reduce__``
    describes."""
    return cls(items, item_bias=bias, metric=metric, storage=storage, backend=backend)


def _item_table(items) -> np.ndarray:
    array = _real_array(items, "items")
    if array.ndim != 2:
        raise ValueError(f"items must be 2-d (n items x d), got shape {array.shape}")
    if array.shape[1] == 0:
        raise ValueError(f"items must have at least one column, got shape {array.shape}")
    if array.shape[0] > check.INT32_MAX:
        raise ValueError(f"items must have at most {check.INT32_MAX} rows, got {array.shape[0]}")
    native = np.dtype(array.dtype.type)  # native byte order: '>f8' stays float64
    if native.kind == "f" and native.itemsize > 8:  # longdouble: float64 keeps its range
        native = np.dtype(np.float64)
    dtype = native if native in check.FLOAT_DTYPES else np.dtype(np.float32)
    return np.ascontiguousarray(array, dtype=dtype)


def _vector(value, name: str, n: int, dtype) -> np.ndarray:
    array = _real_array(value, name)
    if array.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) (one value per item), got {array.shape}")
    return np.ascontiguousarray(check.finite_in(array, dtype, name))


def _queries(queries, d: int, dtype, metric: str) -> np.ndarray:
    """The queries as an m x d C-contiguous array of ``dtype``, finite in it. Cosine queries
    are scaled to length 1 first, in float64 (``_unit_rows``): they keep their direction even
    when their values are beyond ``dtype``'s range."""
    array = _real_array(queries, "queries")
    if array.ndim not in (1, 2):
        raise ValueError(f"queries must be 1-d (d,) or 2-d (m x d), got shape {array.shape}")
    if array.shape[-1] != d:
        raise ValueError(f"queries must have d = {d} columns like items, got shape {array.shape}")
    if array.ndim == 1:
        array = array[None, :]
    if metric == "cosine" and array.size and check.all_finite(array):
        array = _unit_rows(array)
    return np.ascontiguousarray(check.finite_in(array, dtype, "queries"))


def _unit_rows(Q: np.ndarray) -> np.ndarray:
    """The finite rows of Q scaled to length 1 (zero rows stay zero), computed in float64.
    Dividing by the largest magnitude first leaves 1/norm in [1/sqrt(d), 1], so even
    subnormal rows, or rows beyond the table's dtype, keep their direction."""
    largest = np.abs(Q).max(axis=1, initial=0).astype(np.float64)
    Q = Q / np.where(largest > 0, largest, 1.0)[:, None]
    return Q * _inverse_norms(Q)[:, None]


def _exclusions(exclude, m: int, n: int):
    """(indptr int64, indices int32 sorted within each row) of a sparse m x n matrix."""
    if not sp.issparse(exclude):
        raise TypeError(f"exclude must be a scipy sparse matrix (m x n), got "
                        f"{type(exclude).__name__}")
    if exclude.shape != (m, n):
        raise ValueError(f"exclude must have shape ({m}, {n}) (queries x items), got "
                         f"{exclude.shape}")
    E = check.sorted_rows(check.to_csr(exclude, "exclude"), add_repeats=False)
    nnz = int(E.indptr[-1])  # scipy allows index arrays longer than the entries
    return (np.ascontiguousarray(E.indptr, dtype=np.int64),
            np.ascontiguousarray(E.indices[:nnz], dtype=np.int32))


def _rows_of(excluded, rows: np.ndarray):
    """The rows ``rows`` (positions, or a bool mask) of exclusions (indptr, indices), as a
    new (indptr int64, indices); None for None."""
    if excluded is None:
        return None
    indptr, indices = excluded
    starts, ends = indptr[:-1][rows], indptr[1:][rows]
    lengths = ends - starts
    out = np.zeros(lengths.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=out[1:])
    # position j of kept row r reads indices[starts[r] + j - out[r]]
    positions = np.arange(out[-1]) + np.repeat(starts - out[:-1], lengths)
    return out, indices[positions]


def _item_mask(allow, deny, n: int):
    """uint8 n-vector (1 = may be returned), or None when every item may be."""
    if allow is None and deny is None:
        return None
    mask = np.ones(n, dtype=np.uint8)
    if allow is not None:
        mask[:] = 0
        mask[_listed(allow, "allow", n)] = 1
    if deny is not None:
        mask[_listed(deny, "deny", n)] = 0
    return mask


def _listed(ids, name: str, n: int) -> np.ndarray:
    """Item ids of an ``allow``/``deny`` argument: ids, or a boolean mask of all n items."""
    what = f"a sequence or array of item ids, or a boolean mask of the {n} items"
    if sp.issparse(ids):
        raise TypeError(f"{name} must be {what}, got {type(ids).__name__}; convert it with "
                        f".toarray().ravel()")
    array = check.array_of(ids, name, what)
    if array.dtype == np.bool_ and array.size:
        if array.shape != (n,):
            raise ValueError(f"{name} as a boolean mask must have one entry per item ({n}), "
                             f"got shape {array.shape}")
        return np.flatnonzero(array)
    return check.check_ids(ids, name, n)


def write_recommendations(path, chunks, score_dtype: DTypeLike = np.float32) -> int:
    """Write ``(user_ids, item_ids, scores)`` chunks to a Parquet file, one row per
    recommendation (columns user, rank, item, score; padding dropped), atomically: a
    temporary file in the same folder renamed over ``path`` at the end. Returns the rows.
    ``score_dtype``: the scores' column type, also of a file without rows."""
    from .persistence import atomic_write

    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as error:
        raise ImportError("writing Parquet needs pyarrow: pip install pyarrow") from error
    rows = 0

    def write(temporary: str) -> None:
        nonlocal rows
        writer = None
        try:
            for users, ids, scores in chunks:
                keep = ids >= 0
                k = ids.shape[1]
                table = pa.table({
                    "user": np.repeat(np.asarray(users, np.int64), k)[keep.ravel()],
                    "rank": np.tile(np.arange(k, dtype=np.int32), len(users))[keep.ravel()],
                    "item": ids[keep],
                    "score": scores[keep],
                })
                if writer is None:
                    writer = pq.ParquetWriter(temporary, table.schema)
                writer.write_table(table)
                rows += table.num_rows
            if writer is None:  # no users: an empty file with the schema
                pq.write_table(pa.table({"user": pa.array([], pa.int64()),
                                         "rank": pa.array([], pa.int32()),
                                         "item": pa.array([], pa.int64()),
                                         "score": pa.array(np.zeros(0, score_dtype))}),
                               temporary)
        finally:
            if writer is not None:
                writer.close()

    atomic_write(path, write)
    return rows

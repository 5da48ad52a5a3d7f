"""The engine-neutral half of distributed ALS: what runs inside one task, on one worker.

Nothing here knows Dask or Spark. Each function takes and returns plain NumPy, pandas or
small dataclass values, so ``DaskALS`` submits them as tasks and ``SparkALS`` calls them
inside ``mapInPandas``. The layout follows Spark MLlib's blocked ALS:

- Ids. External ids (integers, strings, or both in one column) are mapped to dense ints:
  the integers in ascending order first, then the strings in ascending order
  (``IdMap``). A string "7" and an integer 7 are two different ids.
- Blocks. Dense id ``g`` of a side split into ``n`` blocks lives in block ``g % n`` at local
  row ``g // n``. No lookup table is needed to find a vector.
- Rating blocks. The ratings are stored twice: by user block (rows = the block's users) and
  by item block (rows = the block's items). A block's CSR has one column per *other-side*
  id it references ("needed", ascending global id), so it needs only those vectors and its
  rows keep the same column order as the global CSR matrix (same sums, same order).
- A half-sweep of block ``b`` gathers the needed vectors of the fixed side (from a broadcast
  copy of the whole fixed side, or from one piece per source block: the in/out-link
  exchange), and runs the native ``half_sweep`` of the chosen backend with the Gram matrix
  of the whole fixed side passed in.
- Initial factors are a pure function of (seed, side, dense id): the same for any block
  layout or worker count, and the same that ``initial_factors`` gives a single-machine fit.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace

import numpy as np

try:  # the distributed and spark extras bring it; fit says so (_require_dask, ...)
    import pandas as pd
except ImportError:  # pragma: no cover - exercised without the extras
    pd = None
import scipy.sparse as sp

from .. import _validation as check
from .._als.common import AlsParams, CsrArrays, resized_columns
from .._backend import resolve_backend
from ..persistence import atomic_write
from ..reference import splitmix64_draws

INT64_MAX = np.iinfo(np.int64).max
SIDES = ("users", "items")


# ---------------------------------------------------------------------------- ids


def _integral_floats(values: np.ndarray, name: str) -> np.ndarray:
    if not np.isfinite(values).all() or not (values == np.floor(values)).all():
        raise TypeError(f"{name} holds non-integral float ids; ids must be integers or strings")
    if values.size and np.abs(values).max() > 2**53:
        raise TypeError(f"{name} holds float ids beyond 2**53 that cannot be exact integers")
    return values.astype(np.int64)


def split_id_kinds(column: pd.Series, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(is_string, integer_ids, string_ids)`` of a column of ids.

    ``integer_ids`` (int64) are the values where ``is_string`` is False, in order;
    ``string_ids`` (object array of str) those where it is True. Missing ids, booleans and
    other types raise with the column's name.
    """
    missing = int(column.isna().sum())  # before a categorical's cast, which a NaN would fail
    if missing:
        raise ValueError(f"{name} has {missing} missing (null/NaN) ids")
    if isinstance(column.dtype, pd.CategoricalDtype):
        column = column.astype(column.cat.categories.dtype)
    n = len(column)
    kind = column.dtype.kind
    if kind == "b":
        raise TypeError(f"{name} holds booleans; ids must be integers or strings")
    if kind == "u":
        values = column.to_numpy()
        # int(): NumPy < 2 compares a uint64 with a Python int in float64 (2**63 passed)
        if values.size and int(values.max()) > INT64_MAX:
            raise ValueError(f"{name} holds ids above the int64 range")
        return np.zeros(n, bool), values.astype(np.int64), np.empty(0, object)
    if kind == "i":
        return np.zeros(n, bool), column.to_numpy(np.int64), np.empty(0, object)
    if kind == "f":
        return np.zeros(n, bool), _integral_floats(column.to_numpy(np.float64), name), \
            np.empty(0, object)
    values = column.to_numpy(dtype=object)
    is_string = np.fromiter((isinstance(v, str) for v in values), bool, n)
    others = values[~is_string]
    if others.size:
        integer = np.fromiter(
            (isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
             for v in others), bool, others.size)
        if not integer.all():
            bad = others[~integer][0]
            raise TypeError(f"{name} holds an id of type {type(bad).__name__} ({bad!r}); "
                            "ids must be integers or strings")
        try:
            integers = others.astype(np.int64)
        except OverflowError as error:
            raise ValueError(f"{name} holds integer ids beyond the int64 range") from error
    else:
        integers = np.empty(0, np.int64)
    return is_string, integers, values[is_string]


class IdMap:
    """External ids <-> dense ints 0..n-1: integers ascending, then strings ascending.

    The distributed fits' id map, built from the columns of a distributed frame (per
    partition, then merged: ``from_column``, ``merge``). Not ``recfuse.IdMap``, the map of
    ``Interactions``, which has another interface (``to_internal``, ``to_external``,
    ``extend``).

    >>> m = IdMap.from_column(pd.Series([5, "b", 2, "a", 5], dtype=object), "user")
    >>> len(m), m.dense(pd.Series(["a", 2]), "user").tolist(), m.external([0, 3]).tolist()
    (4, [2, 0], [2, 'b'])
    """

    def __init__(self, integers: np.ndarray, strings: np.ndarray):
        self.integers = np.asarray(integers, dtype=np.int64)  # sorted, unique
        self.strings = np.asarray(strings, dtype=object)  # sorted, unique str
        self._indexes: tuple[pd.Index, pd.Index] | None = None

    @classmethod
    def from_column(cls, column: pd.Series, name: str) -> "IdMap":
        _, integers, strings = split_id_kinds(column, name)
        return cls(np.unique(integers), np.unique(strings) if strings.size else strings)

    def merge(self, other: "IdMap") -> "IdMap":
        strings = np.concatenate([self.strings, other.strings])
        return IdMap(np.union1d(self.integers, other.integers),
                     np.unique(strings) if strings.size else strings)

    def __len__(self) -> int:
        return int(self.integers.size + self.strings.size)

    @property
    def kinds(self) -> tuple[bool, bool]:
        """(has integer ids, has string ids)."""
        return bool(self.integers.size), bool(self.strings.size)

    def __getstate__(self):
        return {"integers": self.integers, "strings": self.strings}

    def __setstate__(self, state):
        self.__init__(state["integers"], state["strings"])

    def dense(self, column: pd.Series, name: str) -> np.ndarray:
        """The dense ids (int64) of a column of external ids; unknown ids raise."""
        is_string, integers, strings = split_id_kinds(column, name)
        if self._indexes is None:  # cached: a worker reuses one IdMap for many partitions
            self._indexes = (pd.Index(self.integers), pd.Index(self.strings, dtype=object))
        out = np.empty(is_string.size, dtype=np.int64)
        out[~is_string] = self._indexes[0].get_indexer(integers)
        found = self._indexes[1].get_indexer(strings)
        out[is_string] = np.where(found >= 0, found + self.integers.size, -1)
        if out.size and out.min() < 0:
            raise ValueError(f"{name} holds ids unknown to the model")
        return out

    def external(self, dense) -> np.ndarray:
        """External ids of dense ids (in [0, len(self))): int64 when every id is an integer,
        else objects."""
        dense = check.check_ids(dense, "dense", len(self))  # a negative one wrapped around
        has_int, has_str = self.kinds
        if not has_str:
            return self.integers[dense]
        if not has_int:
            return self.strings[dense]
        out = np.empty(dense.size, dtype=object)
        is_int = dense < self.integers.size
        out[is_int] = self.integers[dense[is_int]].astype(object)
        out[~is_int] = self.strings[dense[~is_int] - self.integers.size]
        return out


def partition_id_maps(frame: pd.DataFrame, user_col: str, item_col: str) -> tuple[IdMap, IdMap]:
    return IdMap.from_column(frame[user_col], user_col), IdMap.from_column(frame[item_col], item_col)


def merge_id_maps(*pairs: tuple[IdMap, IdMap]) -> tuple[IdMap, IdMap]:
    users, items = pairs[0]
    for other_users, other_items in pairs[1:]:
        users, items = users.merge(other_users), items.merge(other_items)
    return users, items


# ---------------------------------------------------------------------------- initial factors


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The first splitmix64 draw from each state of ``x``."""
    return splitmix64_draws(x, 1)


def initial_factors(ids, factors: int, seed: int, side: str, dtype=np.float32) -> np.ndarray:
    """Initial vectors of the dense ``ids`` of ``side`` ("users" or "items"): N(0, 0.01²).

    Each value is a hash of (seed, side, id, column), so a vector does not depend on the
    block layout, the worker count or the order of calls. A single-machine fit started from
    ``initial_factors(np.arange(n_users), ...)`` and the item equivalent follows the same
    path as the distributed one.

    >>> a = initial_factors([0, 1, 2], 4, seed=0, side="users")
    >>> bool(np.array_equal(a[1], initial_factors([1], 4, seed=0, side="users")[0]))
    True
    """
    from ..models.als import MAX_FACTORS

    ids = check.check_ids(ids, "ids", None)  # dense ids: integers >= 0, one dimension
    factors = check.check_int(factors, "factors", minimum=1, maximum=MAX_FACTORS)
    seed = check.check_int(seed, "seed", minimum=0, maximum=2**63 - 1)  # as random_state
    side = check.check_choice(side, "side", SIDES)
    dtype = check.check_float_dtype(dtype)
    ids = ids.astype(np.uint64).reshape(-1, 1)
    pairs = (factors + 1) // 2  # one 64-bit hash gives two uniforms, Box-Muller two normals
    column = np.arange(pairs, dtype=np.uint64).reshape(1, -1)
    with np.errstate(over="ignore"):
        key = _splitmix64(np.full(1, seed, dtype=np.uint64) * np.uint64(2)
                          + np.uint64(SIDES.index(side)))
        bits = _splitmix64(ids * np.uint64(pairs) + column + key)
    scale = 2.0**-32
    u1 = ((bits >> np.uint64(32)).astype(np.float64) + 1.0) * scale  # (0, 1]
    angle = (bits & np.uint64(0xFFFFFFFF)).astype(np.float64) * (2.0 * np.pi * scale)
    radius = np.sqrt(-2.0 * np.log(u1))
    normal = np.empty((ids.shape[0], 2 * pairs))
    normal[:, 0::2] = radius * np.cos(angle)
    normal[:, 1::2] = radius * np.sin(angle)
    normal = normal[:, :factors]
    return np.ascontiguousarray(normal * 0.01, dtype=dtype)


def block_size(n_total: int, n_blocks: int, block: int) -> int:
    """How many of the ids 0..n_total-1 fall in ``block`` (ids ``block, block + n_blocks, ...``)."""
    return max(0, (n_total - block + n_blocks - 1) // n_blocks)


def block_ids(n_total: int, n_blocks: int, block: int) -> np.ndarray:
    return np.arange(block, n_total, n_blocks, dtype=np.int64)


def initial_block(n_total: int, n_blocks: int, block: int, factors: int, seed: int, side: str,
                  dtype) -> np.ndarray:
    return initial_factors(block_ids(n_total, n_blocks, block), factors, seed, side, dtype)


# ---------------------------------------------------------------------------- ratings


def _weights(frame: pd.DataFrame, weight_col: str | None, dtype, nonnegative: bool) -> np.ndarray:
    if weight_col is None:
        return np.ones(len(frame), dtype=dtype)
    column = frame[weight_col]
    if column.dtype.kind not in "biuf":
        raise TypeError(f"weight_col {weight_col!r} must hold numbers, got dtype {column.dtype}")
    values = column.to_numpy(dtype=np.float64, na_value=np.nan)
    # finite in the model's dtype, as recfuse.ALS checks them: a float64 1e39 is inf in float32
    with np.errstate(over="ignore", invalid="ignore"):
        cast = values.astype(dtype)
    if not np.isfinite(cast).all():
        bad = int((~np.isfinite(cast)).sum())
        beyond = "" if not np.isfinite(values).all() else \
            f" (values beyond the range of {np.dtype(dtype).name}, {np.finfo(dtype).max:.3g})"
        raise ValueError(f"weight_col {weight_col!r} holds {bad} NaN/inf/missing weights"
                         + beyond)
    if nonnegative and values.size and values.min() < 0:
        raise ValueError(f"weight_col {weight_col!r} must be >= 0 with confidence='linear' "
                         f"(c = 1 + alpha * w), got min {values.min()}")
    return cast


def _split(keys: np.ndarray, n_blocks: int, *arrays: np.ndarray) -> list[tuple[np.ndarray, ...]]:
    block = keys % n_blocks
    order = np.argsort(block, kind="stable")
    bounds = np.searchsorted(block[order], np.arange(n_blocks + 1))
    sorted_arrays = [a[order] for a in arrays]
    return [tuple(a[bounds[b]:bounds[b + 1]] for a in sorted_arrays) for b in range(n_blocks)]


def encode_and_split(frame: pd.DataFrame, maps: tuple[IdMap, IdMap], user_col: str,
                     item_col: str, weight_col: str | None, user_blocks: int, item_blocks: int,
                     dtype, nonnegative: bool):
    """One partition as (dense user, dense item, weight) triples cut by user block and by
    item block: ``(by_user_block, by_item_block)``, two lists of triples."""
    users = maps[0].dense(frame[user_col], user_col)
    items = maps[1].dense(frame[item_col], item_col)
    weights = _weights(frame, weight_col, dtype, nonnegative)
    return (_split(users, user_blocks, users, items, weights),
            _split(items, item_blocks, users, items, weights))


def pick(pieces, side: int, block: int):
    return pieces[side][block]


@dataclass
class RatingBlock:
    """The ratings of one block of one side, ready for its half-sweeps.

    ``rows``: CSR (block rows x len(needed)), canonical; ``needed``: ascending global ids of
    the other side that the block references; ``sources[c]``: for each other-side block c
    with needed ids, ``(positions in needed, local rows in block c)``.
    """

    side: str
    block: int
    n_blocks: int
    rows: CsrArrays
    needed: np.ndarray
    sources: dict[int, tuple[np.ndarray, np.ndarray]]

    @property
    def nnz(self) -> int:
        return self.rows.nnz

    def stats(self) -> dict:
        return {"nnz": self.nnz, "rows": self.rows.shape[0], "weight_sum":
                float(self.rows.data.sum(dtype=np.float64)), "digest": self.digest(),
                "sources": {c: int(pos.size) for c, (pos, _) in self.sources.items()}}

    def digest(self) -> int:
        """A hash of the block's entries as (global row, global column, value) triples, summed
        modulo 2**64: the same for the same ratings whatever the block layout, so the digests
        of all blocks of a side add up to a fingerprint of the whole matrix (a checkpoint of
        other data with the same shape, count and sum of values must not pass for this one)."""
        R = self.rows
        # annotated: NumPy's stubs pick diff's datetime overload here (a timedelta64 result)
        counts: np.ndarray = np.diff(np.asarray(R.indptr, dtype=np.int64))
        rows = (np.repeat(np.arange(R.shape[0], dtype=np.uint64), counts)
                * np.uint64(self.n_blocks) + np.uint64(self.block))
        columns = self.needed[np.asarray(R.indices)].astype(np.uint64)
        values = np.asarray(R.data, dtype=np.float64).view(np.uint64)
        with np.errstate(over="ignore"):
            mixed = _splitmix64(_splitmix64(_splitmix64(rows) ^ columns) ^ values)
            return int(mixed.sum(dtype=np.uint64))

    def outlinks(self, source: int) -> np.ndarray:
        return self.sources[source][1]

    def seen(self, n_other: int) -> sp.csr_matrix:
        """The block's rows with global column ids (for filtering seen items)."""
        R = self.rows
        return sp.csr_matrix((R.data, self.needed[R.indices].astype(np.int32), R.indptr),
                             shape=(R.shape[0], n_other))


def build_block(side: str, block: int, n_total: int, n_blocks: int, n_other_blocks: int, dtype,
                *pieces, weight_col: str | None = None) -> RatingBlock:
    """Concatenate one block's triples from every partition into a ``RatingBlock``.

    Repeated (user, item) pairs add up, as in ``recfuse.ALS`` (a user spread over many
    partitions ends up in one block all the same), and their sums must be finite in
    ``dtype`` as each weight was (``weight_col`` names the column in the error).
    """
    own, other = (0, 1) if side == "users" else (1, 0)
    parts = [p for p in pieces if p[0].size]
    if parts:
        columns = [np.concatenate([p[i] for p in parts]) for i in range(3)]
    else:
        columns = [np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, dtype)]
    rows_global, cols_global, weights = columns[own], columns[other], columns[2].astype(dtype)
    needed = np.unique(cols_global)
    n_rows = block_size(n_total, n_blocks, block)
    matrix = sp.csr_matrix(
        (weights, (rows_global // n_blocks, np.searchsorted(needed, cols_global))),
        shape=(n_rows, needed.size), dtype=dtype)
    matrix.sum_duplicates()
    if matrix.data.size and not np.isfinite(matrix.data).all():
        bad = int((~np.isfinite(matrix.data)).sum())
        raise ValueError(f"weight_col {weight_col!r}: the weights of repeated (user, item) "
                         f"rows add up beyond the range of {np.dtype(dtype).name} "
                         f"({np.finfo(dtype).max:.3g}) for {bad} pairs")
    return RatingBlock(side, block, n_blocks, CsrArrays.from_scipy(matrix, dtype), needed,
                       _sources(needed, n_other_blocks))


def _sources(needed: np.ndarray, n_other_blocks: int) -> dict:
    source_of = needed % n_other_blocks
    sources = {}
    for c in np.unique(source_of):
        positions = np.flatnonzero(source_of == c)
        sources[int(c)] = (positions, needed[positions] // n_other_blocks)
    return sources


def block_to_bytes(block: RatingBlock, n_other_blocks: int) -> bytes:
    """A ``RatingBlock`` as .npz bytes (no pickle), for engines that move rows of bytes."""
    import io

    meta = json.dumps({"side": block.side, "block": block.block, "n_blocks": block.n_blocks,
                       "shape": list(block.rows.shape), "n_other_blocks": n_other_blocks})
    buffer = io.BytesIO()
    np.savez(buffer, indptr=block.rows.indptr, indices=block.rows.indices, data=block.rows.data,
             needed=block.needed, meta=np.frombuffer(meta.encode(), dtype=np.uint8))
    return buffer.getvalue()


def block_from_bytes(payload: bytes) -> RatingBlock:
    import io

    with np.load(io.BytesIO(payload), allow_pickle=False) as archive:
        meta = json.loads(archive["meta"].tobytes().decode())
        rows = CsrArrays(archive["indptr"], archive["indices"], archive["data"],
                         tuple(meta["shape"]))
        needed = archive["needed"]
    return RatingBlock(meta["side"], meta["block"], meta["n_blocks"], rows, needed,
                       _sources(needed, meta["n_other_blocks"]))


def array_to_bytes(values: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, values, allow_pickle=False)
    return buffer.getvalue()


def array_from_bytes(payload: bytes) -> np.ndarray:
    import io

    return np.load(io.BytesIO(payload), allow_pickle=False)


# ---------------------------------------------------------------------------- half-sweeps


def partial_gram(factors: np.ndarray) -> np.ndarray:
    """YᵀY of one block in float64 (the leaves of the tree reduction)."""
    f = factors.astype(np.float64, copy=False)
    return f.T @ f


def add(*arrays: np.ndarray) -> np.ndarray:
    total = arrays[0].copy()
    for a in arrays[1:]:
        total += a
    return total


def take_rows(factors: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The out-link piece: the rows of a source block that one destination block needs."""
    return factors[rows]


def assemble(n_total: int, *blocks: np.ndarray) -> np.ndarray:
    """All blocks of a side as one (n_total x k) array in dense-id order (the broadcast copy)."""
    n_blocks = len(blocks)
    out = np.empty((n_total, blocks[0].shape[1]), dtype=blocks[0].dtype)
    for b, values in enumerate(blocks):
        out[b::n_blocks] = values
    return out


def worker_threads(num_threads: int) -> int:
    """``num_threads``, or when 0 the thread count of the Dask worker running us (so that two
    workers on one machine do not both take every core), else 0 (all cores)."""
    if num_threads:
        return num_threads
    try:
        from distributed import get_worker

        return int(get_worker().state.nthreads)
    except Exception:  # noqa: BLE001 - not on a Dask worker
        pass
    value = os.environ.get("RECFUSE_WORKER_THREADS", "").strip() or "0"
    try:
        threads = int(value)
    except ValueError:
        threads = -1
    if not 0 <= threads <= check.MAX_THREADS:  # a worker's misconfiguration: said once it runs
        raise ValueError(f"RECFUSE_WORKER_THREADS must be an integer from 0 to "
                         f"{check.MAX_THREADS} (0: all cores), as num_threads, got {value!r}")
    return threads


def _fixed_rows(block: RatingBlock, factors: np.ndarray, full, pieces) -> np.ndarray:
    """The fixed side's vectors that ``block`` references, in the order of its columns."""
    fixed = np.empty((block.needed.size, factors.shape[1]), dtype=factors.dtype)
    if full is not None:
        fixed[:] = full[block.needed]
    else:
        for source, rows in pieces:
            fixed[block.sources[source][0]] = rows
    return fixed


def solve_block(block: RatingBlock, factors: np.ndarray, gram: np.ndarray, params: AlsParams,
                backend: str, full=None, pieces=None) -> tuple[np.ndarray, int]:
    """One block's half-sweep: (new vectors for the block's rows, a new array; how many of
    its row systems were not positive definite: those rows kept their vectors, and
    ``recfuse.ALS`` warns about them).

    The fixed side comes either as ``full`` (the broadcast array of every vector) or as
    ``pieces``, a list of ``(source block, rows)`` from the out-link exchange.
    """
    from threadpoolctl import threadpool_limits

    dtype, k = factors.dtype, factors.shape[1]
    from ..models.als import check_cg_confidences  # (models.als imports this module's kin)

    check_cg_confidences(block.rows.data[:block.rows.nnz], params, dtype, "weight_col's values")
    module = resolve_backend(backend)
    # the cpu backend's specialised widths: both tables and the Gram zero-padded, which
    # leaves the solution as it is (recfuse._als.cpu.training_width)
    width = module.training_width(k, params) if hasattr(module, "training_width") else k
    fixed = _fixed_rows(block, factors, full, pieces)
    gram = np.ascontiguousarray(gram, dtype=dtype)
    if width == k:
        out = np.array(factors, dtype=dtype, order="C", copy=True)
    else:
        fixed, out = resized_columns(fixed, width), resized_columns(factors, width)
        gram = np.pad(gram, ((0, width - k), (0, width - k)))
    threads = worker_threads(params.num_threads)
    with threadpool_limits(threads or None):
        failed = module.half_sweep(block.rows, fixed, out, replace(params, num_threads=threads),
                                   gram=gram)
    if width != k:
        out = np.ascontiguousarray(out[:, :k])
    return out, int(failed)


def block_loss(block: RatingBlock, factors: np.ndarray, gram: np.ndarray, params: AlsParams,
               backend: str, full=None, pieces=None) -> tuple[float, float, float]:
    """One user block's share of ``recfuse.reference.als_loss``: ``(data loss, Σ c over its
    stored entries, ‖X_block‖²)``, the fixed side passed as to ``solve_block``.

    The backend's data loss takes the Gram of the vectors it is given (the block's needed
    items only); the x_uᵀ(YᵀY)x_u term is corrected to the Gram of every item.
    """
    from threadpoolctl import threadpool_limits

    from ..reference import confidence_and_preference

    fixed = _fixed_rows(block, factors, full, pieces)
    threads = worker_threads(params.num_threads)
    with threadpool_limits(threads or None):
        loss = resolve_backend(backend).data_loss(block.rows, factors, fixed,
                                                  replace(params, num_threads=threads))
    X = factors.astype(np.float64)
    missing_gram = gram - partial_gram(fixed)
    loss += float(np.einsum("ij,jk,ik->", X, missing_gram, X))
    c, _ = confidence_and_preference(block.rows.data.astype(np.float64), params.alpha,
                                     params.confidence)
    return float(loss), float(c.sum()), float(np.square(X).sum())


def squared_norm(factors: np.ndarray) -> float:
    return float(np.square(factors, dtype=np.float64).sum())


def all_finite(factors: np.ndarray) -> bool:
    """Whether a factor block holds no NaN or inf (a fit that diverged)."""
    return bool(np.isfinite(factors).all())


def zero_rows_without_positive(factors: np.ndarray, block: RatingBlock) -> np.ndarray:
    """``factors`` of ``block``'s rows with the rows that store no value > 0 set to zero, as
    ``recfuse.ALS.fit`` sets them after its last iteration (their exact solution, which CG
    only approaches; the same array when there is no such row, else a new one)."""
    from ..models.als import rows_without_positive

    unrated = rows_without_positive(block.rows)
    if not unrated.any():
        return factors
    out = factors.copy()
    out[unrated] = 0
    return out


def check_converged(engine: str, finite) -> None:
    """ValueError, as recfuse.ALS raises, when a block's ``all_finite`` flag in ``finite``
    is false: the fit diverged (and the engine keeps its earlier model)."""
    if not all(finite):
        raise ValueError(f"{engine} diverged: the trained factors hold NaN or inf; lower "
                         "alpha or scale down the weights")


def combine_digests(digests) -> int:
    """The digests of a side's blocks (``RatingBlock.digest``) as one, modulo 2**64."""
    return int(sum(int(d) for d in digests) % 2**64)


# ---------------------------------------------------------------------------- files


def checkpoint_path(folder: str, side: str, block: int) -> str:
    """The .npy file of one factor block in a checkpoint folder."""
    return os.path.join(folder, f"{side}-{block:05d}.npy")


def load_checkpoint_block(folder: str, side: str, n_total: int, n_blocks: int, block: int,
                          saved_blocks: int) -> np.ndarray:
    """Block ``block`` of ``n_blocks`` of ``side`` from a checkpoint written with
    ``saved_blocks`` blocks per side: the file itself when the layouts agree, else its rows
    gathered from the saved blocks (a new driver may run with another block count, e.g. one
    per worker on a cluster that lost or gained workers; the vectors do not depend on it)."""
    if saved_blocks == n_blocks:
        return load_array(checkpoint_path(folder, side, block))
    ids = block_ids(n_total, n_blocks, block)
    out = None
    for source in range(saved_blocks):
        mask = ids % saved_blocks == source
        if not mask.any():
            continue
        values = load_array(checkpoint_path(folder, side, source))
        if out is None:
            out = np.empty((ids.size, values.shape[1]), dtype=values.dtype)
        out[mask] = values[ids[mask] // saved_blocks]
    assert out is not None  # ids is not empty: a side has no more blocks than rows
    return out


def _atomic_write(path: str, write) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, write)


def save_array(values: np.ndarray, path: str) -> str:
    """Write a .npy file atomically (no pickle); returns the path."""
    def write(temporary):
        with open(temporary, "wb") as handle:
            np.save(handle, values, allow_pickle=False)
    _atomic_write(path, write)
    return path


def load_array(path: str) -> np.ndarray:
    return np.load(path, allow_pickle=False)


def save_json(document: dict, path: str) -> None:
    def write(temporary):
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=1, sort_keys=True)
    _atomic_write(path, write)


def id_columns(name: str, ids: np.ndarray, kinds: tuple[bool, bool]) -> dict:
    """Arrow columns for external ids: ``name`` (int64 or string) when every id of the model
    is of one kind, else ``name_int`` and ``name_str``, each null where the other holds."""
    import pyarrow as pa

    has_int, has_str = kinds
    if not has_str:
        return {name: pa.array(np.asarray(ids, dtype=np.int64), pa.int64())}
    if not has_int:
        return {name: pa.array(ids, pa.string())}
    is_string = np.fromiter((isinstance(v, str) for v in ids), bool, len(ids))
    return {
        f"{name}_int": pa.array([None if s else int(v) for v, s in zip(ids, is_string)],
                                pa.int64()),
        f"{name}_str": pa.array([v if s else None for v, s in zip(ids, is_string)], pa.string()),
    }


def factor_table(factors: np.ndarray, n_total: int, n_blocks: int, block: int, id_map: IdMap):
    """One block of factors as an Arrow table: the id column(s) and ``factors``, a
    fixed-size list of floats."""
    import pyarrow as pa

    ids = id_map.external(block_ids(n_total, n_blocks, block))
    flat = pa.array(np.ascontiguousarray(factors).reshape(-1))
    columns = id_columns("id", ids, id_map.kinds)
    columns["factors"] = pa.FixedSizeListArray.from_arrays(flat, factors.shape[1])
    return pa.table(columns)


def write_factor_part(factors: np.ndarray, n_total: int, n_blocks: int, block: int,
                      id_map: IdMap, path: str) -> int:
    """``factor_table`` written to one Parquet file, atomically; returns the rows written."""
    import pyarrow.parquet as pq

    table = factor_table(factors, n_total, n_blocks, block, id_map)
    _atomic_write(path, lambda temporary: pq.write_table(table, temporary))
    return table.num_rows


def recommend_block(block: RatingBlock, factors: np.ndarray, items: np.ndarray, k: int,
                    filter_seen: bool, maps: tuple[IdMap, IdMap] | None, path: str,
                    backend: str, num_threads: int) -> int:
    """``recommend_table`` written to one Parquet file, atomically (an empty table too: a
    catalogue every user has seen gives files that read as no rows, as recfuse.ALS's
    recommend_all writes, not a folder without any); returns the rows written."""
    import pyarrow.parquet as pq

    table = recommend_table(block, factors, items, k, filter_seen, maps, backend, num_threads)
    _atomic_write(path, lambda temporary: pq.write_table(table, temporary))
    return table.num_rows


def recommend_table(block: RatingBlock, factors: np.ndarray, items: np.ndarray, k: int,
                    filter_seen: bool, maps: tuple[IdMap, IdMap] | None, backend: str,
                    num_threads: int, batch_size: int = 4096):
    """Top k of one user block against every item as an Arrow table (columns user, rank,
    item, score; padding dropped); external ids when ``maps`` is given, else dense ids."""
    import pyarrow as pa

    from ..retrieval import ItemIndex

    index = ItemIndex(items, backend=backend)
    seen = block.seen(items.shape[0]) if filter_seen else None
    users = np.arange(block.rows.shape[0], dtype=np.int64) * block.n_blocks + block.block
    threads = worker_threads(num_threads)
    tables = []
    for begin in range(0, users.size, batch_size):
        end = min(users.size, begin + batch_size)
        ids, scores = index.search(factors[begin:end], k,
                                   exclude=None if seen is None else seen[begin:end],
                                   num_threads=threads)
        keep = (ids >= 0).ravel()
        user = np.repeat(users[begin:end], k)[keep]
        item = ids.ravel()[keep]
        if maps is None:
            columns = {"user": pa.array(user), "rank": None, "item": pa.array(item)}
        else:
            columns = {**id_columns("user", maps[0].external(user), maps[0].kinds),
                       "rank": None, **id_columns("item", maps[1].external(item), maps[1].kinds)}
        columns["rank"] = pa.array(np.tile(np.arange(k, dtype=np.int32), end - begin)[keep])
        columns["score"] = pa.array(scores.ravel()[keep])
        tables.append(pa.table(columns))
    if not tables:
        return pa.table({"user": pa.array([], pa.int64()), "rank": pa.array([], pa.int32()),
                         "item": pa.array([], pa.int64()),
                         "score": pa.array([], pa.from_numpy_dtype(factors.dtype))})
    return pa.concat_tables(tables)

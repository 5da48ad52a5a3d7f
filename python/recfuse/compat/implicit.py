"""``implicit.als.AlternatingLeastSquares`` (implicit 0.7) computed by recfuse.

Switching is one import; the rest of the code stays as it is::

    # from implicit.als import AlternatingLeastSquares
    from recfuse.compat.implicit import AlternatingLeastSquares

    model = AlternatingLeastSquares(factors=64, regularization=0.05, alpha=2.0)
    model.fit(user_items)
    ids, scores = model.recommend(userid, user_items[userid])

What is kept from implicit 0.7.3 (and checked against it in tests/test_compat_implicit.py):

* ``fit`` multiplies the matrix by ``alpha``; a stored value is then the confidence itself,
  ``c = |alpha r|`` with preference ``p = [r > 0]``, so negative values mean "disliked"
  (recfuse's ``confidence="raw"``). Missing factors start as
  ``random_state.random((n, factors), dtype) * 0.01``, users drawn before items; factors
  that are already set are kept as the starting point. A user or item without any stored
  entry ends the fit with zero factors, as implicit's solvers set them (it scores 0 and is
  similar to nothing); with ``iterations=0`` the starting factors are kept, as there.
* ``recalculate_user``/``recalculate_item`` (and so ``partial_fit_*`` and ``recommend(...,
  recalculate_user=True)``) solve each row exactly (Cholesky) from zero, whatever ``use_cg``;
  a row system that is not positive definite raises ValueError there and in a Cholesky
  ``fit``, as implicit's ``posv`` does; so does a row whose CG steps overflow in a cg
  ``fit``, where implicit's CG would leave inf or NaN factors (``recfuse.ALS`` warns
  instead).
* ``user_items`` may be narrower than the model (ids added since) or wider (a catalogue
  grown since the fit) as long as it stores only the model's items; a stored item past them
  is the IndexError below.
* ``recommend``/``similar_items``/``similar_users`` return exactly ``N`` results per query
  (``min(N, len(items))`` for ``recommend(items=...)``), ids ``int32`` (with ``items=``/
  ``users=``, the dtype of ``numpy.array(items)``), scores in the factors' dtype. Excluded items
  stay in the results with the score ``-numpy.finfo(dtype).max`` (implicit does not drop
  them); when ``N`` exceeds the number of candidates the rest is id 0 with score 0. Equal
  scores come out in the order of implicit's heap selection (``implicit/cpu/select.h``).
* ``explain(userid, user_items, itemid)`` reads row ``userid`` of the whole users x items
  matrix (not ``user_items[userid]`` as ``recommend`` does) and returns implicit's
  ``(total_score, top_contributions, user_weights)``: ``user_weights`` is
  ``scipy.linalg.cho_factor``'s ``(factor, lower)`` of the user's system, interchangeable
  with implicit's; disliked items shape that system but contribute nothing.
* ``rank_items`` and ``recommend_all``, deprecated in implicit 0.7, warn as there
  (DeprecationWarning, the same message) and answer as there: ``rank_items`` returns at most
  10 of ``selected_items`` (implicit forwards to ``recommend`` with its default ``N``), and
  ``recommend_all(..., users_items_offset > 0)`` raises ValueError unless both
  ``filter_already_liked_items`` and ``recalculate_user`` are False (implicit pads
  ``user_items`` with that many empty rows, which its ``recommend`` then refuses).

Where this differs from implicit 0.7.3:

* ``random_state`` as a ``numpy.random.RandomState``: implicit calls
  ``random_state.rand_int(2**31)``, which does not exist, and fails with AttributeError; here
  the evident intent runs: ``numpy.random.default_rng(random_state.randint(2**31))``.
* Matrices are made canonical first, as everywhere in recfuse: a (row, column) stored twice
  counts once with the summed value; implicit's solvers take each copy as its own entry.
* ``use_gpu`` selects recfuse's cuda backend. Factors stay NumPy arrays (implicit's GPU model
  keeps ``implicit.gpu.Matrix``), the initialisation rule above applies, and ``use_cg`` is
  honoured (implicit's GPU model always uses CG).
* A wrong argument raises TypeError or ValueError naming it. Where implicit raised
  ValueError for the wrong kind of object, or IndexError for an id outside the model, the
  error's class derives from both, so existing ``except`` clauses still catch it. Negative
  ids are refused with that same error (implicit raises IndexError for negative ``items``;
  elsewhere its NumPy indexing would count them from the end), and so is
  ``explain(..., N < 0)`` (implicit returns no contributions).
* Items without any stored entry, with ``use_cg``: implicit sets their factors to zero in
  each sweep; here CG moves them towards zero during the fit and they are set to zero at its
  end, so the users' systems see what remains of them in YᵀY in between. On data with such
  items the CG factors differ from implicit's by ~2e-6 (float64, implicit's own start) up
  to ~4e-4 (from well-scaled set factors) instead of ~1e-8. Cholesky solves those rows to
  exactly zero in each sweep (``regularization > 0``) and users without entries start at
  zero, so neither is affected.
* ``save`` writes recfuse's versioned ``.npz`` (no pickle), which ``recfuse.load`` also
  reads as a ``recfuse.ALS``; ``load`` reads those files and files written by implicit's
  ``save``. A ``random_state`` that is not an integer is not saved. implicit's own ``load``
  reads the file too, with the model's settings (``factors``, ``regularization``,
  ``alpha``...; ``use_native``/``use_cg``/``calculate_training_loss`` as 0/1), but not its
  ``dtype`` (recfuse files hold numbers only): a float64 model loaded by implicit needs
  ``model.dtype = numpy.dtype("float64")`` before ``recalculate_user``/``partial_fit_*``.
* ``fit(show_progress=True)`` shows recfuse's progress bar, without implicit's ``loss=``
  postfix under ``calculate_training_loss`` (the loss reaches the callback and the log as
  there). Calls before ``fit`` raise RuntimeError "not fitted" (implicit fails on ``None``).
* Only ``AlternatingLeastSquares`` is offered, and on it not implicit's ``solver`` property
  (the solver function; ``use_cg``/``use_native`` choose here). implicit's other models
  (``bpr.BayesianPersonalizedRanking``, ``lmf.LogisticMatrixFactorization``,
  ``nearest_neighbours.*Recommender``, ``approximate_als.*``) have no adapter: ``recfuse.BPR``
  is recfuse's BPR (its own API). implicit's functions that take a model
  (``implicit.evaluation.precision_at_k``, ``ranking_metrics_at_k``...) work with this one,
  and its matrix helpers (``evaluation.train_test_split``, ``nearest_neighbours.bm25_weight``)
  with the matrices it fits on. ``to_cpu`` (only on implicit's GPU model) returns a copy.
"""

from __future__ import annotations

import json
import logging
import numbers
import os
import shutil
import tempfile
import time
import warnings
import zipfile
from typing import Any, Callable, TypeAlias, Union

import numpy as np
import scipy.linalg
import scipy.sparse as sp
from numpy.typing import ArrayLike, DTypeLike

from .. import _validation as check
from .. import persistence, reference
from .._als.common import AlsParams, CsrArrays
from .._backend import resolve_backend
from .._topk.numpy_backend import SCORE_BLOCK_BYTES
from ..models._common import dtype_text
from ..models.als import ALS, item_gram
from .._typing import Integer, SparseMatrix

# implicit's random_state: None, a seed, a RandomState or a Generator.
ImplicitRandomState: TypeAlias = Union[int, np.integer[Any], np.random.RandomState,
                                       np.random.Generator, None]
# what implicit's queries take as user_items: CSR only (it refuses other formats)
CsrMatrix: TypeAlias = Union[sp.csr_matrix, sp.csr_array]

__all__ = [
    "AlternatingLeastSquares",
    "HAS_CUDA",
    "ModelFitError",
    "ParameterWarning",
    "check_random_state",
]

log = logging.getLogger(__name__)

IMPLICIT_VERSION = "0.7.3"  # the implicit release whose behaviour this module reproduces
COMPAT_KEY = "implicit_compat"  # the archive member with the adapter's own settings
COMPAT_VERSION = 1


def _unavailable(name: str) -> str:
    """Why the backend ``name`` cannot run here ("" when it can). Probes only that one."""
    try:
        resolve_backend(name)
    except RuntimeError as error:
        return str(error)
    return ""


# implicit's factory defaults use_gpu to implicit.gpu.HAS_CUDA; here: recfuse's cuda backend.
HAS_CUDA = not _unavailable("cuda")


class ModelFitError(Exception):
    """The factors hold NaN after ``fit`` (``implicit.recommender_base.ModelFitError``)."""


class ParameterWarning(Warning):
    """A sparse matrix was converted to CSR (``implicit.utils.ParameterWarning``)."""


class CompatTypeError(TypeError, ValueError):
    """The wrong kind of argument where implicit raised ValueError: catchable as either."""


class CompatIndexError(ValueError, IndexError):
    """An id outside the model where implicit raised IndexError: catchable as either."""


_SEED_TYPES = (
    np.random.RandomState,
    np.random.Generator,
    np.random.SeedSequence,
    np.random.BitGenerator,
)


def check_random_state(random_state) -> np.random.Generator:
    """``implicit.utils.check_random_state``: None, an int, a RandomState or a Generator.

    None and ints seed a new ``numpy.random.Generator``; a Generator is used as it is (its
    state advances with every draw). For a RandomState implicit 0.7.3 calls the missing
    method ``rand_int`` and raises AttributeError; this draws the seed it meant to draw.
    """
    _check_seed(random_state)
    if isinstance(random_state, np.random.RandomState):
        return np.random.default_rng(random_state.randint(2**31))
    return np.random.default_rng(random_state)


def _check_seed(random_state) -> None:
    if random_state is None or isinstance(random_state, _SEED_TYPES):
        return
    if isinstance(random_state, (bool, np.bool_)) or not isinstance(random_state, numbers.Integral):
        raise TypeError(
            "random_state must be None, an integer, a numpy.random.RandomState or a "
            f"numpy.random.Generator, got {type(random_state).__name__} {random_state!r}"
        )
    if random_state < 0:
        raise ValueError(f"random_state must be >= 0, got {random_state}")


def _as_csr(matrix, name: str):
    """``implicit.utils.check_csr``: other sparse formats are converted, with a warning."""
    if not sp.issparse(matrix):
        raise TypeError(
            f"{name} must be a scipy.sparse CSR matrix, got "
            f"{type(matrix).__module__}.{type(matrix).__name__}"
        )
    if matrix.format != "csr":
        start = time.perf_counter()
        converted = check.to_csr(matrix, name)
        warnings.warn(
            f"{name}: expected a CSR matrix, got {matrix.format.upper()}; converting it to CSR "
            f"took {time.perf_counter() - start:.3f} seconds",
            ParameterWarning,
            stacklevel=check.caller_stacklevel(),
        )
        matrix = converted
    return matrix


def _ids(value, name: str, upper: int | None) -> np.ndarray:
    """Ids as a 1-d int64 array; an id < 0 or >= upper raises an error that is also an
    IndexError (implicit raises IndexError for ``items`` outside the model, negative ones too)."""
    array = check.int64_array(value, name)
    if array.ndim <= 1 and array.size and array.min() < 0:
        raise CompatIndexError(f"{name} must be >= 0, got {array.min()}")
    array = check.check_ids(array, name, None, allow_new=True)
    if upper is not None and array.size and array.max() >= upper:
        raise CompatIndexError(f"{name} must be < {upper} (the ids in the model), got {array.max()}")
    return array


def _id_list(value, name: str, upper: int) -> np.ndarray:
    """An ``items``/``users`` argument: ``np.array(value)`` as implicit makes it, checked."""
    array = np.array(value)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-d array of ids, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} must not be empty")
    _ids(array, name, upper)
    return array


def _one_id(value, name: str, upper: int | None) -> int:
    """A single id, for ``explain``: implicit indexes with it directly and fails on arrays
    (TypeError for userid, ValueError for itemid), so a non-scalar is an error of both kinds."""
    if np.ndim(value) != 0:
        raise CompatTypeError(f"{name} must be a single id, got shape {np.shape(value)}")
    return int(_ids(value, name, upper)[0])


def _csr_row(matrix: sp.csr_matrix, row: int, name: str) -> sp.csr_matrix:
    """Row ``row`` of a CSR matrix as a 1 x columns CSR matrix, checking only what reading it
    needs (the row's entries are checked by whoever uses them)."""
    rows, cols = matrix.shape
    check.check_csr_arrays(matrix.indptr, matrix.indices, rows, None, name,
                           data_size=np.asarray(matrix.data).size)
    start, end = int(matrix.indptr[row]), int(matrix.indptr[row + 1])
    return sp.csr_matrix((matrix.data[start:end], matrix.indices[start:end], [0, end - start]),
                         shape=(1, cols))


def _cholesky_pair(value, n_factors: int):
    """``user_weights`` for ``explain``: the ``(factor, lower)`` pair of ``cho_factor``."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        # implicit's cho_solve fails to unpack anything else, with a ValueError
        raise CompatTypeError(
            "user_weights must be the (factor, lower) pair that explain returns "
            f"(scipy.linalg.cho_factor's result), got {type(value).__name__}"
        )
    lower = value[1]
    if isinstance(lower, np.ndarray) and lower.shape == () and lower.dtype == np.bool_:
        lower = lower[()]  # SciPy >= 1.18's cho_factor gives lower as a 0-d bool array
    factor, lower = np.asarray(value[0]), check.check_flag(lower, "user_weights[1] (lower)")
    if factor.dtype.kind not in "fiu":
        raise TypeError(f"user_weights[0] must hold real numbers, got dtype {factor.dtype}")
    if factor.shape != (n_factors, n_factors):
        raise ValueError(f"user_weights[0] must have shape ({n_factors}, {n_factors}) (factors "
                         f"x factors), got {factor.shape}")
    return factor, lower


def _nonempty(value) -> bool:
    return value is not None and np.size(value) > 0


# ---------------------------------------------------------------------------- top-k
def _heap_select(scores: np.ndarray, k: int):
    """The k best entries of each row, exactly as ``implicit/cpu/select.h`` picks them.

    select.h streams the columns through a min-heap of (score, column) pairs, admitting a
    column while the heap has room or when its score beats the heap's smallest score, and
    evicting the smallest pair; it returns the heap sorted by (score, column) descending.
    So every score above the k-th best is kept, and of the columns tied at the k-th best
    score those admitted (fewer than k columns at or above that score before them) are
    evicted oldest first: the last ``k - above`` admitted ones remain. Equal scores are
    listed larger column first. Rows shorter than k leave zeros (id 0, score 0) at the end,
    as implicit's preallocated output does. NaN scores rank below all others.
    """
    rows, cols = scores.shape
    ids = np.zeros((rows, k), dtype=np.int32)
    best = np.zeros((rows, k), dtype=scores.dtype)
    # NaN (a NaN factor, or cosine of overflowing factors) ranks below every number: as a
    # partition key it would take the k-th place and leave the rows' results as padding
    nan = np.isnan(scores)
    keys = np.where(nan, -np.inf, scores) if nan.any() else scores
    for row in range(rows):
        s = keys[row]
        if cols <= k:
            chosen = np.arange(cols)
        else:
            kth = np.partition(s, cols - k)[cols - k]
            above = s > kth
            tied = s == kth
            at_least = above | tied
            before = np.cumsum(at_least) - at_least  # columns at or above kth before this one
            admitted = np.flatnonzero(tied & (before < k))
            need = k - int(above.sum())
            chosen = np.concatenate([np.flatnonzero(above), admitted[max(0, admitted.size - need):]])
        order = np.lexsort((chosen, s[chosen]))[::-1]
        chosen = chosen[order]
        ids[row, : chosen.size] = chosen
        best[row, : chosen.size] = scores[row, chosen]
    return ids, best


def _topk(items: np.ndarray, query: np.ndarray, k: int, *, item_norms=None, filter_rows=None,
          filter_items=None):
    """``implicit.cpu.topk.topk``: scores query·itemsᵀ (divided by item_norms when given),
    excluded entries set to ``-finfo(dtype).max``, then the heap selection.

    ``filter_rows`` is a CSR matrix whose row i lists the columns excluded for query row i.
    """
    if query.ndim == 1:
        query = query.reshape((1, query.shape[0]))
    rows = query.shape[0]
    ids = np.zeros((rows, k), dtype=np.int32)
    best = np.zeros((rows, k), dtype=query.dtype)
    block = max(1, SCORE_BLOCK_BYTES // max(1, items.shape[0] * query.dtype.itemsize))
    for begin in range(0, rows, block):
        end = min(rows, begin + block)
        scores = query[begin:end].dot(items.T)
        if item_norms is not None:
            with np.errstate(over="ignore"):  # implicit lets a zero vector's 1e-10 norm overflow
                scores = scores / item_norms
        lowest = -np.finfo(scores.dtype).max
        if filter_rows is not None:
            for row in range(begin, end):
                start, stop = filter_rows.indptr[row], filter_rows.indptr[row + 1]
                scores[row - begin, filter_rows.indices[start:stop]] = lowest
        if filter_items is not None:
            scores[:, filter_items] = lowest
        ids[begin:end], best[begin:end] = _heap_select(scores, k)
    return ids, best


def _remap_filter(items: np.ndarray, liked: sp.csr_matrix) -> sp.csr_matrix:
    """implicit's ``_filter_items_from_sparse_matrix``: liked columns as positions in the
    sorted ``items``. As in implicit, entries stored with the value 0 are dropped here (so
    they are not filtered when ``items`` is given, though they are without it)."""
    coo = liked.tocoo()
    positions = np.clip(np.searchsorted(items, coo.col), 0, len(items) - 1)
    data = coo.data.copy()
    data[items[positions] != coo.col] = 0
    remapped = sp.coo_matrix((data, (coo.row, positions)), shape=(liked.shape[0], len(items)))
    remapped.eliminate_zeros()
    return remapped.tocsr()


# ---------------------------------------------------------------------------- the model
def _refuse_failed_systems(failed: int) -> None:
    """implicit's answer to row systems that are not positive definite (Cholesky with
    regularization 0 and rank-deficient factors): ValueError, where recfuse warns. Rows
    whose CG steps overflowed are refused the same way."""
    if failed:
        raise ValueError(f"{failed} row systems were not positive definite or their CG steps "
                         f"overflowed (implicit: posv failed, or CG left inf or NaN). Try "
                         f"increasing the regularization parameter, or lower alpha.")


class _FitEngine(ALS):
    """recfuse.ALS as this adapter fits with it: failed row systems raise
    (``_refuse_failed_systems``), and the model keeps its factors."""

    # the cg bound's refusal in this adapter's terms: alpha scales the matrix before the fit
    _cg_refusal = ("user_items' values times alpha", "lower alpha, or use use_cg=False")

    def _report_failed_systems(self, failed: int) -> None:
        _refuse_failed_systems(failed)


class AlternatingLeastSquares:
    """Alternating least squares for implicit feedback with implicit 0.7's API.

    Parameters (as ``implicit.als.AlternatingLeastSquares``)
    ----------
    factors: number of latent factors.
    regularization: added to the diagonal of every row's system.
    alpha: the matrix is multiplied by alpha before fitting (confidence c = alpha * |r|).
    dtype: float32 or float64 factors.
    use_native: False computes with recfuse's NumPy reference backend instead of native code.
    use_cg: conjugate gradient (``cg_steps`` = 3 steps per row and sweep) instead of an exact
        Cholesky solve.
    use_gpu: fit with recfuse's cuda backend (default: whether it is available).
    iterations: ALS sweeps done by ``fit``.
    calculate_training_loss: compute the training loss after each iteration (logged, and
        passed to the fit callback).
    num_threads: threads for fitting; 0 uses all cores.
    random_state: None, an int, a ``numpy.random.RandomState`` or ``Generator`` for the
        initial factors.

    Attributes
    ----------
    user_factors, item_factors: NumPy arrays (None before fit); may be set before fit to give
        the starting point.
    cg_steps: CG steps per row (3).
    fit_callback: used by ``fit`` when no callback is passed (implicit's older API).
    """

    def __init__(
        self,
        factors: Integer = 100,
        regularization: float = 0.01,
        alpha: float = 1.0,
        dtype: DTypeLike = np.float32,
        use_native: bool = True,
        use_cg: bool = True,
        use_gpu: bool = HAS_CUDA,
        iterations: Integer = 15,
        calculate_training_loss: bool = False,
        num_threads: Integer = 0,
        random_state: ImplicitRandomState = None,
    ) -> None:
        self.factors = factors
        self.regularization = regularization
        self.alpha = alpha
        self.dtype = check.check_float_dtype(dtype)
        self.use_native = check.check_flag(use_native, "use_native")
        self.use_cg = check.check_flag(use_cg, "use_cg")
        self.use_gpu = check.check_flag(use_gpu, "use_gpu")
        self.iterations = iterations
        self.calculate_training_loss = check.check_flag(calculate_training_loss,
                                                   "calculate_training_loss")
        self.num_threads = num_threads
        _check_seed(random_state)
        self.random_state = random_state
        self.cg_steps = 3
        self.fit_callback = None
        self.user_factors: np.ndarray | None = None
        self.item_factors: np.ndarray | None = None
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if self.use_gpu and not HAS_CUDA:
            # implicit's factory raises ValueError too when it cannot train on the GPU
            raise ValueError(f"use_gpu=True needs recfuse's cuda backend: {_unavailable('cuda')}")
        self._engine()  # checks factors, regularization, alpha, iterations, num_threads

    # ------------------------------------------------------------------ configuration
    def _backend_name(self) -> str:
        if self.use_gpu:
            return "cuda"
        if not self.use_native:
            return "numpy"
        return next(name for name in ("cpu", "numba", "numpy") if not _unavailable(name))

    def _engine(self, cls: type[ALS] = ALS) -> ALS:
        """The recfuse model that does the fitting (a ``cls``), with this model's current
        settings."""
        dtype = check.check_float_dtype(self.dtype)
        return cls(
            factors=self.factors,
            regularization=self.regularization,
            alpha=self.alpha,  # recfuse ignores alpha with confidence="raw"; fit scales instead
            iterations=self.iterations,
            solver="cg" if self.use_cg else "cholesky",
            cg_steps=self.cg_steps,
            dtype=dtype,
            backend=self._backend_name(),
            num_threads=self.num_threads,
            confidence="raw",
        )

    def to_recfuse(self) -> ALS:
        """This model as a ``recfuse.ALS`` (confidence="raw"; the same factor arrays, shared
        rather than copied). It keeps no training matrix: pass ``user_items=`` to its
        ``recommend``. Its ``fit`` takes the matrix already multiplied by alpha.
        """
        engine = self._engine()
        if self.user_factors is not None and self.item_factors is not None:
            engine.user_factors = self._table("user_factors")
            engine.item_factors = self._table("item_factors")
        return engine

    # ------------------------------------------------------------------ training
    def fit(self, user_items: SparseMatrix, show_progress: bool = True,
            callback: Callable[[int, float, float | None], None] | None = None) -> None:
        """Factorise the users x items CSR matrix of confidences (see the module docstring).

        ``callback(iteration, elapsed_seconds, loss)`` runs after each iteration; ``loss`` is
        None unless ``calculate_training_loss``. On bad input the model does not change.
        """
        # A refused fit leaves the caller's random state where it was: a Generator's draws
        # come before some checks (the item table's shape, the backend, the engine's own),
        # and a RandomState gives up a seed before any check.
        caller = self.random_state
        saved: Any
        restore: Callable[[Any], Any] | None
        if isinstance(caller, np.random.RandomState):
            saved, restore = caller.get_state(), caller.set_state
        elif isinstance(caller, np.random.Generator):
            saved = caller.bit_generator.state
            restore = lambda state: setattr(caller.bit_generator, "state", state)  # noqa: E731
        else:
            saved = restore = None
        try:
            random_state = check_random_state(caller)
            matrix = check.check_csr(_as_csr(user_items, "user_items"), "user_items",
                                     dtype=np.float32)
            # as implicit: cast to float32 first, then scale (the same float32 products)
            if self.alpha != 1.0:
                matrix = self.alpha * matrix
            if callback is None:
                callback = self.fit_callback
            if callback is not None and not callable(callback):
                raise TypeError(f"callback must be callable, got {type(callback).__name__}")
            self._fit(self._engine(_FitEngine), matrix, random_state, show_progress, callback)
        except BaseException:
            if restore is not None:
                restore(saved)
            raise
        assert self.user_factors is not None and self.item_factors is not None  # fit returned
        if np.isnan(self.user_factors).any() or np.isnan(self.item_factors).any():
            raise ModelFitError("NaN encountered in factors")  # as implicit: after the fit

    def _fit(self, engine: ALS, matrix: sp.csr_matrix, random_state: np.random.Generator,
             show_progress: bool, callback) -> None:
        n_users, n_items = matrix.shape
        X = self._starting_factors("user_factors", n_users, random_state)
        Y = self._starting_factors("item_factors", n_items, random_state)
        # implicit's solvers set the factors of a user or item without any stored entry to
        # zero in every sweep. Users are swept first: theirs start at zero, where recfuse's
        # solvers keep them. Items' are zeroed at the end of the fit, by recfuse.ALS.fit as
        # for any row without entries (see the module docstring).
        swept = self.iterations > 0  # with no iterations implicit keeps the starting factors
        empty_users = swept & (np.diff(matrix.indptr) == 0)
        if empty_users.any():
            X = X.copy()  # set factors stay as they are until the fit has succeeded
            X[empty_users] = 0

        relay, progress = None, {"loss": None}
        if callback is not None or self.calculate_training_loss:
            relay = self._loss_relay(matrix, callback, show_progress, progress)
        engine.fit(matrix, show_progress=show_progress, callback=relay, initial_factors=(X, Y),
                   compute_loss=self.calculate_training_loss)
        if self.calculate_training_loss and progress["loss"] is not None:
            log.info("Final training loss %.4f", progress["loss"])
        self.user_factors, self.item_factors = engine.user_factors, engine.item_factors
        self._cache.clear()

    def _starting_factors(self, name: str, rows: int, random_state: np.random.Generator):
        current = getattr(self, name)
        if current is None:
            # implicit: random_state.random((rows, factors), dtype=dtype) * 0.01
            return random_state.random((rows, self.factors), dtype=self.dtype) * 0.01
        array = check.check_factors(current, name, dtype=self.dtype, n_cols=self.factors)
        if array.shape[0] != rows:
            raise ValueError(
                f"{name} was set with {array.shape[0]} rows but user_items has {rows} "
                f"{'users' if name == 'user_factors' else 'items'}"
            )
        return array

    def _loss_relay(self, matrix: sp.csr_matrix, callback, show_progress: bool, progress: dict):
        """recfuse's ``callback(iteration, loss)`` turned into implicit's
        ``callback(iteration, elapsed_seconds, loss)``.

        recfuse's loss is Σ c (p − d)² + λ(‖X‖² + ‖Y‖²) over Σ c. implicit 0.7.3's
        calculate_loss adds c for every stored entry where the exact sum has c·p², so it also
        counts |r| for the disliked (negative) entries; that sum is added here to match.
        """
        data = matrix.data.astype(np.float64)
        total = matrix.shape[0] * matrix.shape[1] + float((np.abs(data) - 1).sum())
        disliked = float(-data[data < 0].sum())
        extra = disliked / total if total else 0.0
        clock = {"start": time.perf_counter()}

        def relay(iteration: int, loss: float) -> None:
            elapsed = time.perf_counter() - clock["start"]
            reported = None
            if self.calculate_training_loss:
                reported = float(loss) + extra
                progress["loss"] = reported
                if not show_progress:
                    log.info("loss %.4f", reported)
            if callback is not None:
                callback(iteration, elapsed, reported)
            clock["start"] = time.perf_counter()  # implicit times each iteration, not the callback

        return relay

    def recalculate_user(self, userid: ArrayLike, user_items: SparseMatrix) -> np.ndarray:
        """Factors for ``userid`` (an id or ids) from their rows of ``user_items``, not stored.

        Solved exactly from zero against the item factors, as implicit does; the ids
        themselves are not looked up (new users are fine).
        """
        return self._recalculate(userid, "userid", user_items, "user_items", "item_factors")

    def recalculate_item(self, itemid: ArrayLike, item_users: SparseMatrix) -> np.ndarray:
        """Factors for ``itemid`` from their rows of ``item_users`` (items x users), not stored."""
        return self._recalculate(itemid, "itemid", item_users, "item_users", "user_factors")

    def _recalculate(self, ids, ids_name, matrix, matrix_name, fixed_name):
        single = np.ndim(ids) == 0
        count = _ids(ids, ids_name, None).size  # the ids only give the number of rows
        fixed = self._table(fixed_name)
        rows = self._confidence_rows(matrix, matrix_name, fixed.shape[0])
        if rows.shape[0] != count:
            raise ValueError(
                f"{matrix_name} must have one row for every id in {ids_name}: "
                f"{count} ids, {rows.shape[0]} rows"
            )
        solved = self._solve_rows(rows, fixed, fixed_name)
        return solved[0] if single else solved

    def _confidence_rows(self, matrix, name: str, n_cols: int,
                         dtype=np.float32) -> sp.csr_matrix:
        """As implicit's recalculate_*: scale by alpha in the matrix's dtype, then float32
        (``dtype=None``: kept in that dtype, as implicit's explain does)."""
        matrix = _as_csr(matrix, name)
        work = matrix.dtype if matrix.dtype.kind == "f" else np.dtype(np.float64)
        matrix = _widen(check.check_csr(matrix, name, dtype=work), name, n_cols)
        if self.alpha != 1.0:
            matrix = self.alpha * matrix
        return matrix if dtype is None else matrix.astype(dtype)

    def _solve_rows(self, rows: sp.csr_matrix, fixed: np.ndarray, fixed_name: str) -> np.ndarray:
        engine = self._engine()
        params = AlsParams(
            regularization=engine.regularization,
            alpha=1.0,
            confidence="raw",
            solver="cholesky",
            cg_steps=engine.cg_steps,
            num_threads=engine.num_threads,
        )
        solved = np.zeros((rows.shape[0], engine.factors), dtype=engine.dtype)
        backend = resolve_backend(engine.backend)
        failed = backend.half_sweep(CsrArrays.from_scipy(rows, engine.dtype), fixed, solved,
                                    params, gram=self._gram(fixed_name))
        _refuse_failed_systems(failed)
        return solved

    def partial_fit_users(self, userids: ArrayLike, user_items: SparseMatrix) -> None:
        """Recompute (and store) the factors of ``userids`` from their rows of ``user_items``.

        Ids beyond the known users grow the table; rows in between start at zero.
        """
        self._partial_fit(userids, "userids", user_items, "user_items", "user_factors",
                          self.recalculate_user)

    def partial_fit_items(self, itemids: ArrayLike, item_users: SparseMatrix) -> None:
        """Recompute (and store) the factors of ``itemids`` from their rows of ``item_users``."""
        self._partial_fit(itemids, "itemids", item_users, "item_users", "item_factors",
                          self.recalculate_item)

    def _partial_fit(self, ids, ids_name, matrix, matrix_name, table_name, recalculate):
        self._require_fitted()
        ids = _ids(ids, ids_name, None)
        if not sp.issparse(matrix):
            raise TypeError(f"{matrix_name} must be a scipy.sparse CSR matrix, got "
                            f"{type(matrix).__module__}.{type(matrix).__name__}")
        if ids.size != matrix.shape[0]:
            raise ValueError(f"{matrix_name} must contain 1 row for every id in {ids_name}: "
                             f"{ids.size} ids, {matrix.shape[0]} rows")
        if ids.size == 0:
            return
        solved = recalculate(ids, matrix)
        table = self._table(table_name)
        rows = max(table.shape[0], int(ids.max()) + 1)
        grown = np.zeros((rows, table.shape[1]), dtype=table.dtype)
        grown[: table.shape[0]] = table
        grown[ids] = solved  # a repeated id keeps its last row, as in implicit
        setattr(self, table_name, grown)

    # ------------------------------------------------------------------ retrieval
    def recommend(
        self,
        userid: ArrayLike,
        user_items: CsrMatrix | None,
        N: Integer = 10,
        filter_already_liked_items: bool = True,
        filter_items: ArrayLike | None = None,
        recalculate_user: bool = False,
        items: ArrayLike | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The N best items for a user id (1-d results) or an array of ids (2-d results).

        ``user_items`` has one row per requested user (``user_items[userid]``); it is needed
        to filter the user's items or to recalculate the user. ``filter_items`` excludes ids
        for every user; ``items`` ranks only those ids (and cannot be combined with
        filter_items). Returns (ids, scores) as implicit does (see the module docstring).
        """
        self._require_fitted()
        N = check.check_int(N, "N", minimum=1)
        filter_already_liked_items = check.check_flag(filter_already_liked_items,
                                                      "filter_already_liked_items")
        recalculate_user = check.check_flag(recalculate_user, "recalculate_user")
        check.check_result_size(np.size(userid), N)
        item_factors = self._table("item_factors", convert=False)
        n_items = item_factors.shape[0]
        single = np.ndim(userid) == 0
        if filter_already_liked_items or recalculate_user:
            if user_items is None or not sp.issparse(user_items) or user_items.format != "csr":
                raise CompatTypeError(
                    "user_items needs to be a CSR sparse matrix with one row per user in userid "
                    "(filter_already_liked_items or recalculate_user is set), got "
                    f"{type(user_items).__module__}.{type(user_items).__name__}"
                )
            count = 1 if single else _ids(userid, "userid", None).size
            if user_items.shape[0] != count:
                raise ValueError("user_items must contain 1 row for every user in userid: "
                                 f"{count} users, {user_items.shape[0]} rows")
            user_items = _widen(user_items, "user_items", n_items)
        if recalculate_user:
            query = self.recalculate_user(userid, user_items)
        else:
            user_factors = self._table("user_factors", convert=False)
            query = user_factors[_ids(userid, "userid", user_factors.shape[0])]
        if query.ndim == 1:
            query = query.reshape((1, -1))

        if items is not None:
            if _nonempty(filter_items):
                raise ValueError("Can't set both items and filter_items in recommend call")
            items = _id_list(items, "items", n_items)
            items.sort()
            N = min(N, len(items))
            item_factors = item_factors[items]
        excluded = None
        if filter_items is not None:
            excluded = _ids(filter_items, "filter_items", n_items)
        liked = None
        if filter_already_liked_items:
            liked = sp.csr_matrix(user_items)
            if items is not None:
                liked = _remap_filter(items, liked)

        ids, scores = _topk(item_factors, query, N, filter_rows=liked, filter_items=excluded)
        if single:
            ids, scores = ids[0], scores[0]
        if items is not None:
            ids = items[ids]
        return ids, scores

    def similar_items(self, itemid: ArrayLike, N: Integer = 10, recalculate_item: bool = False,
                      item_users: SparseMatrix | None = None,
                      filter_items: ArrayLike | None = None, items: ArrayLike | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
        """The N items most similar to ``itemid`` by cosine of the factors (itself included).

        ``recalculate_item`` computes the item's factors from ``item_users`` (one row per
        id, users as columns) instead of the stored ones.
        """
        self._require_fitted()
        N = check.check_int(N, "N", minimum=1)
        recalculate_item = check.check_flag(recalculate_item, "recalculate_item")
        check.check_result_size(np.size(itemid), N)
        factors = self._table("item_factors", convert=False)
        norms = self.item_norms
        norm: Any  # the query's norm (a scalar), or an array of one per query
        if recalculate_item:
            if item_users is None:
                raise ValueError("recalculate_item=True needs item_users")
            factor = self.recalculate_item(itemid, item_users)
            if factor.ndim == 1:
                norm = np.linalg.norm(factor)
                norm = norm if norm != 0 else 1e-10
            else:
                norm = np.linalg.norm(factor, axis=1)
                norm[norm == 0] = 1e-10
        else:
            rows = _ids(itemid, "itemid", factors.shape[0])
            factor = factors[rows[0]] if np.ndim(itemid) == 0 else factors[rows]
            norm = norms[rows[0]] if np.ndim(itemid) == 0 else norms[rows]
        return self._similar(factor, norm, factors, norms, N, filter_items, "filter_items",
                             items, "items")

    def similar_users(self, userid: ArrayLike, N: Integer = 10,
                      filter_users: ArrayLike | None = None, users: ArrayLike | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
        """The N users most similar to ``userid`` by cosine of the factors (itself included)."""
        self._require_fitted()
        N = check.check_int(N, "N", minimum=1)
        check.check_result_size(np.size(userid), N)
        factors = self._table("user_factors", convert=False)
        norms = self.user_norms
        rows = _ids(userid, "userid", factors.shape[0])
        factor = factors[rows[0]] if np.ndim(userid) == 0 else factors[rows]
        norm = norms[rows[0]] if np.ndim(userid) == 0 else norms[rows]
        return self._similar(factor, norm, factors, norms, N, filter_users, "filter_users",
                             users, "users")

    @staticmethod
    def _similar(factor, norm, factors, norms, N, exclude, exclude_name, subset, subset_name):
        """implicit's similar_*: scores divided by the candidates' norms, the selection, then
        divided by the query's norm (excluded entries are -finfo.max divided by both)."""
        n = factors.shape[0]
        excluded = _ids(exclude, exclude_name, n) if exclude is not None else None
        if subset is not None:
            if _nonempty(exclude):
                raise ValueError(f"Can't set both {subset_name} and {exclude_name} in "
                                 f"similar_{subset_name} call")
            subset = _id_list(subset, subset_name, n)  # unlike recommend, not sorted
            factors, norms = factors[subset], norms[subset]
        ids, scores = _topk(factors, factor, N, item_norms=norms, filter_items=excluded)
        # -finfo.max divided by a norm below 1 overflows to -inf, as it does in implicit
        with np.errstate(over="ignore"):
            if np.ndim(factor) == 1:
                ids, scores = ids[0], scores[0]
                scores /= norm
            else:
                scores /= norm[:, None]
        if subset is not None:
            ids = subset[ids]
        return ids, scores

    # ------------------------------------------------------------------ explanation
    def explain(self, userid, user_items, itemid, user_weights=None, N: int = 10):
        """Why ``itemid`` scores as it does for ``userid`` (Hu, Koren and Volinsky 2008, §5).

        ``user_items`` is the users x items matrix; the user's items are its row ``userid``
        (as in implicit; ``recommend`` takes ``user_items[userid]`` instead), scaled by alpha
        into confidences c_j. The user's stored factors are not used, so any row can be
        explained. With W = (YᵀY + λI + Σ_j (|c_j| − 1) y_j y_jᵀ)⁻¹, the user's system,
        item j contributes s_j = c_j · y_iᵀ W y_j for every c_j >= 0 (a disliked item shapes
        W but contributes nothing).

        Returns ``(total_score, top_contributions, user_weights)``: the sum of all s_j, which
        is the score ``recommend(..., recalculate_user=True)`` gives the item; the N largest
        ``(itemid, s_j)`` pairs, largest first (equal scores: larger itemid first), fewer when
        the user has fewer items; and W's Cholesky factor as ``scipy.linalg.cho_factor``
        returns it. Passing that back as ``user_weights`` (for the same user and items)
        skips the factorisation; implicit's own ``user_weights`` work too. A system that is
        not positive definite raises ``numpy.linalg.LinAlgError`` (a ValueError), as there.
        """
        item_factors = self._table("item_factors")
        N = check.check_int(N, "N", minimum=0)
        itemid = _one_id(itemid, "itemid", item_factors.shape[0])
        userid = _one_id(userid, "userid", None)
        user_items = _as_csr(user_items, "user_items")
        if userid >= user_items.shape[0]:
            raise CompatIndexError(f"userid must be < {user_items.shape[0]} (the rows of "
                                   f"user_items, the users x items matrix), got {userid}")
        row = self._confidence_rows(_csr_row(user_items, userid, "user_items"), "user_items",
                                    item_factors.shape[0], dtype=None)
        confidence = row.data
        liked_factors = item_factors[row.indices].astype(np.float64)
        n_factors = item_factors.shape[1]
        if user_weights is None:
            extra, _ = reference.confidence_weights(confidence, 1.0, "raw")  # |c| - 1
            system = (self.YtY + self._engine().regularization * np.eye(n_factors)
                      + (liked_factors.T * extra) @ liked_factors)
            user_weights = scipy.linalg.cho_factor(system)
        else:
            user_weights = _cholesky_pair(user_weights, n_factors)
        weighted_item = scipy.linalg.cho_solve(user_weights, item_factors[itemid])

        kept = confidence >= 0
        ids = row.indices[kept]
        scores = (liked_factors[kept] @ weighted_item) * confidence[kept]
        # implicit's heap orders (score, itemid) pairs: ties go to the larger itemid
        top = np.lexsort((ids, scores))[::-1][:N]
        return scores.sum(), [(ids[j], scores[j]) for j in top], user_weights

    # ------------------------------------------------------------------ deprecated in implicit
    def rank_items(self, userid: ArrayLike, user_items: CsrMatrix | None,
                   selected_items: ArrayLike, recalculate_user: bool = False
                   ) -> tuple[np.ndarray, np.ndarray]:
        """Deprecated (as in implicit 0.7): use ``recommend(..., items=selected_items)``.

        implicit 0.7.3 forwards to ``recommend`` with ``items=selected_items``,
        ``filter_already_liked_items=False`` and the default ``N=10``, so at most 10 of the
        selected items come back, best first; so does this.
        """
        warnings.warn("rank_items is deprecated. Use recommend with the 'items' parameter "
                      "instead", DeprecationWarning, stacklevel=2)
        return self.recommend(userid, user_items, recalculate_user=recalculate_user,
                              items=selected_items, filter_already_liked_items=False)

    def recommend_all(
        self,
        user_items: CsrMatrix,
        N: Integer = 10,
        recalculate_user: bool = False,
        filter_already_liked_items: bool = True,
        filter_items: ArrayLike | None = None,
        users_items_offset: Integer = 0,
    ) -> np.ndarray:
        """Deprecated (as in implicit 0.7): use ``recommend`` with an array of user ids.

        The ids (no scores) of ``recommend(userids, user_items, ...)`` for every row of
        ``user_items``, whose rows are the users ``users_items_offset`` onwards.
        """
        warnings.warn("recommend_all is deprecated. Use recommend with an array of userids "
                      "instead", DeprecationWarning, stacklevel=2)
        filter_already_liked_items = check.check_flag(filter_already_liked_items,
                                                      "filter_already_liked_items")
        recalculate_user = check.check_flag(recalculate_user, "recalculate_user")
        if not sp.issparse(user_items):
            raise CompatTypeError(
                "user_items must be a scipy.sparse CSR matrix (users x items), got "
                f"{type(user_items).__module__}.{type(user_items).__name__}"
            )
        offset = check.check_int(users_items_offset, "users_items_offset", minimum=0)
        if offset and (filter_already_liked_items or recalculate_user):
            raise ValueError(
                "users_items_offset > 0 needs filter_already_liked_items=False and "
                "recalculate_user=False: implicit 0.7.3 pads user_items with that many empty "
                "rows, and recommend then refuses more rows than users"
            )
        userids = np.arange(user_items.shape[0]) + offset
        ids, _ = self.recommend(userids, user_items, N=N,
                                filter_already_liked_items=filter_already_liked_items,
                                filter_items=filter_items, recalculate_user=recalculate_user)
        return ids

    # ------------------------------------------------------------------ cached quantities
    def _cached(self, key: str, table_name: str, compute):
        table = getattr(self, table_name)
        hit = self._cache.get(key)
        if hit is not None and hit[0] is table:
            return hit[1]
        value = compute(self._table(table_name, convert=key.endswith("gram")))
        self._cache[key] = (table, value)
        return value

    @property
    def user_norms(self) -> np.ndarray:
        """Norms of the user factors (zeros replaced by 1e-10, as in implicit)."""
        return self._cached("user_norms", "user_factors", _norms)

    @property
    def item_norms(self) -> np.ndarray:
        """Norms of the item factors (zeros replaced by 1e-10, as in implicit)."""
        return self._cached("item_norms", "item_factors", _norms)

    @property
    def YtY(self) -> np.ndarray:
        """item_factorsᵀ item_factors."""
        return self._gram("item_factors")

    @property
    def XtX(self) -> np.ndarray:
        """user_factorsᵀ user_factors."""
        return self._gram("user_factors")

    def _gram(self, table_name: str) -> np.ndarray:
        # natively (models.als.item_gram): the same bits for any BLAS or OpenMP thread count
        return self._cached(f"{table_name}_gram", table_name,
                            lambda table: item_gram(table, self.num_threads))

    def _table(self, name: str, convert: bool = True) -> np.ndarray:
        """A factor table; for the solvers a C-contiguous array of the model dtype."""
        value = getattr(self, name)
        if value is None:
            raise RuntimeError(f"the model has no {name}: call fit() first")
        array = np.asarray(value)
        if array.ndim != 2:
            raise ValueError(f"{name} must be 2-d, got shape {array.shape}")
        if array.dtype.kind not in "fiu":
            raise TypeError(f"{name} must hold real numbers, got dtype {array.dtype}")
        if not convert:
            return array
        dtype = check.check_float_dtype(self.dtype)
        if array.dtype == dtype and array.flags.c_contiguous:
            return array
        return check.check_factors(array, name, dtype=dtype)

    def _require_fitted(self) -> None:
        if self.user_factors is None or self.item_factors is None:
            raise RuntimeError("the model is not fitted: call fit() or load() first")

    # ------------------------------------------------------------------ devices
    def to_gpu(self) -> "AlternatingLeastSquares":
        """A copy that fits with recfuse's cuda backend (ValueError where it is unavailable)."""
        return self._copy(use_gpu=True)

    def to_cpu(self) -> "AlternatingLeastSquares":
        """A copy that fits on the CPU."""
        return self._copy(use_gpu=False)

    def _copy(self, use_gpu: bool) -> "AlternatingLeastSquares":
        other = type(self)(
            factors=self.factors, regularization=self.regularization, alpha=self.alpha,
            dtype=self.dtype, use_native=self.use_native, use_cg=self.use_cg, use_gpu=use_gpu,
            iterations=self.iterations, calculate_training_loss=self.calculate_training_loss,
            num_threads=self.num_threads, random_state=self.random_state,
        )
        other.cg_steps = self.cg_steps
        for name in ("user_factors", "item_factors"):
            value = getattr(self, name)
            setattr(other, name, None if value is None else np.array(value, copy=True))
        return other

    # ------------------------------------------------------------------ persistence
    def save(self, fileobj_or_path: Any) -> None:  # a path, or a binary file object
        """Write the model as a recfuse model file (versioned .npz, no pickle).

        A path gets ``.npz`` appended when it lacks it (as ``numpy.savez`` does for implicit).
        ``recfuse.load`` reads the file as a ``recfuse.ALS`` with confidence="raw".
        """
        params = self._engine().get_params()
        params["backend"] = "auto"  # the adapter's own settings below choose the backend
        arrays = {}
        for name in ("user_factors", "item_factors"):
            if getattr(self, name) is not None:
                arrays[name] = self._table(name)
        seed = self.random_state
        settings = {
            "version": COMPAT_VERSION,
            "implicit": IMPLICIT_VERSION,
            "use_native": self.use_native,
            "use_cg": self.use_cg,
            "use_gpu": self.use_gpu,
            "calculate_training_loss": self.calculate_training_loss,
            "random_state": int(seed) if isinstance(seed, numbers.Integral) else None,
        }
        arrays[COMPAT_KEY] = np.frombuffer(json.dumps(settings).encode("utf-8"), dtype=np.uint8)
        # implicit's own save is numpy.savez of its attributes, which its load sets back on a
        # new model: written too, so that implicit reads this file with the model's settings
        # (not its defaults: factors=100, regularization=0.01, alpha=1.0...). As numbers only,
        # which recfuse.load requires: the flags as 0/1, and no dtype (see the docstring).
        arrays.update(
            factors=np.asarray(params["factors"], dtype=np.int64),
            regularization=np.asarray(params["regularization"], dtype=np.float64),
            alpha=np.asarray(self.alpha, dtype=np.float64),
            use_native=np.asarray(self.use_native, dtype=np.int64),
            use_cg=np.asarray(self.use_cg, dtype=np.int64),
            cg_steps=np.asarray(params["cg_steps"], dtype=np.int64),
            iterations=np.asarray(params["iterations"], dtype=np.int64),
            calculate_training_loss=np.asarray(self.calculate_training_loss, dtype=np.int64),
            num_threads=np.asarray(params["num_threads"], dtype=np.int64),
        )
        if settings["random_state"] is not None:
            arrays["random_state"] = np.asarray(settings["random_state"])
        if hasattr(fileobj_or_path, "write"):
            with tempfile.TemporaryDirectory(prefix="recfuse-") as directory:
                path = os.path.join(directory, "model.npz")
                persistence.save_model(path, "ALS", params, arrays)
                with open(path, "rb") as handle:
                    shutil.copyfileobj(handle, fileobj_or_path)
            return
        persistence.save_model(_npz_path(fileobj_or_path), "ALS", params, arrays)

    @classmethod
    def load(cls, fileobj_or_path: Any) -> "AlternatingLeastSquares":  # path or file
        """Read a model written by ``save`` (or by implicit's own ``save``)."""
        if hasattr(fileobj_or_path, "read"):
            with tempfile.TemporaryDirectory(prefix="recfuse-") as directory:
                path = os.path.join(directory, "model.npz")
                with open(path, "wb") as handle:
                    shutil.copyfileobj(fileobj_or_path, handle)
                return cls._load_path(path)
        return cls._load_path(_npz_path(fileobj_or_path))

    @classmethod
    def _load_path(cls, path: str) -> "AlternatingLeastSquares":
        check.check_model_file(path)
        try:  # the names only: each reader below reads the members with its checks
            with zipfile.ZipFile(path) as archive:
                members = {persistence.member_name(name) for name in archive.namelist()}
        except (zipfile.BadZipFile, OSError, UnicodeDecodeError) as error:
            raise ValueError(f"{path!r} is not a readable model file: {error}") from error
        if persistence.HEADER_KEY in members:
            return cls._from_recfuse(path)
        if "factors" in members:
            return cls._from_implicit(path)
        raise ValueError(f"{path!r} is neither a recfuse nor an implicit model file")

    @classmethod
    def _from_recfuse(cls, path: str) -> "AlternatingLeastSquares":
        header, arrays = persistence.read_model(path)
        params = header.get("params", {})
        if header.get("model") != "ALS":
            raise ValueError(f"{path!r} holds a saved {header.get('model')!r} model, not ALS")
        if params.get("confidence") != "raw":
            raise ValueError(
                f"{path!r} holds a recfuse.ALS with confidence={params.get('confidence')!r}; "
                "this adapter reproduces implicit's confidence='raw' models only"
            )
        settings = {}
        if COMPAT_KEY in arrays:
            try:
                settings = json.loads(arrays[COMPAT_KEY].tobytes().decode("utf-8"))
            except (ValueError, UnicodeDecodeError, RecursionError) as error:
                raise ValueError(f"{path!r}: the member {COMPAT_KEY!r} is not JSON that can be "
                                 f"read ({error})") from error
            if not isinstance(settings, dict):
                raise ValueError(f"{path!r}: the member {COMPAT_KEY!r} must hold a JSON "
                                 f"object, got {type(settings).__name__}")
        try:
            model = cls(
                factors=params["factors"],
                regularization=params["regularization"],
                alpha=params["alpha"],
                dtype=params["dtype"],
                use_native=settings.get("use_native", True),
                use_cg=params["solver"] == "cg",
                use_gpu=_gpu_on_load(settings.get("use_gpu", False), path),
                iterations=params["iterations"],
                calculate_training_loss=settings.get("calculate_training_loss", False),
                num_threads=params["num_threads"],
                random_state=settings.get("random_state"),
            )
        except KeyError as error:
            raise ValueError(f"{path!r} lacks the parameter {error}") from error
        model.cg_steps = check.check_int(params.get("cg_steps", 3), "cg_steps", minimum=1)
        model._set_loaded_factors(arrays, path)
        return model

    @classmethod
    def _from_implicit(cls, path: str) -> "AlternatingLeastSquares":
        """A file from implicit's ``save``: ``numpy.savez`` of its attributes."""
        saved = persistence.read_arrays(path, "implicit model file")
        values = {name: (array.item() if array.shape == () else array)
                  for name, array in saved.items()}
        options: dict[str, Any] = {name: values[name] for name in (
            "factors", "regularization", "alpha", "use_native", "use_cg", "iterations",
            "calculate_training_loss", "num_threads", "random_state") if name in values}
        if "dtype" in values:
            options["dtype"] = str(values["dtype"])
        model = cls(use_gpu=False, **options)
        if "cg_steps" in values:
            model.cg_steps = check.check_int(values["cg_steps"], "cg_steps", minimum=1)
        model._set_loaded_factors(saved, path)
        return model

    def _set_loaded_factors(self, arrays: dict, path: str) -> None:
        for name in ("user_factors", "item_factors"):
            if name in arrays:
                setattr(self, name, check.check_factors(arrays[name], f"{path!r}: {name}",
                                                        dtype=self.dtype, n_cols=self.factors))

    # ------------------------------------------------------------------ misc
    def __getstate__(self):
        state = dict(self.__dict__)
        state["_cache"] = {}
        return state

    def __repr__(self) -> str:
        fitted = "" if self.user_factors is None or self.item_factors is None else (
            f", fitted on {np.shape(self.user_factors)[0]} users x "
            f"{np.shape(self.item_factors)[0]} items"
        )
        return (f"recfuse.compat.implicit.AlternatingLeastSquares(factors={self.factors}, "
                f"regularization={self.regularization}, alpha={self.alpha}, "
                f"iterations={self.iterations}, use_cg={self.use_cg}, use_gpu={self.use_gpu}, "
                f"dtype={dtype_text(self.dtype)}{fitted})")


def _norms(table: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(table, axis=-1)
    norms[norms == 0] = 1e-10  # implicit: no division by zero in similar_*
    return norms


def _widen(matrix, name: str, n_cols: int):
    """A CSR matrix with n_cols columns, as implicit takes any width: fewer (a matrix from
    before partial_fit_* added ids) or more (a catalogue grown since the fit) as long as
    every stored column is an id of the model; one that is not is implicit's IndexError."""
    if matrix.shape[1] > n_cols:
        if matrix.nnz and int(matrix.indices.max()) >= n_cols:
            raise CompatIndexError(f"{name} stores an entry in column "
                                   f"{int(matrix.indices.max())}, past the {n_cols} columns "
                                   f"the model has ids for")
    if matrix.shape[1] == n_cols:
        return matrix
    return sp.csr_matrix((matrix.data, matrix.indices, matrix.indptr),
                         shape=(matrix.shape[0], n_cols))


def _npz_path(path) -> str:
    path = check.check_path(path)  # bytes too, as recfuse.load takes them
    return path if path.endswith(".npz") else path + ".npz"


def _gpu_on_load(saved: bool, path: str) -> bool:
    if saved and not HAS_CUDA:
        warnings.warn(f"{path!r} was saved with use_gpu=True; recfuse's cuda backend is not "
                      "available here, so the model is loaded for the CPU", RuntimeWarning,
                      stacklevel=check.caller_stacklevel())
        return False
    return bool(saved)

"""What the factor models share beyond their training loops: the input forms they accept
(``Interactions``, a sparse matrix of ratings, given seen rows), progress bars, and the
retrieval calls built on ``recommend`` and the factor tables (``recommend_all``,
``similar_items``, ``similar_users``)."""

from __future__ import annotations

import contextlib
import functools
import numbers
import sys
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, overload

import numpy as np
import scipy.sparse as sp
from numpy.typing import ArrayLike

from .. import _validation as check
from ..retrieval import ItemIndex, write_recommendations
from .._typing import Integer, PathLike, Self


def interaction_matrix(value):
    """The users x items matrix of an ``Interactions`` (its ``matrix``); anything else as it
    is, for the model's own checks."""
    from ..interactions import Interactions

    return value.matrix if isinstance(value, Interactions) else value


def check_tables_fit(user_items, factors: int, bytes_per_value: int) -> None:
    """Refuse, before ``user_items`` is read or anything allocated, a users x items shape
    whose factor tables (``factors`` values of ``bytes_per_value`` bytes per user and per
    item, and the row pointers) could not fit this machine's memory: a MemoryError naming
    the matrix's rows and columns, not the allocator's (or the system's OOM killer's) answer
    to a shape declared far beyond the entries (a CSR of 2**31 rows holding 3 entries)."""
    matrix = interaction_matrix(user_items)
    if not sp.issparse(matrix) or len(matrix.shape) != 2:
        return  # the model's own checks say what is wrong
    rows, cols = (int(size) for size in matrix.shape)
    each = factors * bytes_per_value + 16
    check.check_counts_fit((rows, "user_items' rows (users)", each),
                           (cols, "user_items' columns (items)", each))


def seen_rows(user_items, n_rows: int, n_items: int):
    """``user_items`` given to ``recommend`` (a CSR matrix or ``Interactions``, one row per
    requested user) checked as the items to filter."""
    return check.check_csr(interaction_matrix(user_items), "user_items", dtype=np.float32,
                           n_rows=n_rows, n_cols=n_items)


def stored_seen(seen: sp.csr_matrix, n_users: int, n_items: int) -> sp.csr_matrix:
    """``seen``, the matrix a model kept from training (for ``filter_seen``), once checked to
    be ``n_users`` x ``n_items`` like its factor tables: tables assigned by hand with other
    row counts are a ValueError saying so (scipy's IndexError, or a kernel's complaint about
    its own arguments, named neither)."""
    if seen.shape != (n_users, n_items):
        raise ValueError(f"the seen matrix kept from training is {seen.shape[0]} users x "
                         f"{seen.shape[1]} items, the factor tables are for {n_users} users x "
                         f"{n_items} items (assigned by hand?): pass user_items, or "
                         f"filter_seen=False")
    return seen


def rating_arrays(users, items, ratings, n_users, n_items):
    """(users, items, ratings, n_users, n_items) for a rating model's fit, from three arrays
    or from one users x items sparse matrix or ``Interactions`` in ``users`` (each stored
    entry one rating, duplicates included; in row-major order, but for a COO matrix, taken
    in its own order as arrays would be; ``n_users``/``n_items`` default to its shape)."""
    from ..interactions import Interactions

    if not (isinstance(users, Interactions) or sp.issparse(users)):
        if items is None or ratings is None:
            missing = " and ".join(name for name, value in (("items", items),
                                                            ("ratings", ratings))
                                   if value is None)
            hint = "; a dense matrix is not read as ratings: pass scipy.sparse.csr_matrix(it)" \
                if np.ndim(users) == 2 else ""
            raise TypeError(f"fit needs users, items and ratings, or one users x items sparse "
                            f"matrix or Interactions of ratings, got users "
                            f"({type(users).__module__}.{type(users).__name__}) without "
                            f"{missing}{hint}")
        return users, items, ratings, n_users, n_items
    if items is not None or ratings is not None:
        raise TypeError("pass users, items and ratings, or one matrix or Interactions of "
                        "ratings, not both")
    matrix = interaction_matrix(users)
    if matrix.ndim != 2:
        raise ValueError(f"the ratings matrix must be 2-d, got {matrix.ndim}-d")
    if sp.issparse(matrix):  # tocoo trusts the index structure: checked first
        check.check_sparse_structure(matrix, "the ratings matrix")
    if not matrix.dtype.isnative:  # scipy's conversions refuse a non-native byte order
        matrix = matrix.astype(matrix.dtype.newbyteorder("="))
    entries = matrix.tocoo()
    rows, cols, data = entries.row, entries.col, entries.data
    if matrix.format != "coo" and not (matrix.format == "csr"
                                       and check.rows_ascending(matrix, strict=False)):
        # the order of the ratings shapes the fit: row-major whatever the compressed format
        # or storage order (unsorted CSR, CSC, ...), so that one matrix trains one model; a
        # COO matrix is a list of entries, taken in its order like three arrays
        order = np.lexsort((cols, rows))
        rows, cols, data = rows[order], cols[order], data[order]
    counts = []
    for name, given, size in (("n_users", n_users, matrix.shape[0]),
                              ("n_items", n_items, matrix.shape[1])):
        given = size if given is None else check.check_int(given, name, minimum=0)
        if given < size:  # else the matrix's last rows or columns would be dropped unsaid
            raise ValueError(f"{name} must be at least the ratings matrix's "
                             f"{'rows' if name == 'n_users' else 'columns'} ({size}), got {given}")
        counts.append(given)
    return (rows, cols, data, *counts)


def check_start_fits(init_mean: float, init_std, dtype) -> float:
    """``init_std`` checked (a float >= 0) and returned, once Normal(init_mean, init_std)
    starting factors are sure to be finite in ``dtype``: the draws reach ~5.8 sd."""
    init_std = check.check_float(init_std, "init_std", minimum=0.0)
    dtype = check.check_float_dtype(dtype)
    largest = float(np.finfo(dtype).max)
    if abs(init_mean) + 6 * init_std > largest:
        if init_mean == 0:
            raise ValueError(f"init_std must keep the starting factors finite in {dtype.name} "
                             f"(6 init_std <= {largest:.3g}), got {init_std}")
        raise ValueError(f"init_mean and init_std must keep the starting factors finite in "
                         f"{dtype.name} (|init_mean| + 6 init_std <= {largest:.3g}), "
                         f"got {init_mean} and {init_std}")
    return init_std


def check_trained(model: str, arrays, hint: str) -> None:
    """Raise ValueError when a fit's result (arrays; None for an absent one) holds NaN or inf:
    it diverged. The caller has not stored it yet, so the model is left as it was."""
    if not all(check.all_finite(np.asarray(array)) for array in arrays if array is not None):
        raise ValueError(f"{model} diverged: the trained values hold NaN or inf; {hint}")


def saved_seed(random_state) -> int | None:
    """``random_state`` as model files keep it: an integer seed as a plain int (JSON has no
    NumPy integers), so that a loaded model refits as the original does;
    None for None or a ``numpy.random.Generator``, whose state a file does not hold (the
    loaded model then draws fresh entropy at its next fit, as random_state=None does)."""
    return None if random_state is None or isinstance(random_state, np.random.Generator) \
        else int(random_state)


def param_dtype(dtype):
    """``dtype`` as ``get_params`` gives it: a checked dtype by its (interned) name; anything
    else, assigned by hand, as it is, for the fit's check to name."""
    return sys.intern(dtype.name) if isinstance(dtype, np.dtype) else dtype


def keeps_generator_on_failure(fit):
    """For a model's ``fit``: when ``random_state`` is a numpy Generator and the fit raises
    (refused input, or training that diverged after its draws), the Generator is put back
    where it was, as the model is: a retry then draws what the first try would have."""

    @functools.wraps(fit)
    def guarded(self, *args, **kwargs):
        generator = self.random_state
        if not isinstance(generator, np.random.Generator):
            return fit(self, *args, **kwargs)
        state = generator.bit_generator.state
        try:
            return fit(self, *args, **kwargs)
        except BaseException:
            generator.bit_generator.state = state
            raise

    return guarded


def dtype_text(dtype) -> str:
    """A dtype setting as a repr shows it: the dtype's name, or the repr of a value assigned
    by hand that names no dtype (the next fit refuses it)."""
    try:
        return np.dtype(dtype).name
    except (TypeError, ValueError):
        return repr(dtype)


def param_seed(random_state):
    """``random_state`` as ``get_params`` gives it: an integer seed as a plain int (the very
    int given, when it is one), None or the ``numpy.random.Generator`` itself; anything
    else, assigned by hand, as it is, for the fit's check to name."""
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        return int(random_state)
    return random_state


class EstimatorParams:
    """scikit-learn's estimator protocol over a model's constructor parameters:
    ``get_params`` and ``set_params``, so that ``sklearn.base.clone`` and scikit-learn's
    model selection (``GridSearchCV``...) can copy and configure the model.

    A class provides ``_params()`` (its constructor parameters by name, as ``get_params``
    gives them) and ``_checked_params(params)`` (the attributes that a full set of
    parameters sets, each checked as the constructor checks it: the constructor and
    ``set_params`` both go through it, so a value is refused by both or by neither). A
    fitted model gives the parameters its fitted state was shaped by in ``_fit_shaped()``:
    ``set_params`` refuses new values of those.
    """

    def _params(self) -> dict[str, Any]:
        raise NotImplementedError

    def _checked_params(self, params: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def _fit_shaped(self) -> dict[str, str]:
        """The parameters that shape the model's fitted state, each with what it shapes
        (e.g. ``"tables (64 columns)"``): none while the model is not fitted."""
        return {}

    def _saved_params(self) -> dict[str, Any]:
        """``get_params()`` as model files keep them (``random_state`` by ``saved_seed``)."""
        params = self.get_params()
        params["random_state"] = saved_seed(params["random_state"])
        return params

    def _set_checked(self, params: dict[str, Any], *, keep_fit: bool = False) -> None:
        """Check ``params`` (every constructor parameter) and set the attributes they give:
        nothing is set unless every value is valid. ``keep_fit`` (``set_params``): a new value
        of a parameter that shapes the fitted state (``_fit_shaped``) is refused too."""
        attributes = self._checked_params(params)
        lock = self.__dict__.get("_lock")
        with lock if lock is not None else contextlib.nullcontext():
            if keep_fit:
                self._refuse_fit_shaped(attributes)
            for name, value in attributes.items():
                setattr(self, name, value)

    def _check_settings(self) -> None:
        """Check the parameters as they stand and set their checked forms: every fit calls
        it first, as scikit-learn's estimators check theirs there, since an attribute
        assigned by hand (``model.regularization = -5``) skips ``set_params``' checks. A
        refused value raises the constructor's error and changes nothing."""
        self._set_checked(self._params())

    def _refuse_fit_shaped(self, attributes: dict[str, Any]) -> None:
        """ValueError naming each parameter that shapes the fitted state to which
        ``attributes`` (checked) give a value other than the model's."""
        refused = {name: what for name, what in self._fit_shaped().items()
                   if attributes[name] != getattr(self, name)}
        if not refused:
            return
        current = self._params()
        made = "; ".join(f"{name} shapes the fitted {what}, made with {name}={current[name]!r}"
                         for name, what in refused.items())
        wanted = ", ".join(f"{name}={getattr(value, 'name', value)!r}"  # a dtype by its name
                           for name, value in attributes.items() if name in refused)
        raise ValueError(f"{type(self).__name__} is fitted: {made}: set "
                         f"{'it' if len(refused) == 1 else 'them'} on an unfitted copy, "
                         f"sklearn.base.clone(model).set_params({wanted}), or make a new "
                         f"model, and fit that")

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's parameters by name, each value as the constructor keeps it: the
        value given (the very object: ``sklearn.base.clone`` checks it), or for another
        spelling of it its plain form (a NumPy integer as int, a dtype as its name, a
        ``pathlib.Path`` as str); ``random_state`` an int seed, None or the
        ``numpy.random.Generator`` given. ``type(model)(**model.get_params())`` is an
        unfitted model of the same settings. ``deep`` is taken as scikit-learn passes it and
        changes nothing: recfuse's models hold no sub-estimators."""
        check.check_flag(deep, "deep")
        return self._params()

    def set_params(self, **params: Any) -> Self:
        """Set constructor parameters by name (scikit-learn's ``set_params``) and return self.

        Each value is checked as the constructor checks it, with the constructor's error
        (TypeError or ValueError naming the parameter); a name the constructor does not take
        is a ValueError naming it and listing the valid ones. All or nothing: when any name
        or value is refused, no parameter changes.

        On a fitted model, the settings that shape its fitted state (``factors``, ``dtype``,
        and where the model has them ``biased`` or ``activation``) keep their values: a new
        value is a ValueError (the same value is accepted). To try another, set it on an
        unfitted copy (``sklearn.base.clone(model).set_params(...)``) or a new model, and
        fit that. The other parameters can change on a fitted model, which keeps its fitted
        state; they take effect where they are read: at the next fit, and for the settings
        that fold-ins or ``recommend`` read (``backend``, ``num_threads``, the ALS
        solver's settings), at once. An unfitted model takes every valid value. Not to be
        called while a fit of the same model runs.
        """
        current = self.get_params()
        unknown = [name for name in params if name not in current]
        if unknown:
            raise ValueError(f"{type(self).__name__} has no parameter "
                             f"{', '.join(map(repr, unknown))}; its parameters are "
                             f"{', '.join(current)}")
        if params:
            self._set_checked({**current, **params}, keep_fit=True)
            if "backend" in params:  # the search indexes built on the old one
                # a snapshot: a reader's first query may add a cache to the dict meanwhile
                for name in _cache_names(dict(self.__dict__)):
                    self.__dict__[name] = None
        return self


def _cache_names(attributes: dict) -> list[str]:
    """The attributes that hold what a model builds on first use from its fitted state and
    settings (search indexes: ``*_cache``, each None or empty when dropped)."""
    return [name for name in attributes if name.endswith("_cache")]


def assigned_tables(user_factors, item_factors) -> tuple[np.ndarray, np.ndarray]:
    """A fitted model's (user_factors, item_factors) as 2-d arrays of one width, for a call
    that reads them: a table assigned by hand may be a list, or of another width than the
    other (implicit lets both be replaced by tables of a new width, and so do these models).
    Shapes and kinds only (no pass over the values): every recommend and fold-in calls it."""
    tables = []
    for table, name in ((user_factors, "user_factors"), (item_factors, "item_factors")):
        array = np.asarray(table)
        if array.ndim != 2 or array.dtype.kind not in "fiu":
            raise ValueError(f"{name} must be a 2-d table of numbers (rows x factors), got "
                             f"shape {array.shape} and dtype {array.dtype} (assigned by hand?)")
        tables.append(array)
    if tables[0].shape[1] != tables[1].shape[1]:
        raise ValueError(f"user_factors and item_factors must have one number of columns "
                         f"(factors), got shapes {tables[0].shape} and {tables[1].shape} "
                         f"(assigned by hand?)")
    return tables[0], tables[1]


def shaped_tables(factors: int) -> dict[str, str]:
    """A fitted factor model's ``_fit_shaped``: its ``factors`` and ``dtype`` shaped its
    tables (of ``factors`` columns)."""
    return {"factors": f"tables ({factors} columns)", "dtype": "tables"}


def saved_factor_tables(model, user_factors, item_factors) -> tuple:
    """(user_factors, item_factors) as a model file must hold them: finite, ``model.factors``
    columns, in the model's dtype; not copied where they are so already (a file loaded with
    mmap=True keeps its tables mapped, read-only)."""
    return tuple(check.check_factors(table, name, dtype=model.dtype, n_cols=model.factors,
                                     copy=False)
                 for table, name in ((user_factors, "user_factors"),
                                     (item_factors, "item_factors")))


def saved_group(arrays, names: tuple[str, ...], what: str) -> bool:
    """Whether a model file's ``arrays`` hold the group ``names`` (all of them, or none: not
    kept, or an older file); part of them is a ValueError naming what ``what`` lacks."""
    if not any(name in arrays for name in names):
        return False
    missing = [name for name in names if name not in arrays]
    if missing:
        raise ValueError(f"{what} lacks {missing}")
    return True


def saveable_tables(model, user_factors, item_factors, seen_shape) -> tuple:
    """(user_factors, item_factors) of a factor model that ``save`` is about to write,
    checked as ``recfuse.load`` checks them (``saved_factor_tables``) and against the seen
    matrix's shape: tables assigned by hand that the saved file could not be loaded with are
    a ValueError before anything is written."""
    try:
        tables = saved_factor_tables(model, user_factors, item_factors)
    except (TypeError, ValueError) as error:
        raise ValueError(f"cannot save: {error} (the model's factors is {model.factors}; "
                         f"assign tables that match it)") from error
    if seen_shape is not None and tuple(seen_shape) != (tables[0].shape[0],
                                                        tables[1].shape[0]):
        raise ValueError(f"cannot save: the factor tables are for {tables[0].shape[0]} users "
                         f"and {tables[1].shape[0]} items, the seen matrix for "
                         f"{seen_shape[0]} and {seen_shape[1]}")
    return tables


class _NoProgress:
    n = 0

    def update(self, n: int = 1) -> None:
        pass

    def refresh(self) -> None:
        pass

    def set_postfix(self, **values) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, enabled: bool, description: str, unit: str = "it",
                 initial: int = 0):
    """A tqdm bar, or a no-op without importing tqdm (its first import costs ~30 ms, half of
    an ml-100k SVD fit); a no-op too where there is no stderr to draw on (a service started
    without one, ``2>&-``), which tqdm would fail to write to."""
    if not enabled or sys.stderr is None:
        return _NoProgress()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit=unit, initial=initial)


class FactorRetrieval:
    """``recommend_all``, ``similar_items`` and ``similar_users`` for a factor model.

    A model provides ``recommend(user_ids, k=..., filter_seen=...)`` (2-d results for a
    batch), ``user_factors``, ``backend``, ``num_threads``, ``_require_fitted()``,
    ``_similarity_table(side)`` ("users" or "items": the vectors compared by cosine) and
    ``_similarity_source(side)`` (an object whose identity changes whenever that table
    would: the index is rebuilt then, and only then).

    Models pickle (``copy.deepcopy``, multiprocessing, Surprise's ``dump`` and parallel
    ``cross_validate``) without their writer lock and index caches, which are made anew.
    Files written with ``save`` are the portable, safe form: ``recfuse.load`` never unpickles.
    """

    if TYPE_CHECKING:  # what the model provides (above); declared for type checkers only
        backend: str
        num_threads: int
        dtype: np.dtype

        @property
        def user_factors(self) -> np.ndarray | None: ...

        def recommend(self, user_ids: ArrayLike, *, k: Integer = 10, filter_seen: bool = True
                      ) -> tuple[np.ndarray, np.ndarray]: ...

        def _require_fitted(self) -> object: ...

        def _similarity_table(self, side: str) -> np.ndarray: ...

        def _similarity_source(self, side: str) -> object: ...

    def __getstate__(self) -> dict:
        lock = self.__dict__.get("_lock")
        # under the writer lock: a fit publishes its tables under it (BPR: four attributes,
        # one by one), and a copy taken meanwhile would mix two fits
        with lock if lock is not None else contextlib.nullcontext():
            state = self.__dict__.copy()
        state.pop("_lock", None)
        for name in _cache_names(state):
            state[name] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @overload
    def recommend_all(self, k: Integer = 10, *, batch_size: Integer = 4096,
                      filter_seen: bool = True, path: None = None, show_progress: bool = False
                      ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]: ...

    @overload
    def recommend_all(self, k: Integer = 10, *, batch_size: Integer = 4096,
                      filter_seen: bool = True, path: PathLike, show_progress: bool = False
                      ) -> int: ...

    def recommend_all(self, k: Integer = 10, *, batch_size: Integer = 4096,
                      filter_seen: bool = True, path: PathLike | None = None,
                      show_progress: bool = False
                      ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]] | int:
        """Top k for every user, ``batch_size`` users at a time (memory stays bounded).

        Without ``path``: an iterator of ``(user_ids, item_ids, scores)`` chunks, item ids and
        scores ``len(user_ids) x k`` as from ``recommend`` (seen items of the training data
        filtered when ``filter_seen``), every chunk from the model as it was at this call,
        whatever a concurrent fit or fold-in does meanwhile. With ``path``: writes a Parquet
        file (needs pyarrow) with one row per recommendation, columns user, rank, item, score
        (padding dropped), atomically, and returns the number of rows written.
        """
        self._require_fitted()
        width = check.check_k(k)
        batch_size = check.check_int(batch_size, "batch_size", minimum=1)
        users = self.user_factors
        assert users is not None  # _require_fitted
        if path is not None:  # the file drops the padding: none past the items asked for
            width = max(1, min(width, np.shape(getattr(self, "item_factors"))[0]))
        check.check_result_size(min(batch_size, users.shape[0]), width)  # now, not mid-way
        filter_seen = check.check_flag(filter_seen, "filter_seen")
        show_progress = check.check_flag(show_progress, "show_progress")
        # Every chunk from one fitted state: writers (fit, update_users) replace the state
        # under this lock, and the snapshot keeps the state of this moment.
        with self._lock:
            snapshot = object.__new__(type(self))
            snapshot.__dict__.update(self.__dict__)
        if filter_seen:
            snapshot._check_seen_items()  # fail now, not mid-way
        chunks = snapshot._recommend_chunks(width, batch_size, filter_seen, show_progress)
        if path is None:
            return chunks
        return write_recommendations(path, chunks, self.dtype)

    def _recommend_chunks(self, k: int, batch_size: int, filter_seen: bool, show_progress: bool):
        table = self.user_factors
        assert table is not None  # a snapshot of a model recommend_all found fitted
        n_users = table.shape[0]
        progress = progress_bar(n_users, show_progress, "recommend_all", unit="user")
        try:
            for begin in range(0, n_users, batch_size):
                users = np.arange(begin, min(n_users, begin + batch_size))
                ids, scores = self.recommend(users, k=k, filter_seen=filter_seen)
                progress.update(users.size)
                yield users, ids, scores
        finally:
            progress.close()

    def _check_seen_items(self) -> None:
        """Raises when ``recommend(..., filter_seen=True)`` cannot run (no seen items kept)."""

    def similar_items(self, item_ids: ArrayLike, k: Integer = 10
                      ) -> tuple[np.ndarray, np.ndarray]:
        """The k items most similar to each item by cosine of their factors, one item (1-d
        results) or a batch (2-d): itself first, unless another item's computed cosine is as
        high (a parallel vector's can round to 1 or just above it; ties go to the smaller
        id). An item without factors (a zero vector: no
        training data) is similar to nothing: its scores, and its own in other lists, are 0."""
        return self._similar("items", item_ids, k, "item_ids")

    def similar_users(self, user_ids: ArrayLike, k: Integer = 10
                      ) -> tuple[np.ndarray, np.ndarray]:
        """The k users most similar to each user by cosine of their factors (itself first),
        as ``similar_items``."""
        return self._similar("users", user_ids, k, "user_ids")

    def _similar(self, side: str, ids, k: Integer, name: str):
        self._require_fitted()
        index = self._cosine_index(side)
        single = check.is_one_id(ids, name)
        rows = check.check_ids(ids, name, index.shape[0])
        k = check.check_k(k)
        out_ids, out_scores = index.search(index.items[rows], k, num_threads=self.num_threads)
        if single:
            return out_ids[0], out_scores[0]
        return out_ids, out_scores

    def _cosine_index(self, side: str) -> ItemIndex:
        """The cosine ItemIndex of ``_similarity_table(side)``, rebuilt when its source
        changes (an ALS fold-in of users leaves the items' index alone) or the backend does."""
        source, backend = self._similarity_source(side), self.backend
        cache = self.__dict__.get("_cosine_cache")  # {side: (source, index)}
        if cache is None:
            cache = self.__dict__["_cosine_cache"] = {}
        cached = cache.get(side)
        if cached is None or cached[0] is not source or cached[1].backend != backend:
            cached = (source, ItemIndex(self._similarity_table(side), metric="cosine",
                                        backend=backend))
            cache[side] = cached
        return cached[1]

"""Implicit-feedback alternating least squares (Hu, Koren, Volinsky 2008)."""

from __future__ import annotations

import numbers
import threading
import warnings
from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np
import scipy.sparse as sp
from numpy.typing import ArrayLike, DTypeLike

from .. import _validation as check
from .._als.common import AlsParams, CsrArrays, normalised_loss
from .._backend import resolve_backend
from ..retrieval import ItemIndex
from ._common import (EstimatorParams, FactorRetrieval, assigned_tables, check_tables_fit,
                      check_trained, dtype_text, interaction_matrix, keeps_generator_on_failure,
                      param_dtype, param_seed, progress_bar, saveable_tables, saved_factor_tables,
                      saved_group, shaped_tables, stored_seen)
from .._typing import Integer, PathLike, RandomState, UserItems

MAX_FACTORS = 4096


@dataclass(frozen=True)
class _State:
    """What ALS knows after fit: replaced as a whole (one reference assignment), so a reader
    that takes ``model._state`` once sees factors and seen items that belong together."""

    user_factors: np.ndarray | None = None
    item_factors: np.ndarray | None = None
    user_items: sp.csr_matrix | None = None  # training matrix, for filter_seen
    item_gram: np.ndarray | None = None  # YᵀY of item_factors, computed on first fold-in


def failed_systems_advice(regularization: float, dtype, values: str) -> str:
    """What to change when row systems were not positive definite or overflowed (a CG
    step's p·Ap). With ``regularization`` > 0 a system fails when its sums overflow the dtype
    (confidences 1 + alpha·r too large, on long factor vectors) or when it is too badly
    conditioned for the dtype (a regularization tiny against YᵀY, or values so large that the
    confidences dwarf it). ``values`` names what holds them."""
    dtype = np.dtype(dtype)
    if not regularization > 0:
        return (f"use regularization > 0 (or, where their sums overflowed {dtype.name}, lower "
                f"alpha or scale down the values of {values})")
    wider = ", or use dtype=np.float64" if dtype == np.float32 else ""
    return (f"their sums overflowed {dtype.name} or were too badly conditioned for it: lower "
            f"alpha, scale down the values of {values} or raise regularization{wider}")


def warn_failed_systems(failed: int, stacklevel: int, regularization: float, dtype) -> None:
    """The RuntimeWarning of a fit (``ALS``, ``DaskALS``, ``SparkALS``) in which ``failed``
    row systems over its half-sweeps were not positive definite; ``stacklevel`` as for
    ``warnings.warn`` from the caller; the advice from ``failed_systems_advice``."""
    if failed:
        advice = failed_systems_advice(regularization, dtype, "user_items")
        warnings.warn(
            f"{failed} row systems were not positive definite or overflowed "
            f"{np.dtype(dtype).name} and kept their previous vectors; {advice}",
            RuntimeWarning,
            stacklevel=stacklevel + 1,
        )


# The largest confidence the cg solver takes in each dtype: the cube root of its largest
# value (6.98e12 in float32, 5.64e102 in float64). A CG step's p·Ap grows like the cube of a
# row's confidences (p like c, Ap like c²): past the bound it overflows to inf, and the row
# fails (keeps its old vector; fit warns, a fold-in refuses). Refusing the values up front
# says why. (Cholesky squares them at most.)
CG_CONFIDENCE_BOUNDS = {np.dtype(t): float(np.cbrt(np.finfo(t).max))
                        for t in (np.float32, np.float64)}


def largest_confidence(values: np.ndarray, params: AlsParams, dtype) -> float:
    """The largest confidence of ``values`` (cast to ``dtype``, as the kernels read them):
    |r| under "raw", else 1 + alpha·r (values >= 0); 0 for no values."""
    if not values.size:
        return 0.0
    with np.errstate(over="ignore"):  # past the dtype's range: inf, beyond every bound
        values = np.asarray(values, dtype=dtype)
    return float(np.abs(values).max()) if params.raw_confidence else \
        1 + params.alpha * float(values.max())


def check_cg_confidences(values: np.ndarray, params: AlsParams, dtype, what: str,
                         advice: str = "lower alpha, or use solver='cholesky'") -> None:
    """Refuse ``values`` (stored values of ``what``) whose largest confidence is beyond the
    cg solver's bound in ``dtype``: ValueError ending in ``advice``; nothing for the
    cholesky solver."""
    if params.cholesky:
        return
    top = largest_confidence(values, params, dtype)
    bound = CG_CONFIDENCE_BOUNDS[np.dtype(dtype)]
    if top > bound:
        confidence = "|r|" if params.raw_confidence else "1 + alpha·r"
        raise ValueError(f"{what} reach a confidence ({confidence}) of {top:.3g}, beyond the "
                         f"{bound:.3g} the cg solver takes in {np.dtype(dtype).name} (its "
                         f"steps multiply three confidences, and would overflow): scale down "
                         f"the values, {advice}")


class AlsSettings:
    """The settings recfuse.ALS and the distributed ALS models share, as their constructors
    check them (``checked_settings``); for type checkers."""

    factors: int
    regularization: float
    alpha: float
    iterations: int
    solver: str
    cg_steps: int
    dtype: np.dtype[Any]
    backend: str
    num_threads: int
    confidence: str


class ALS(EstimatorParams, FactorRetrieval, AlsSettings):
    """Implicit-feedback ALS: factors X (users) and Y (items) from a users x items CSR matrix.

    Each stored value r_ui becomes a confidence c_ui = 1 + alpha * r_ui (``confidence=
    "linear"``) or c_ui = |r_ui| (``confidence="raw"``, the convention of ``implicit``), with
    preference p_ui = [r_ui > 0]; absent pairs have c = 1, p = 0. Each iteration solves every
    user against the items, then every item against the users (``recfuse.reference``).

    Parameters
    ----------
    factors: size k of the latent vectors.
    regularization: λ, added to the diagonal of every row's system.
    alpha: confidence scale for ``confidence="linear"``.
    iterations: full sweeps (users then items) done by ``fit``.
    solver: "cg" (``cg_steps`` conjugate-gradient steps from the previous vector) or
        "cholesky" (exact solve).
    cg_steps: CG steps per row and half-sweep under ``solver="cg"`` (default 3).
    dtype: float32 or float64: factors and all arithmetic.
    backend: "auto", "cuda", "cpu", "numba", "cupy" or "numpy" (see ``recfuse.backends()``).
    num_threads: CPU threads for native work; 0 uses all cores.
    random_state: seed (int) or ``numpy.random.Generator`` for the initial factors. The same
        seed, backend and SIMD level give the same factors, whatever the thread count; a
        Generator is drawn from (each fit advances it). Model files keep an int seed.
    confidence: "linear" (default: c = 1 + alpha * r, values must be >= 0) or "raw"
        (c = |r|, alpha unused; negative values mean "disliked").

    ``get_params``/``set_params`` follow scikit-learn's estimator protocol
    (``sklearn.base.clone`` works); see ``set_params`` for what it does to a fitted model.
    ``backend_used`` names the backend that ran the last ``fit`` (None on a model read
    by ``recfuse.load``, which ran none).

    >>> import recfuse, scipy.sparse as sp
    >>> user_items = sp.random(30, 20, density=0.2, format="csr", random_state=1)
    >>> model = recfuse.ALS(factors=4, iterations=2, random_state=0).fit(user_items)
    >>> ids, scores = model.recommend(0, k=3)
    >>> ids.shape, bool(scores[0] >= scores[1] >= scores[2])
    ((3,), True)
    """

    def __init__(
        self,
        factors: Integer = 64,
        regularization: float = 0.01,
        alpha: float = 1.0,
        iterations: Integer = 15,
        solver: str = "cg",
        cg_steps: Integer = 3,
        dtype: DTypeLike = np.float32,
        backend: str = "auto",
        num_threads: Integer = 0,
        random_state: RandomState = None,
        confidence: str = "linear",
    ) -> None:
        self.random_state: RandomState
        self._set_checked(dict(
            factors=factors, regularization=regularization, alpha=alpha, iterations=iterations,
            solver=solver, cg_steps=cg_steps, dtype=dtype, backend=backend,
            num_threads=num_threads, random_state=random_state, confidence=confidence))
        self._state = _State()
        self.backend_used: str | None = None
        self._lock = threading.Lock()  # serialises writers (fit, update_users/items, setters)
        self._recommend_cache: tuple | None = None  # (item factors, their ItemIndex)

    # ------------------------------------------------------------------ state
    # Each attribute reads the current snapshot; assigning one replaces the snapshot (the
    # item gram is dropped when the items change).
    @property
    def user_factors(self) -> np.ndarray | None:
        """The user vectors (users x factors; None before fit). Assigning one replaces the table."""
        return self._state.user_factors

    @user_factors.setter
    def user_factors(self, value) -> None:
        with self._lock:  # a writer: a fold-in under way must not drop the assignment
            self._state = replace(self._state, user_factors=value)

    @property
    def item_factors(self) -> np.ndarray | None:
        """The item vectors (items x factors; None before fit). Assigning one replaces the table."""
        return self._state.item_factors

    @item_factors.setter
    def item_factors(self, value) -> None:
        with self._lock:
            self._state = replace(self._state, item_factors=value, item_gram=None)

    @property
    def _user_items(self) -> sp.csr_matrix | None:
        return self._state.user_items

    @_user_items.setter
    def _user_items(self, value) -> None:
        with self._lock:
            self._state = replace(self._state, user_items=value)

    # ------------------------------------------------------------------ training
    @property
    def params(self) -> AlsParams:
        """The solver settings the backends' half-sweeps take."""
        return AlsParams(
            regularization=self.regularization,
            alpha=self.alpha,
            confidence=self.confidence,
            solver=self.solver,
            cg_steps=self.cg_steps,
            num_threads=self.num_threads,
        )

    def _starting_factors(self, n_users: int, n_items: int, given, table: Callable,
                          width: int) -> list[np.ndarray]:
        """[X, Y] to start a fit from, in new arrays of ``width`` >= k columns (zero past k)
        made by ``table(rows, cols, dtype)`` (the backend's factor_table: huge pages for the
        cpu backend, so no second copy is made): Normal(0, 0.01²) draws by counter
        (``reference.normal_table``; natively ~50 ms for 150k x 64 values with a cold
        allocation, where NumPy's generator took 135 ms), or ``given`` (a pair) checked and
        copied."""
        from .._sgd.common import normal_table

        k = self.factors
        if given is None:
            rng = np.random.default_rng(self.random_state)
            seeds = rng.integers(0, 2**63, size=2, dtype=np.int64)
            return [normal_table(int(seed), n, k, 0.0, 0.01, self.dtype,
                                 out=table(n, width, self.dtype), num_threads=self.num_threads)
                    for seed, n in zip(seeds, (n_users, n_items))]
        if not isinstance(given, (tuple, list)) or len(given) != 2:
            got = (f"{type(given).__name__} of {len(given)} arrays"  # as SVD's says it
                   if isinstance(given, (tuple, list)) else type(given).__name__)
            raise TypeError(f"initial_factors must be a pair (user_factors, item_factors), "
                            f"got {got}")
        X, Y = (check.check_factors(given[side], f"initial_factors[{side}]", dtype=self.dtype,
                                    n_cols=k, copy=False) for side in (0, 1))
        if X.shape[0] != n_users or Y.shape[0] != n_items:
            raise ValueError(
                f"initial_factors must have shapes ({n_users}, {k}) and ({n_items}, {k}), "
                f"got {X.shape} and {Y.shape}"
            )
        start = [table(n_users, width, self.dtype), table(n_items, width, self.dtype)]
        for out, values in zip(start, (X, Y)):
            out[:, :k], out[:, k:] = values, 0
        return start

    @keeps_generator_on_failure
    def fit(
        self,
        user_items: UserItems,
        *,
        show_progress: bool = False,
        callback: Callable[[int, float | None], None] | None = None,
        initial_factors: tuple[ArrayLike, ArrayLike] | None = None,
        compute_loss: bool = True,
    ) -> "ALS":
        """Train on a users x items CSR matrix (or a ``recfuse.Interactions``: its
        ``matrix``) and return self.

        ``callback(iteration, loss)`` is called after each iteration with the training
        loss of ``recfuse.reference.als_loss`` (computing it costs about one CG step; with
        ``compute_loss=False`` the callback gets None instead).
        ``initial_factors=(X, Y)`` starts from given factors instead of random ones.
        Users and items without a positive stored value (no entry, or only zeros; under
        ``confidence="raw"`` also negatives) end with zero vectors (their systems' exact
        solution, whatever the solver; with ``iterations=0`` the start is kept). On bad
        input nothing about the model changes.
        """
        self._check_settings()
        check_tables_fit(user_items, self.factors, np.dtype(self.dtype).itemsize)
        given = interaction_matrix(user_items)
        matrix = check.check_csr(given, "user_items", dtype=self.dtype,
                                 nonnegative=self.confidence == "linear")
        check_cg_confidences(matrix.data, self.params, self.dtype, *self._cg_refusal)
        n_users, n_items = matrix.shape
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable, got {type(callback).__name__}")
        show_progress = check.check_flag(show_progress, "show_progress")
        compute_loss = check.check_flag(compute_loss, "compute_loss")
        backend = resolve_backend(self.backend)
        params = self.params
        table = getattr(backend, "factor_table", None) or (lambda n, k, t: np.empty((n, k), t))
        # the width the backend trains at (cpu: padded to a width its kernels specialise),
        # where the start is drawn, so that no padded copy of it is made
        width = (backend.training_width(self.factors, params)
                 if hasattr(backend, "training_width") else self.factors)
        start = self._starting_factors(n_users, n_items, initial_factors, table, width)
        user_csr = CsrArrays.from_scipy(matrix, self.dtype)
        item_csr = user_csr.transpose()
        # The starting tables reach the trainer as their only references: a device trainer
        # that uploads them lets the host copies go for the rest of the fit.
        trainer = backend.make_trainer(user_csr, item_csr, start.pop(0), start.pop(0), params,
                                       **({"factors": self.factors} if width != self.factors
                                          else {}))
        progress = progress_bar(self.iterations, show_progress, f"ALS ({backend.NAME})")
        failed = 0
        try:
            for iteration in range(self.iterations):
                failed += trainer.sweep_users()
                failed += trainer.sweep_items()
                if callback is not None:
                    loss = None
                    if compute_loss:
                        X_now, Y_now = trainer.factors()
                        loss = normalised_loss(trainer.data_loss(), X_now, Y_now, user_csr, params)
                    callback(iteration, loss)
                progress.update(1)
        finally:
            progress.close()
        X, Y = getattr(trainer, "take_factors", trainer.factors)()
        wider = ", or use dtype=np.float64" if self.dtype == np.float32 else ""
        check_trained("ALS", (X, Y), f"lower alpha or regularization, or scale down the "
                      f"values of user_items{wider}")
        if self.iterations:
            # A row without a positive entry (none stored, or only stored zeros, or under
            # "raw" only values <= 0) has p = 0 throughout: its system's right-hand side is 0
            # and so is its solution, which the Cholesky solve gives and CG only approaches
            # (~1e-13): exact zeros keep such items tied at 0, in id order, rather than
            # ordered by rounding (and similar to nothing, not to whatever the noise points at).
            X[rows_without_positive(user_csr)] = 0
            Y[rows_without_positive(item_csr)] = 0
        self._report_failed_systems(failed)
        del trainer, user_csr, item_csr  # the seen matrix's copy takes the transpose's memory
        matrix = check.unshared_csr(matrix, given)
        with self._lock:
            self._state = _State(X, Y, matrix, None)
            self.backend_used = backend.NAME
        return self

    # what fit's refusal of confidences past the cg bound names: the values, and the advice
    # (recfuse.compat.implicit words both in its own terms)
    _cg_refusal = ("user_items' values", "lower alpha, or use solver='cholesky'")

    def _report_failed_systems(self, failed: int) -> None:
        """What fit does, before it keeps its result, about ``failed`` row systems that were
        not positive definite: warn (recfuse.compat.implicit raises, as implicit does)."""
        warn_failed_systems(failed, stacklevel=4, regularization=self.regularization,
                            dtype=self.dtype)

    def loss(self, user_items: UserItems | None = None) -> float:
        """The training loss (``recfuse.reference.als_loss``) of the current factors on
        ``user_items`` (a users x items CSR matrix or Interactions, one row per known user),
        by default the matrix the model was fitted on (the one ``filter_seen`` uses; a
        ValueError when the model keeps none)."""
        self._require_fitted()
        self._check_settings()  # e.g. a regularization assigned by hand, as fit does
        state = self._state
        # Assigned tables may be of any layout or dtype: the kernel takes C-order model dtype.
        X, Y = (check.check_factors(table, name, dtype=self.dtype, copy=False) for table, name
                in ((state.user_factors, "user_factors"), (state.item_factors, "item_factors")))
        matrix = self._seen_matrix(user_items, X.shape[0], state)
        backend = resolve_backend(self.backend)
        R = CsrArrays.from_scipy(matrix, self.dtype)
        return normalised_loss(backend.data_loss(R, X, Y, self.params), X, Y, R, self.params)

    def update_users(self, user_ids: ArrayLike, user_items: UserItems) -> np.ndarray:
        """Recompute the vectors of ``user_ids`` from their rows in ``user_items``, items fixed.

        This is the real-time fold-in: ``user_items`` has one row per id (n_items columns)
        and replaces what the model knows of those users. Ids beyond the known users add new
        users (rows in between start at zero). The model's solver is used: "cg" starts from
        each user's current vector (zero for a new user); a row without a positive value
        gets the zero vector, its exact solution, as in ``fit``. Returns the new vectors.

        Readers keep a consistent model meanwhile: the user table and the seen matrix are
        new arrays (a copy of each; about 8 ms for one user of a 100k x 50k, 5M-entry
        model). A serving process that folds events in one by one should use
        ``recfuse.Recommender.observe``, which changes only the users concerned.
        """
        return self._update_rows(user_ids, user_items, "user")

    def update_items(self, item_ids: ArrayLike,
                     item_users: sp.csr_matrix | sp.csr_array) -> np.ndarray:
        """Recompute the vectors of ``item_ids`` from their users, users fixed: the item side
        of ``update_users`` (implicit's ``partial_fit_items``), e.g. for an item added to
        the catalogue with its first interactions.

        ``item_users`` is a CSR matrix with one row per id (n_users columns), the items'
        columns of the training matrix: it replaces what the model knows of those items'
        users. Ids beyond the known items add new items (items in between get zero vectors
        and no users). The model's solver is used: "cg" starts from each item's current
        vector (zero for a new item); an item without a positive value gets the zero vector.
        Returns the new vectors. User vectors are not changed.

        Readers keep a consistent model meanwhile: the item table and the seen matrix are
        new arrays (a copy of each: 50-60 ms for one item of a 100k x 50k, 5M-entry model,
        against 12-14 ms for one user by ``update_users``).
        """
        return self._update_rows(item_ids, item_users, "item")

    def _update_rows(self, ids: ArrayLike, rows: Any, side: str) -> np.ndarray:
        """``update_users`` (side "user") or ``update_items`` ("item"): the rows of one side
        re-solved against the other side's fixed table, then installed as a new state."""
        self._require_fitted()
        self._check_settings()  # the solver settings assigned by hand, as fit does (no lock)
        other = "item" if side == "user" else "user"
        ids = check.check_ids(ids, f"{side}_ids", None, allow_new=True)
        if np.unique(ids).size != ids.size:
            raise ValueError(f"{side}_ids must not repeat an id")
        with self._lock:
            state = self._state
            users, items = assigned_tables(state.user_factors, state.item_factors)
            own_table, fixed = (users, items) if side == "user" else (items, users)
            kept = state.user_items
            own_axis, fixed_axis = (0, 1) if side == "user" else (1, 0)
            if kept is not None and (kept.shape[fixed_axis] != fixed.shape[0]
                                     or kept.shape[own_axis] > own_table.shape[0]):
                # the rows' indices (the fixed side's ids) would reach past that table, or
                # the seen matrix would keep entries of rows the grown table lacks: corrupt
                raise ValueError(
                    f"the seen matrix kept from training is {kept.shape[0]} users x "
                    f"{kept.shape[1]} items, the user and item tables have {users.shape[0]} "
                    f"and {items.shape[0]} rows (assigned by hand?): update_{side}s cannot "
                    f"update it; refit the model")
            # checked against the table of the state folded into: a fit that lands before
            # the lock may change it
            matrix = check.check_csr(
                interaction_matrix(rows) if side == "user" else rows, f"{side}_{other}s",
                dtype=self.dtype, n_rows=ids.size, n_cols=fixed.shape[0],
                nonnegative=self.confidence == "linear",
            )
            known = own_table.shape[0]
            width = own_table.shape[1]  # the model's factors, or the width assigned to both
            start = np.zeros((ids.size, width), dtype=self.dtype)
            old = ids < known
            start[old] = own_table[ids[old]]
            gram = state.item_gram if side == "user" else None
            if gram is None:  # in the dtype the fold-in solves in (a table assigned by
                # hand may be int8 or float16, whose own products wrap or overflow)
                gram = item_gram(fixed.astype(self.dtype, copy=False), self.num_threads)
            start = fold_in(self, fixed, matrix, start, gram)
            check_trained("the fold-in", (start,), f"scale down the values of {side}_{other}s")
            grown = max(known, int(ids.max()) + 1) if ids.size else known
            try:
                # a copy either way: readers keep a consistent old array
                factors = np.zeros((grown, width), dtype=self.dtype)
                factors[:known] = own_table
                factors[ids] = start
                seen = kept
                if seen is not None:
                    replace = _replace_rows if side == "user" else _replace_columns
                    seen = replace(seen, ids, matrix, grown)
            except (MemoryError, ValueError) as error:  # NumPy: "array is too big" past 2**63 B
                if isinstance(error, ValueError) and "too big" not in str(error):
                    raise
                raise ValueError(
                    f"{side}_ids reach {grown - 1}: the {side} table would grow from {known} to "
                    f"{grown} rows, more than can be allocated; new {side}s take the ids after "
                    f"the known ones") from None
            if side == "user":
                self._state = _State(factors, state.item_factors, seen, gram)
            else:
                self._state = _State(state.user_factors, factors, seen, None)
        return start

    # ------------------------------------------------------------------ retrieval
    def recommend(
        self,
        user_ids: ArrayLike,
        user_items: UserItems | None = None,
        k: Integer = 10,
        filter_seen: bool = True,
        items: ArrayLike | None = None,
        exclude_items: ArrayLike | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The k best items for one user (1-d results) or a batch of users (2-d results).

        Scores are x_u·y_i, descending, ties broken by smaller item id. ``filter_seen``
        drops the items in the user's row of ``user_items`` (a CSR matrix or Interactions,
        one row per requested user) or,
        when it is None, of the training matrix. ``items`` restricts the candidates to those
        ids; ``exclude_items`` removes ids for every user. Rows with fewer than k candidates
        are padded with id -1 and score -inf. Safe to call from many threads at once.
        """
        if isinstance(user_items, numbers.Integral) and not isinstance(user_items,
                                                                         (bool, np.bool_)):
            # recommend(user, 5): the other models' second argument is k, ALS's user_items
            raise TypeError(f"user_items must be a scipy.sparse CSR matrix or None, got int "
                            f"{user_items}: ALS.recommend's second argument is user_items (as "
                            f"in implicit); pass the list length as k={user_items}")
        self._require_fitted()
        state = self._state  # one consistent snapshot: factors and seen items together
        X, _ = assigned_tables(state.user_factors, state.item_factors)
        index = self._recommend_index(state)
        single = check.is_one_id(user_ids, "user_ids")
        ids = check.check_ids(user_ids, "user_ids", X.shape[0])
        k = check.check_k(k)
        filter_seen = check.check_flag(filter_seen, "filter_seen")
        seen = None
        if filter_seen:
            seen = (self._seen_matrix(None, X.shape[0], state)[ids] if user_items is None
                    else self._seen_matrix(user_items, ids.size, state))
        elif user_items is not None:  # unused, but a wrong one is a mistake to name
            self._seen_matrix(user_items, ids.size, state)
        n_items = index.shape[0]
        allow = None if items is None else check.check_ids(items, "items", n_items)
        deny = None if exclude_items is None else check.check_ids(exclude_items, "exclude_items",
                                                                  n_items)
        out_ids, out_scores = index.search(X[ids], k, exclude=seen, allow=allow, deny=deny,
                                           num_threads=self.num_threads)
        if single:
            return out_ids[0], out_scores[0]
        return out_ids, out_scores

    # ------------------------------------------------------------------ persistence
    def save(self, path: PathLike) -> None:
        """Write the model to ``path`` (a versioned .npz; no pickle). Atomic."""
        from ..persistence import save_model

        self._require_fitted()
        state = self._state  # one snapshot: a concurrent fold-in or fit must not tear the file
        seen = state.user_items
        # assigned tables are checked as load will check them: a clear error now, not a file
        # that cannot be loaded
        X, Y = saveable_tables(self, state.user_factors, state.item_factors,
                               None if seen is None else seen.shape)
        arrays = {"user_factors": X, "item_factors": Y}
        if seen is not None:
            arrays.update(
                seen_indptr=seen.indptr.astype(np.int64),
                seen_indices=seen.indices.astype(np.int32),
                seen_data=seen.data,
                seen_shape=np.array(seen.shape, dtype=np.int64),
            )
        save_model(path, "ALS", self._saved_params(), arrays)

    def _params(self) -> dict[str, Any]:
        """The constructor arguments (``get_params``)."""
        return {**settings_params(self), "random_state": param_seed(self.random_state)}

    def _checked_params(self, params: dict[str, Any]) -> dict[str, Any]:
        return {**checked_settings(params),
                "random_state": check.check_random_state(params["random_state"])}

    def _fit_shaped(self) -> dict[str, str]:
        if self.user_factors is None or self.item_factors is None:  # not fitted
            return {}
        return shaped_tables(self.factors)

    @classmethod
    def _from_saved(cls, params: dict, arrays: dict) -> "ALS":
        model = cls(**params)
        # No copy: arrays read with mmap=True stay mapped (writers replace, never mutate, them).
        X, Y = saved_factor_tables(model, arrays["user_factors"], arrays["item_factors"])
        seen = None
        if saved_group(arrays, ("seen_data", "seen_indices", "seen_indptr", "seen_shape"),
                       "the saved seen matrix"):
            seen = check.csr_from_arrays(
                arrays["seen_data"], arrays["seen_indices"], arrays["seen_indptr"],
                arrays["seen_shape"], "saved seen matrix", dtype=model.dtype,
                n_rows=X.shape[0], n_cols=Y.shape[0])
        model._state = _State(X, Y, seen, None)
        return model

    # ------------------------------------------------------------------ helpers
    def _require_fitted(self) -> None:
        if self.user_factors is None or self.item_factors is None:
            raise RuntimeError("the model is not fitted: call fit() or recfuse.load() first")

    def _similarity_table(self, side: str) -> np.ndarray:
        table = self._state.user_factors if side == "users" else self._state.item_factors
        assert table is not None  # callers run after _require_fitted
        return table

    _similarity_source = _similarity_table  # the factor array itself

    def _check_seen_items(self) -> None:
        X = self.user_factors
        assert X is not None  # recommend_all called _require_fitted
        self._seen_matrix(None, X.shape[0])

    def _recommend_index(self, state: _State) -> ItemIndex:
        """The dot-product index of ``state``'s item factors, rebuilt when they or the backend
        change (the backend is in the key: an index a racing first call built on the old one
        may land after set_params dropped the cache)."""
        cached, backend = self._recommend_cache, self.backend
        if cached is None or cached[0] is not state.item_factors or cached[1].backend != backend:
            assert state.item_factors is not None  # recommend called _require_fitted
            cached = (state.item_factors, ItemIndex(state.item_factors, backend=backend))
            self._recommend_cache = cached
        return cached[1]

    def _seen_matrix(self, user_items, n_rows, state: _State | None = None) -> sp.csr_matrix:
        state = self._state if state is None else state
        Y = state.item_factors
        assert Y is not None  # callers run after _require_fitted
        if user_items is None:
            if state.user_items is None:
                raise ValueError("pass user_items: the model keeps no training matrix "
                                 "(needed for filter_seen and loss)")
            return stored_seen(state.user_items, n_rows, Y.shape[0])
        return check.check_csr(interaction_matrix(user_items), "user_items", dtype=self.dtype,
                               n_rows=n_rows, n_cols=Y.shape[0])

    def __repr__(self) -> str:
        X, Y = self.user_factors, self.item_factors
        fitted = "" if X is None or Y is None else (
            f", fitted on {X.shape[0]} users x {Y.shape[0]} items")
        # settings assigned by hand are checked by the next fit: repr must survive any value
        solver, confidence = self.solver, self.confidence
        steps = f", cg_steps={self.cg_steps}" if isinstance(solver, str) and solver == "cg" \
            else ""
        raw = "" if isinstance(confidence, str) and confidence == "linear" else \
            f", confidence={confidence!r}"  # another model
        return (f"ALS(factors={self.factors}, regularization={self.regularization}, "
                f"alpha={self.alpha}, iterations={self.iterations}, solver={self.solver!r}"
                f"{steps}{raw}, dtype={dtype_text(self.dtype)}, backend={self.backend!r}"
                f"{fitted})")


def checked_settings(params: dict[str, Any]) -> dict[str, Any]:
    """ALS's settings in ``params`` (by name; recfuse.ALS and the distributed ALS models
    share them), checked: the attributes they set, the ``dtype`` a ``numpy.dtype``."""
    checked: dict[str, Any] = {
        "factors": check.check_int(params["factors"], "factors", minimum=1,
                                   maximum=MAX_FACTORS),
        "regularization": check.check_float(params["regularization"], "regularization",
                                            minimum=0.0),
        "alpha": check.check_float(params["alpha"], "alpha", minimum=0.0),
        "iterations": check.check_int(params["iterations"], "iterations", minimum=0),
        "solver": check.check_choice(params["solver"], "solver", ("cg", "cholesky")),
        "cg_steps": check.check_int(params["cg_steps"], "cg_steps", minimum=1),
        "dtype": check.check_float_dtype(params["dtype"]),
        "backend": check.check_backend(params["backend"]),
        "num_threads": check.check_threads(params["num_threads"]),
        "confidence": check.check_choice(params["confidence"], "confidence",
                                         ("linear", "raw")),
    }
    check.settings_fit_dtype(checked, ("regularization", "alpha"), checked["dtype"])
    return checked


def settings_params(model: AlsSettings) -> dict[str, Any]:
    """``model``'s ALS settings as ``get_params`` and model files give them (the ``dtype``
    by its name, interned: the same str object each time, as ``sklearn.base.clone`` checks)."""
    return {"factors": model.factors, "regularization": model.regularization,
            "alpha": model.alpha, "iterations": model.iterations, "solver": model.solver,
            "cg_steps": model.cg_steps, "dtype": param_dtype(model.dtype),
            "backend": model.backend, "num_threads": model.num_threads,
            "confidence": model.confidence}


def item_gram(item_factors: np.ndarray, num_threads: Integer = 0) -> np.ndarray:
    """YᵀY, the part of every user's system that does not depend on the user, in the table's
    dtype. Computed by the native kernel where the cpu backend is available: the gram a CPU
    fit's half-sweep makes for itself, each element summed over the rows in ascending order,
    so the same bits for any thread count. NumPy's product (the fallback) is not: OpenBLAS
    orders its sums by its own thread count (OMP_NUM_THREADS, OPENBLAS_NUM_THREADS), which
    made fold-ins differ in their last bits from one setting to another."""
    table = np.asarray(item_factors)
    num_threads = check.check_threads(num_threads)  # e.g. a model's, set after construction
    if table.dtype in (np.float32, np.float64):
        try:
            cpu = resolve_backend("cpu")
        except RuntimeError:  # not built, or RECFUSE_SIMD names a level this CPU lacks
            pass
        else:
            return cpu.gram(np.ascontiguousarray(table), num_threads)
    return table.T @ table


def fold_in(model: ALS, item_factors: np.ndarray, user_items, start: np.ndarray,
            gram: np.ndarray, *, num_threads: int | None = None) -> np.ndarray:
    """The real-time fold-in: the users' vectors re-solved against fixed items, as one user
    half-sweep of ``model`` (its solver, confidence and backend) and nothing else changed.

    ``user_items`` (users x items, canonical CSR in the model dtype: a scipy matrix or
    ``CsrArrays``) holds each user's whole row; ``item_factors`` may be any table whose rows
    the row ids index (a caller can pass only the rows a user touches, with its columns
    renumbered) as long as ``gram`` is YᵀY of the full item table. ``start`` (users x
    factors) is where "cg" starts (the cholesky solver ignores it). ``num_threads`` replaces
    the model's for this call (a few users solve faster on one thread than a team's start
    costs). A row without a positive value gets the zero vector, its exact solution, as
    in ``fit``. Returns the new vectors (a new array); a row that fails (a Cholesky system
    that is not positive definite, or CG steps that overflow: ``recfuse.reference``) is a
    ValueError (``fit`` keeps such a row's vector and warns: a fold-in would install the
    old vector with the new row).
    """
    vectors = np.array(start, dtype=model.dtype, order="C", copy=True)
    table = np.ascontiguousarray(item_factors, dtype=model.dtype)
    backend = resolve_backend(model.backend)
    rows = user_items if isinstance(user_items, CsrArrays) else \
        CsrArrays.from_scipy(user_items, model.dtype)
    check_cg_confidences(rows.data[:rows.nnz], model.params, model.dtype, "the rows' values")
    params = model.params if num_threads is None else replace(model.params,
                                                               num_threads=num_threads)
    # As in fit, a row without a positive entry solves to exactly 0 (CG from the current
    # vector would keep a shrunken copy of what the user no longer has): such rows are not
    # solved at all, so that their systems cannot fail the call either.
    zero = rows_without_positive(rows)
    some_zero = bool(zero.any())
    solved = np.ascontiguousarray(vectors[~zero]) if some_zero else vectors
    if some_zero:
        rows = CsrArrays.from_scipy(rows.to_scipy()[~zero], model.dtype)
    failed = backend.half_sweep(rows, table, solved, params,
                                gram=np.ascontiguousarray(gram, dtype=model.dtype))
    if failed:  # the solver kept those rows' old vectors: not what the rows say
        advice = failed_systems_advice(model.regularization, model.dtype, "the rows")
        raise ValueError(f"the fold-in diverged: {failed} row system(s) were not positive "
                         f"definite or overflowed {np.dtype(model.dtype).name}; {advice}; "
                         f"nothing was applied")
    if some_zero:
        vectors[~zero] = solved
        vectors[zero] = 0
    return vectors


def rows_without_positive(rows: CsrArrays) -> np.ndarray:
    """A boolean mask of the rows of ``rows`` that store no value > 0 (p = 0 throughout: their
    ALS solution is the zero vector, whatever the confidences)."""
    indptr = rows.indptr
    positive = rows.data[:rows.nnz] > 0
    if positive.all():  # the common case: only the rows without entries
        return np.diff(indptr) == 0
    before = np.zeros(positive.size + 1, np.int64)  # positive entries before each position
    np.cumsum(positive, out=before[1:])
    return before[indptr[1:]] == before[indptr[:-1]]


def _replace_columns(matrix: sp.csr_matrix, ids: np.ndarray, columns: sp.csr_matrix,
                     n_cols: int) -> sp.csr_matrix:
    """``matrix`` grown to n_cols with the columns ``ids`` (no id twice) replaced by the rows
    of ``columns`` (one per id, ``matrix``'s rows as its columns): a new matrix, indices
    sorted, stored zeros kept. The new entries are merged into the kept ones by their
    (row, column) keys, in a few passes over the entries whatever the number of rows
    changed (~70 ms at 5M entries, where a transpose there and back took ~130 ms and a
    loop over the changed rows 30 µs a row)."""
    n_rows, old_cols = matrix.shape
    indptr, indices, data = matrix.indptr, matrix.indices, matrix.data
    replaced = np.zeros(max(old_cols, 1), dtype=bool)
    replaced[ids[ids < old_cols]] = True
    keep = ~replaced[indices]
    dropped = np.flatnonzero(~keep)
    counts = np.diff(indptr).astype(np.int64)  # kept entries per row
    np.subtract.at(counts, np.searchsorted(indptr, dropped, side="right") - 1, 1)
    kept_cols = indices[keep] if dropped.size else indices
    kept_data = data[keep] if dropped.size else data
    gained = columns.T.tocoo()  # matrix rows x positions in ids
    new_rows, new_cols, new_data = gained.row.astype(np.int64), ids[gained.col], gained.data
    order = np.lexsort((new_cols, new_rows))
    new_rows, new_cols, new_data = new_rows[order], new_cols[order], new_data[order]
    # where each new entry goes among the kept ones (their keys ascend, as CSR's entries do);
    # a column past the old ones follows its row's kept entries: keys of old_cols + 1
    # columns, which row * n_cols would overflow for an id near 2**63 / n_rows
    kept_rows = np.repeat(np.arange(n_rows, dtype=np.int64), counts)
    width = old_cols + 1
    at = np.searchsorted(kept_rows * width + kept_cols,
                         new_rows * width + np.minimum(new_cols, old_cols))
    counts += np.bincount(new_rows, minlength=n_rows)
    out_indptr = np.zeros(n_rows + 1, np.int64)
    np.cumsum(counts, out=out_indptr[1:])
    is_new = np.zeros(out_indptr[-1], dtype=bool)
    is_new[at + np.arange(at.size)] = True
    # int64 for ids past int32 (update_items takes any id), not wrapped to negative ones
    wide = n_cols - 1 > np.iinfo(indices.dtype).max
    out_indices = np.empty(out_indptr[-1], np.int64 if wide else indices.dtype)
    out_data = np.empty(out_indptr[-1], data.dtype)
    out_indices[is_new], out_data[is_new] = new_cols, new_data
    out_indices[~is_new], out_data[~is_new] = kept_cols, kept_data
    return sp.csr_matrix((out_data, out_indices, out_indptr), shape=(n_rows, n_cols))


def _replace_rows(matrix: sp.csr_matrix, ids: np.ndarray, rows: sp.csr_matrix, n_rows: int):
    """``matrix`` grown to n_rows with the rows ``ids`` (no id twice) replaced by ``rows``: a
    new matrix that keeps every stored entry of the other rows (a stored zero still counts
    as seen). The kept rows between two replaced ones are one run of entries, copied whole
    (a fold-in of one user into 5M entries: 80 ms by per-entry index arithmetic)."""
    old_rows, old_indptr = matrix.shape[0], matrix.indptr
    counts = np.zeros(n_rows, np.int64)
    counts[:old_rows] = np.diff(old_indptr)
    counts[ids] = np.diff(rows.indptr)
    indptr = np.zeros(n_rows + 1, np.int64)
    np.cumsum(counts, out=indptr[1:])
    indices = np.empty(indptr[-1], matrix.indices.dtype)
    data = np.empty(indptr[-1], matrix.dtype)

    def place(target: int, source_indices, source_data) -> None:
        indices[target:target + source_indices.size] = source_indices
        data[target:target + source_data.size] = source_data

    first = 0  # the first row of the current run of kept rows
    for replaced in [*np.sort(ids).tolist(), n_rows]:
        end = min(replaced, old_rows)
        if end > first:
            begin, stop = old_indptr[first], old_indptr[end]
            place(indptr[first], matrix.indices[begin:stop], matrix.data[begin:stop])
        first = replaced + 1
    for position, row in enumerate(ids.tolist()):
        begin, stop = rows.indptr[position], rows.indptr[position + 1]
        place(indptr[row], rows.indices[begin:stop], rows.data[begin:stop])
    return sp.csr_matrix((data, indices, indptr), shape=(n_rows, matrix.shape[1]))

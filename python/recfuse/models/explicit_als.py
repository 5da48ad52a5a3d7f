"""Alternating least squares for explicit ratings with weighted-λ regularisation (ALS-WR).

A separate class rather than ``ALS(feedback="explicit")``: ``recfuse.ALS`` is the implicit
model of Hu, Koren and Volinsky. It takes a users x items matrix of interaction counts,
turns them into confidences (alpha, ``confidence=``), scores every unobserved pair as a 0
preference, and its CG solver and loss are built around that. Explicit ALS fits only the
observed ratings, predicts ratings (global mean and biases, clipping to the rating scale,
Surprise's fallbacks for unknown ids) and is fit like ``recfuse.SVD`` from (users, items,
ratings). It shares the fit/predict/recommend/save API of SVD, so it is a drop-in solver
without a learning rate for ``SVD`` users, not an option that would switch off half of
``ALS``'s parameters.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import replace
from typing import Any, Callable

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from .. import _validation as check
from .._als.common import CsrArrays
from .._backend import resolve_backend
from .._sgd.common import Pattern
from ._common import (check_start_fits, check_trained, dtype_text, keeps_generator_on_failure,
                      param_dtype, param_seed, progress_bar)
from .sgd import MAX_FACTORS, _RatingModel, _rmse, mean_of
from .._typing import Integer, RandomState, SparseMatrix
from ..interactions import Interactions


class ExplicitALS(_RatingModel):
    """ALS for ratings (Zhou et al. 2008, weighted-λ regularisation), optionally with biases:
    r̂_ui = μ + b_u + b_i + x_u·y_i.

    Each iteration re-solves every user exactly with the items fixed, then every item with
    the users fixed (``recfuse.reference.explicit_als_half_sweep``); a user with n_u ratings
    minimises Σ_i (r_ui − μ − b_i − b_u − x_u·y_i)² + n_u (reg ‖x_u‖² + reg_bias b_u²). There
    is no learning rate: each step is the exact minimiser for its half, so the training
    loss never increases.

    Parameters
    ----------
    factors: size k of the latent vectors.
    iterations: sweeps (users then items) done by ``fit``.
    reg: λ, scaled per row by its number of ratings (weighted-λ).
    biased: fit μ, b_u and b_i (True) or predict x_u·y_i alone (False).
    reg_bias: λ for the biases (None: ``reg``).
    init_std: the item factors start ~ Normal(0, init_std) (the users are solved first).
    dtype: float32 (default) or float64, for the factors and all arithmetic.
    backend: "auto", "cpu", "numba", "cupy" or "numpy" (``recfuse.backends("sgd")``).
    num_threads: CPU threads; 0 uses all cores. Results do not depend on it (every row is
        solved independently).
    random_state: seed (int) or ``numpy.random.Generator`` for the initial factors.

    ``predict``, ``recommend`` (through ``recfuse.topk``, bias-aware), ``save``,
    ``get_params``/``set_params`` (scikit-learn's estimator protocol), ``backend_used``
    and unknown-id handling are those of ``recfuse.SVD``.

    >>> import numpy as np, recfuse
    >>> rng = np.random.default_rng(0)
    >>> users, items = rng.integers(0, 50, 2000), rng.integers(0, 40, 2000)
    >>> model = recfuse.ExplicitALS(factors=8, iterations=5, random_state=0)
    >>> 1 <= model.fit(users, items, rng.integers(1, 6, 2000)).predict(3, 7) <= 5
    True
    """

    _NAME = "ExplicitALS"
    _FACTOR_NAMES = ("user_factors", "item_factors")
    # the constructor's settings, as it checks and sets them (_checked_params)
    iterations: int
    reg: float
    biased: bool
    reg_bias: float | None
    init_std: float
    backend: str
    num_threads: int
    random_state: RandomState

    def __init__(
        self,
        factors: Integer = 32,
        iterations: Integer = 15,
        reg: float = 0.1,
        biased: bool = True,
        reg_bias: float | None = None,
        init_std: float = 0.1,
        dtype: DTypeLike = np.float32,
        backend: str = "auto",
        num_threads: Integer = 0,
        random_state: RandomState = None,
    ) -> None:
        self._set_checked(dict(
            factors=factors, iterations=iterations, reg=reg, biased=biased, reg_bias=reg_bias,
            init_std=init_std, dtype=dtype, backend=backend, num_threads=num_threads,
            random_state=random_state))
        self.backend_used: str | None = None
        self._fitted = None
        self._lock = threading.Lock()

    def _params(self) -> dict[str, Any]:
        """The constructor arguments (``get_params``)."""
        return {
            "factors": self.factors, "iterations": self.iterations, "reg": self.reg,
            "biased": self.biased, "reg_bias": self.reg_bias, "init_std": self.init_std,
            "dtype": param_dtype(self.dtype), "backend": self.backend,
            "num_threads": self.num_threads, "random_state": param_seed(self.random_state),
        }

    def _checked_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """The constructor's checks: the attributes ``params`` set."""
        biased, reg_bias = params["biased"], params["reg_bias"]
        checked: dict[str, Any] = {
            "factors": check.check_int(params["factors"], "factors", minimum=1,
                                       maximum=MAX_FACTORS),
            "iterations": check.check_int(params["iterations"], "iterations", minimum=0),
            "reg": check.check_float(params["reg"], "reg", minimum=0.0, strict=True)}
        if not isinstance(biased, (bool, np.bool_)):
            raise TypeError(f"biased must be a bool, got {type(biased).__name__}")
        checked.update(
            biased=bool(biased),
            reg_bias=None if reg_bias is None else check.check_float(reg_bias, "reg_bias",
                                                                     minimum=0.0),
            init_std=check_start_fits(0.0, params["init_std"], params["dtype"]),
            dtype=check.check_float_dtype(params["dtype"]),
            backend=check.check_backend(params["backend"]),
            num_threads=check.check_threads(params["num_threads"]),
            random_state=check.check_random_state(params["random_state"]))
        check.settings_fit_dtype(checked, ("reg", "reg_bias"), checked["dtype"])
        return checked

    @property
    def bias_reg(self) -> float:
        """The regularization of the biases: ``reg_bias``, or ``reg`` when it is None."""
        return self.reg if self.reg_bias is None else self.reg_bias

    def _factor_count(self) -> int:
        return 2

    @keeps_generator_on_failure
    def fit(
        self,
        users: ArrayLike | SparseMatrix | Interactions,
        items: ArrayLike | None = None,
        ratings: ArrayLike | None = None,
        *,
        rating_scale: tuple[float, float] | None = None,
        n_users: Integer | None = None,
        n_items: Integer | None = None,
        show_progress: bool = False,
        callback: Callable[[int, float], None] | None = None,
        initial_factors: tuple[ArrayLike, ArrayLike] | None = None,
    ) -> "ExplicitALS":
        """Train on ratings (users[t], items[t], ratings[t]) and return self.

        Arguments as for ``SVD.fit`` (which also takes one sparse matrix or ``Interactions``
        of ratings): ``rating_scale`` rejects ratings outside it and bounds
        ``predict(clip=True)``; ``n_users``/``n_items`` may declare more ids than appear;
        repeated (user, item) pairs each count as one more rating. ``callback(iteration,
        rmse)`` gets the training RMSE after each iteration; ``initial_factors=(X, Y)``
        replaces the random start (only Y matters: the users are solved first). On bad input
        the model is left as it was. Ratings whose normal equations could overflow (max
        |rating|² x the most ratings of one user or item above the dtype's largest value:
        float32's 3.4e38, |ratings| above ~1.8e19, less for long rows; float64's 1.8e308)
        are refused with a ValueError: fit them with ``dtype=np.float64`` or rescale them.
        Ratings of widely different magnitudes make the systems ill-conditioned well below
        that bound (in float32, one rating of 1e5 among ratings of 1 already can): a fit
        that warns of rows "not positive definite" wants rescaled ratings.
        """
        self._check_settings()
        users, items, values, scale, n_users, n_items = self._fit_arguments(
            users, items, ratings, rating_scale, n_users, n_items, callback, show_progress)
        by_user = _ratings_csr(users, items, values, n_users, n_items, self.dtype)
        by_item = _ratings_csr(items, users, values, n_items, n_users, self.dtype)
        _check_sums_fit(values, by_user, by_item, self.dtype,
                        None if initial_factors is not None else self.init_std)
        backend = resolve_backend(self.backend, "sgd", needs="explicit_als_half_sweep")
        # drawn once every check has passed: a refused fit leaves a Generator where it was
        rng = np.random.default_rng(self.random_state)
        X, Y = self._initial_factors(rng, n_users, n_items, initial_factors)
        global_mean = mean_of(values)  # unbiased: only the fallback for unknown ids
        kernel_mean = global_mean if self.biased else 0.0
        user_bias = np.zeros(n_users, dtype=self.dtype) if self.biased else None
        item_bias = np.zeros(n_items, dtype=self.dtype) if self.biased else None
        reg_bias = self.bias_reg
        seen = Pattern.from_pairs(users, items, n_users, n_items)
        progress = progress_bar(self.iterations, show_progress, f"ExplicitALS ({backend.NAME})")
        failed = 0
        try:
            for iteration in range(self.iterations):
                failed += backend.explicit_als_half_sweep(by_user, Y, X, item_bias, user_bias,
                                                          kernel_mean, self.reg, reg_bias,
                                                          self.num_threads)
                failed += backend.explicit_als_half_sweep(by_item, X, Y, user_bias, item_bias,
                                                          kernel_mean, self.reg, reg_bias,
                                                          self.num_threads)
                if callback is not None:
                    state = self._snapshot(global_mean, user_bias, item_bias, X, Y, seen, users,
                                           items, n_users, n_items, scale)
                    callback(iteration, _rmse(state, users, items, values))
                progress.update(1)
        finally:
            progress.close()
        if failed:
            warnings.warn(f"{failed} row systems were not positive definite or overflowed "
                          f"{self.dtype.name} and kept their previous values", RuntimeWarning,
                          stacklevel=check.caller_stacklevel())
        fitted = replace(self._snapshot(global_mean, user_bias, item_bias, X, Y, seen, users,
                                        items, n_users, n_items, scale),
                         ratings=(by_user.indptr, by_user.indices, by_user.data))
        check_trained("ExplicitALS", (X, Y, user_bias, item_bias),
                      "raise regularization or scale down the ratings")
        with self._lock:
            self._fitted = fitted
            self.backend_used = backend.NAME
        return self

    def _snapshot(self, global_mean, user_bias, item_bias, X, Y, seen, users, items, n_users,
                  n_items, scale):
        if not self.biased:  # the state keeps zero biases; predict ignores them when unbiased
            user_bias = np.zeros(n_users, dtype=self.dtype)
            item_bias = np.zeros(n_items, dtype=self.dtype)
        return self._state(global_mean, user_bias, item_bias, [X, Y], seen, users, items,
                           n_users, n_items, scale)

    def __repr__(self) -> str:
        state = self._fitted
        fitted = "" if state is None else (
            f", fitted on {state.user_counts.size} users x {state.item_counts.size} items")
        return (f"ExplicitALS(factors={self.factors}, iterations={self.iterations}, "
                f"reg={self.reg}, biased={self.biased}, dtype={dtype_text(self.dtype)}, "
                f"backend={self.backend!r}{fitted})")


def _check_sums_fit(values, by_user, by_item, dtype, init_std: float | None) -> None:
    """Refuse float32 ratings whose normal equations could overflow. A row's system sums
    products of its ratings and the other side's factors, which grow like the ratings: up to
    about max|r|² x the row's length. Past float32's largest value the solves fail (the rows
    keep their values, counted: "not positive definite or overflowed"). On the cpu backend the first failures
    were at max|r| ≈ 1.8e19 = √3.4e38 for short rows, down to 7.5e17 for rows of 20,000
    unbiased ratings of one sign; the bound max|r|² x (longest row or column) <= 3.4e38 was
    5x to 50x below them in max|r|. Backend-independent: the numpy backend, which solves in
    float64, is refused as well. The first half-sweep's systems sum the drawn starting
    factors' products likewise (draws reach ~6 ``init_std``; None: the start is given)."""
    longest = int(max(np.diff(by_user.indptr).max(initial=0),
                      np.diff(by_item.indptr).max(initial=0)))
    largest = float(np.finfo(dtype).max)
    if init_std is not None and (6 * init_std) ** 2 * longest > largest:
        raise ValueError(f"init_std is too large for dtype={np.dtype(dtype).name}: the first "
                         f"normal equations sum up to (6 init_std)² x the most ratings of one "
                         f"user or item ({longest}), more than its largest value "
                         f"{largest:.3g}; use init_std <= {np.sqrt(largest / longest) / 6:.3g}, "
                         f"got {init_std}")
    check_ratings_fit(float(np.abs(values).max(initial=0.0)), longest, dtype)


def check_ratings_fit(top: float, longest: int, dtype) -> None:
    """Refuse ratings of largest magnitude ``top`` in rows or columns of up to ``longest``
    ratings where normal equations in ``dtype`` could overflow (``_check_sums_fit``)."""
    dtype = np.dtype(dtype)
    largest = float(np.finfo(dtype).max)
    product = top * top * longest  # Python floats: inf past float64's range, no error
    if product > largest:
        advice = "use dtype=np.float64 or rescale" if dtype == np.float32 else "rescale"
        total = f"{product:.3g}" if np.isfinite(product) else "past float64's range"
        raise ValueError(f"ratings are too large for dtype={dtype.name}: the normal equations "
                         f"sum up to max|ratings|² x the most ratings of one user or item "
                         f"({top:.3g}² x {longest} = {total}), more than "
                         f"{dtype.name}'s largest value {largest:.3g}; {advice} the ratings "
                         f"(max|ratings| <= {np.sqrt(largest / longest):.3g} here)")


def _ratings_csr(rows, cols, values, n_rows: int, n_cols: int, dtype) -> CsrArrays:
    """Ratings as CSR (rows x cols), columns ascending within a row, repeated pairs kept."""
    order = np.lexsort((cols, rows))
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_rows), out=indptr[1:])
    return CsrArrays(indptr, np.ascontiguousarray(cols[order], dtype=np.int32),
                     np.ascontiguousarray(values[order], dtype=dtype), (n_rows, n_cols))

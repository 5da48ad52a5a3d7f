"""Explicit-feedback matrix factorization by SGD: Funk SVD and SVD++ with Surprise's rules.

The update rules, defaults and initialisation follow Surprise (``surprise.SVD`` and
``surprise.SVDpp``), so results are comparable; ``recfuse.reference`` states each epoch.
What differs is the order of the ratings within an epoch: they are cut into a grid of
blocks that share no user and no item (FPSGD), so threads can run the blocks of one
diagonal at once without races. Results depend on the seed and the grid, never on the
thread count. ``grid=1, shuffle=False`` is plain sequential SGD over the ratings in the
order given, which is Surprise's own order when they come from ``Trainset.all_ratings()``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from typing import Any, Callable, overload

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from .. import _validation as check
from .._backend import resolve_backend
from .._sgd.common import (EpochThreads, PairsPattern, Pattern, default_grid, in_id_order,
                           make_blocks, normal_table, normal_training_rows,
                           trained_rows_in_id_order, training_rows, user_major_order)
from ..retrieval import ItemIndex, by_score_then_id
from ._common import (EstimatorParams, FactorRetrieval, check_start_fits, check_trained,
                      dtype_text, keeps_generator_on_failure, param_dtype, param_seed,
                      progress_bar, rating_arrays, saved_factor_tables, saved_group, seen_rows,
                      shaped_tables)
from .._typing import Integer, PathLike, RandomState, Self, SparseMatrix, UserItems
from ..interactions import Interactions

MAX_FACTORS = 4096


def mean_of(values: np.ndarray) -> float:
    """The mean of finite float64 ``values``, finite whatever their size: ``values.mean()``
    sums first, and ratings near float64's largest (1e308) overflow that sum to inf (or to
    NaN with both signs), a global mean that would make every prediction inf or NaN."""
    with np.errstate(over="ignore", invalid="ignore"):
        mean = float(values.mean())
    if not np.isfinite(mean):  # divided by the largest magnitude first: the sum fits
        scale = float(np.abs(values).max())
        mean = float((values / scale).mean()) * scale
    return mean


@dataclass(frozen=True)
class _Fitted:
    """Everything fit learns; replaced as a whole so readers always see one consistent model."""

    global_mean: float
    user_bias: np.ndarray
    item_bias: np.ndarray
    user_factors: np.ndarray
    item_factors: np.ndarray
    implicit_factors: np.ndarray | None  # SVD++ only: y_j
    user_implicit: np.ndarray | None  # SVD++ only: z_u = |N(u)|^(-1/2) Σ_{j∈N(u)} y_j
    user_counts: np.ndarray  # training ratings per user; 0 means unknown
    item_counts: np.ndarray
    seen: Pattern | PairsPattern  # the items each user rated (N(u)); for SVD++ and filter_seen
    rating_scale: tuple[float, float]
    biased: bool = True  # False: r̂ = q·p for known pairs, the global mean otherwise
    # ExplicitALS: every training rating by user, repeated pairs kept, as (indptr int64,
    # indices int32, values): what recfuse.Recommender re-solves a user over (training
    # ratings plus observed ones). None for the SGD models.
    ratings: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None


class _RatingModel(EstimatorParams, FactorRetrieval):
    """What every rating model shares (SVD, SVDpp, ExplicitALS): the fitted state, predict,
    recommend (and recommend_all, similar_items, similar_users), save/load and
    get_params/set_params. Subclasses set ``_NAME``, ``factors``, ``dtype``, ``backend``,
    ``num_threads``, ``random_state``, ``_fitted`` and ``_lock``, give ``_params`` and
    ``_checked_params`` (``EstimatorParams``), and say how many factor tables they keep."""

    _NAME = ""
    factors: int
    dtype: np.dtype
    random_state: RandomState
    _fitted: _Fitted | None
    # (state, ItemIndex, seen matrix) for recommend, built from one fitted state on first use.
    _retrieval_cache: tuple | None = None
    _ties_cache: tuple | None = None  # (state, an all-zero ItemIndex): unbiased cold users
    # A fit that diverges (NaN or inf) raises; compat.surprise turns this off, as Surprise
    # keeps such a model.
    _refuse_divergence = True

    init_mean = 0.0  # the factors' starting mean (SVD and SVD++ take it as a parameter)
    # names in initial_factors; the first _factor_count()
    _FACTOR_NAMES: tuple[str, ...] = ("P", "Q", "Y")

    def _factor_count(self) -> int:
        raise NotImplementedError

    @staticmethod
    def _count(value, name, ids) -> int:
        needed = int(ids.max()) + 1 if ids.size else 0
        if value is None:
            return needed
        value = check.check_int(value, name, minimum=needed)
        return value

    def _fit_arguments(self, users, items, ratings, rating_scale, n_users, n_items, callback,
                       show_progress
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, float], int,
                                  int]:
        """fit's checks: (users, items, values, scale, n_users, n_items)."""
        users, items, ratings, n_users, n_items = rating_arrays(users, items, ratings, n_users,
                                                                n_items)
        users, items, values, scale = check.check_ratings(users, items, ratings, rating_scale,
                                                          self.dtype)
        if values.size == 0:
            raise ValueError("fit needs at least one rating, got none")
        n_users = self._count(n_users, "n_users", users)
        n_items = self._count(n_items, "n_items", items)
        # the tables of every user and item (factors, bias, counts, seen row pointers): a
        # declared size far beyond the data is refused here, not by the allocator mid-fit
        factor_bytes = self.factors * np.dtype(self.dtype).itemsize
        check.check_counts_fit((n_users, "n_users", factor_bytes + 32),
                               (n_items, "n_items", (self._factor_count() - 1) * factor_bytes
                                + 32))
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable, got {type(callback).__name__}")
        check.check_flag(show_progress, "show_progress")
        return users, items, values, scale, n_users, n_items

    def _initial_factors(self, rng, n_users, n_items, given):
        """The starting factor tables: ``given`` (checked) or drawn with seeds from ``rng``
        (Surprise's initialisation: every factor ~ Normal(init_mean, init_std); the draws are
        ``reference.normal_table``'s)."""
        names = self._FACTOR_NAMES[: self._factor_count()]
        rows = (n_users, n_items, n_items)
        if given is None:
            return [normal_table(seed, r, self.factors, self.init_mean, self.init_std, self.dtype,
                                 num_threads=self.num_threads)
                    for seed, r in zip(_factor_seeds(rng, len(names)), rows)]
        if not isinstance(given, (tuple, list)) or len(given) != len(names):
            got = (f"{type(given).__name__} of {len(given)} arrays"
                   if isinstance(given, (tuple, list)) else type(given).__name__)
            raise TypeError(f"initial_factors must be a tuple {names}, got {got}")
        out = [check.check_factors(array, f"initial_factors {name}", dtype=self.dtype,
                                   n_cols=self.factors) for name, array in zip(names, given)]
        expected = [(r, self.factors) for r in rows[: len(names)]]
        if [array.shape for array in out] != expected:
            raise ValueError(f"initial_factors {names} must have shapes {expected}, got "
                             f"{[array.shape for array in out]}")
        return out

    # ------------------------------------------------------------------ prediction
    @overload
    def predict(self, users: Integer, items: Integer, clip: bool = True) -> float: ...

    @overload
    def predict(self, users: ArrayLike, items: ArrayLike, clip: bool = True) -> np.ndarray: ...

    def predict(self, users: ArrayLike, items: ArrayLike, clip: bool = True
                ) -> float | np.ndarray:
        """Predicted ratings for pairs (users[t], items[t]); a float for one pair.

        Unknown ids (beyond the training ids, or without training ratings) fall back as in
        Surprise: the global mean, plus the bias of whichever of user and item is known; the
        factor term only when both are. ``clip`` (a bool) bounds the result by the rating
        scale.
        """
        state = self._require_fitted()
        clip = check.check_flag(clip, "clip")
        single = check.is_one_id(users, "users") and check.is_one_id(items, "items")
        u = check.check_ids(users, "users", None, allow_new=True)
        i = check.check_ids(items, "items", None, allow_new=True)
        if u.size != i.size:
            raise ValueError(f"users and items must have the same length, got {u.size} and {i.size}")
        estimate = _estimate(state, u, i)
        if clip:
            estimate = np.clip(estimate, *state.rating_scale)
        return float(estimate[0]) if single else estimate

    def recommend(self, user_ids: ArrayLike, k: Integer = 10, filter_seen: bool = True,
                  items: ArrayLike | None = None, exclude_items: ArrayLike | None = None, *,
                  user_items: UserItems | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The k items with the highest predicted rating for one user (1-d results) or a
        batch (2-d). Scores are unclipped predicted ratings; ties by smaller item id.
        ``filter_seen`` drops the items the user rated in training, or those in the user's
        row of ``user_items`` (a CSR matrix or Interactions, one row per requested user) when
        it is given; ``items`` restricts the candidates, ``exclude_items`` removes ids. Rows
        are padded with -1 / -inf."""
        state = self._require_fitted()
        n_users, n_items = state.user_counts.size, state.item_counts.size
        single = check.is_one_id(user_ids, "user_ids")
        ids = check.check_ids(user_ids, "user_ids", n_users)
        k = check.check_k(k)
        filter_seen = check.check_flag(filter_seen, "filter_seen")
        allow = None if items is None else check.check_ids(items, "items", n_items)
        deny = None if exclude_items is None else check.check_ids(exclude_items,
                                                                  "exclude_items", n_items)
        index, seen_all = self._retrieval(state)
        seen = None
        if filter_seen:
            seen = (seen_all[ids] if user_items is None
                    else seen_rows(user_items, ids.size, n_items))
        elif user_items is not None:  # unused, but a wrong one is a mistake to name
            seen_rows(user_items, ids.size, n_items)
        known_user = state.user_counts[ids] > 0
        queries = _user_vectors(state, ids) * known_user[:, None]
        if state.biased:
            offsets = state.global_mean + np.where(known_user, state.user_bias[ids],
                                                   0).astype(np.float64)
        else:
            offsets = np.where(known_user, 0.0, state.global_mean)
        # The offsets (added in float64, as recfuse.Recommender does) can round scores that
        # were apart to a tie, which may reach past the k-th: the search takes one more, and
        # more while a row's last candidate still ties with its k-th (rounding keeps the
        # order, so ties after it are a run), then the candidates go in order again.
        fetched = k + 1 if k < n_items else k
        while True:
            out_ids, out_scores = index.search(queries, fetched, exclude=seen, allow=allow,
                                               deny=deny, num_threads=self.num_threads)
            if not state.biased and not known_user.all():
                self._unknown_users_tie(state, ~known_user, fetched, seen, allow, deny,
                                        out_ids, out_scores)
            out_scores = (out_scores + offsets[:, None]).astype(out_scores.dtype)
            last, kth = out_scores[:, fetched - 1], out_scores[:, k - 1]
            if fetched == k or fetched == n_items or not ((last == kth) & (kth > -np.inf)).any():
                break
            fetched = min(2 * fetched, n_items)
        out_ids, out_scores = by_score_then_id(out_ids, out_scores)
        out_ids, out_scores = out_ids[:, :k], out_scores[:, :k]
        if single:
            return out_ids[0], out_scores[0]
        return out_ids, out_scores

    def _unknown_users_tie(self, state: _Fitted, unknown, k, seen, allow, deny, out_ids,
                           out_scores) -> None:
        """Unbiased models predict μ for every item of a user without training ratings: such
        rows are ties, in id order, written into the results (before the offset μ is added)."""
        rows = np.flatnonzero(unknown)
        cached, backend = self._ties_cache, self.backend
        if cached is None or cached[0] is not state or cached[1].backend != backend:
            zeros = np.zeros((state.item_counts.size, 1), self.dtype)  # every score 0: id order
            cached = self._ties_cache = (state, ItemIndex(zeros, backend=backend))
        ids, scores = cached[1].search(
            np.zeros((rows.size, 1), self.dtype), k, exclude=None if seen is None else seen[rows],
            allow=allow, deny=deny, num_threads=self.num_threads)
        out_ids[rows], out_scores[rows] = ids, scores

    def _retrieval(self, state: _Fitted):
        """(ItemIndex of the known items' factors and the seen matrix) of ``state``: built once
        per fit, not once per recommend call. The index's item bias is the part of a
        prediction that depends on the item alone: b_i for known items (biased models), μ for
        items without training ratings (unbiased models, whose known users' scores are then
        q_i·p_u or μ). Rebuilt when the backend changed."""
        cached, backend = self._retrieval_cache, self.backend
        if cached is None or cached[0] is not state or cached[1].backend != backend:
            known_item = state.item_counts > 0
            if state.biased:
                item_bias = np.where(known_item, state.item_bias, 0)
            else:
                item_bias = np.where(known_item, 0, state.global_mean).astype(self.dtype)
            index = ItemIndex(state.item_factors * known_item[:, None], item_bias=item_bias,
                              backend=backend)
            cached = (state, index, state.seen.to_scipy(known_item.size))
            self._retrieval_cache = cached
        return cached[1], cached[2]

    def _similarity_source(self, side: str) -> _Fitted | None:
        return self._fitted  # a fit replaces the whole state

    def _similarity_table(self, side: str) -> np.ndarray:
        """The vectors similar_users / similar_items compare: a user's as recommend scores
        with (SVD++: p_u plus its implicit term), zero for ids without training ratings
        (their factors are only the random start)."""
        state = self._require_fitted()
        if side == "users":
            return _user_vectors(state) * (state.user_counts > 0)[:, None]
        return state.item_factors * (state.item_counts > 0)[:, None]

    # ------------------------------------------------------------------ state access
    def _require_fitted(self) -> _Fitted:
        state = self._fitted
        if state is None:
            raise RuntimeError("the model is not fitted: call fit() or recfuse.load() first")
        return state

    @property
    def global_mean(self) -> float | None:
        """μ, the mean training rating (None before fit)."""
        return None if self._fitted is None else self._fitted.global_mean

    @property
    def user_bias(self) -> np.ndarray | None:
        """b_u per user (zeros when unbiased; None before fit)."""
        return None if self._fitted is None else self._fitted.user_bias

    @property
    def item_bias(self) -> np.ndarray | None:
        """b_i per item (zeros when unbiased; None before fit)."""
        return None if self._fitted is None else self._fitted.item_bias

    @property
    def user_factors(self) -> np.ndarray | None:
        """p_u per user (users x factors; None before fit)."""
        return None if self._fitted is None else self._fitted.user_factors

    @property
    def item_factors(self) -> np.ndarray | None:
        """q_i per item (items x factors; None before fit)."""
        return None if self._fitted is None else self._fitted.item_factors

    @property
    def rating_scale(self) -> tuple[float, float] | None:
        """(lowest, highest) rating: what fit checked and predict clips to."""
        return None if self._fitted is None else self._fitted.rating_scale

    # ------------------------------------------------------------------ persistence
    def save(self, path: PathLike) -> None:
        """Write the model to ``path`` (a versioned .npz; no pickle). Atomic."""
        from ..persistence import save_model

        state = self._require_fitted()
        arrays = {
            "global_mean": np.array([state.global_mean]),
            "rating_scale": np.array(state.rating_scale, dtype=np.float64),
            "user_bias": state.user_bias, "item_bias": state.item_bias,
            "user_factors": state.user_factors, "item_factors": state.item_factors,
            "user_counts": state.user_counts, "item_counts": state.item_counts,
            "seen_indptr": state.seen.indptr, "seen_indices": state.seen.indices,
        }
        if state.implicit_factors is not None:
            arrays["implicit_factors"] = state.implicit_factors
        if state.ratings is not None:
            arrays.update(zip(("ratings_indptr", "ratings_indices", "ratings_values"),
                              state.ratings))
        save_model(path, self._NAME, self._saved_params(), arrays)

    def _fit_shaped(self) -> dict[str, str]:
        if self._fitted is None:  # not fitted
            return {}
        shaped = shaped_tables(self.factors)
        if hasattr(self, "biased"):  # SVD, ExplicitALS
            shaped["biased"] = "tables"
        return shaped

    @classmethod
    def _from_saved(cls, params: dict, arrays: dict):
        model = cls(**params)
        n_users, n_items = arrays["user_counts"].size, arrays["item_counts"].size
        # not copied: a file loaded with mmap=True keeps its tables mapped (read-only)
        P, Q = saved_factor_tables(model, arrays["user_factors"], arrays["item_factors"])
        factors = [P, Q]
        if model._factor_count() == 3:
            factors.append(check.check_factors(arrays["implicit_factors"], "implicit_factors",
                                               dtype=model.dtype, n_cols=model.factors,
                                               copy=False))
        if P.shape[0] != n_users or any(f.shape[0] != n_items for f in factors[1:]):
            raise ValueError("saved factors do not match the saved user and item counts")
        seen_matrix = check.csr_from_arrays(
            np.ones(arrays["seen_indices"].size), arrays["seen_indices"], arrays["seen_indptr"],
            (n_users, n_items), "saved seen matrix", dtype=np.float64)
        seen = Pattern(seen_matrix.indptr.astype(np.int64), seen_matrix.indices.astype(np.int32))
        # fit infers (min, max) of the ratings, equal when they all are: such a model loads
        scale = check.check_rating_scale(tuple(float(v) for v in arrays["rating_scale"]),
                                         strict=False)
        # kept in float64, as fit keeps it (the model's dtype only bounds it): a save and load
        # must not move the scores
        global_mean = np.asarray(arrays["global_mean"], dtype=np.float64).reshape(-1)
        check.finite_in(global_mean, model.dtype, "saved global_mean")
        if global_mean.size != 1:
            raise ValueError(f"saved global_mean must hold one value, got {global_mean.size}")
        counts = [np.asarray(arrays[name]) for name in ("user_counts", "item_counts")]
        # int(): NumPy < 2 compares a uint64 with a Python int in float64 (2**63 + 1 passed)
        if any(c.ndim != 1 or (c.size and (c.dtype.kind not in "iu" or c.min() < 0
                                           or int(c.max()) > np.iinfo(np.int64).max))
               for c in counts):
            raise ValueError("saved user_counts and item_counts must be 1-d non-negative integers "
                             "(within int64)")
        # a count > 0 is what makes an id known (predict's fallbacks, recommend's scores): it
        # must mark exactly the users and items that have entries in the seen matrix
        rated = (np.diff(seen.indptr) > 0, np.bincount(seen.indices, minlength=n_items) > 0)
        for name, count, has in zip(("user_counts", "item_counts"), counts, rated):
            if not np.array_equal(count > 0, has):
                wrong = int(np.flatnonzero((count > 0) != has)[0])
                raise ValueError(f"saved {name} must be > 0 exactly where the saved seen matrix "
                                 f"has entries, got {name}[{wrong}] = {count[wrong]}")
        state = _Fitted(
            global_mean=float(global_mean[0]),
            user_bias=_saved_vector(arrays, "user_bias", n_users, model.dtype),
            item_bias=_saved_vector(arrays, "item_bias", n_items, model.dtype),
            user_factors=P, item_factors=Q,
            implicit_factors=factors[2] if len(factors) == 3 else None, user_implicit=None,
            user_counts=counts[0].astype(np.int64), item_counts=counts[1].astype(np.int64),
            seen=seen, rating_scale=scale, biased=getattr(model, "biased", True))
        if state.implicit_factors is not None:
            state = replace(state, user_implicit=_implicit_term(seen, state.implicit_factors))
        if saved_group(arrays, ("ratings_indptr", "ratings_indices", "ratings_values"),
                       "the saved ratings"):
            state = replace(state, ratings=_saved_ratings(arrays, n_users, n_items, model.dtype))
        model._fitted = state
        return model

    def _state(self, global_mean, user_bias, item_bias, factors, seen, users, items, n_users,
               n_items, scale, fresh: bool = False) -> _Fitted:
        """The fitted state of these arrays: copies, or the arrays themselves when ``fresh``
        (the caller made them for this state and keeps no reference)."""
        own = (lambda a: a) if fresh else np.copy
        implicit = own(factors[2]) if len(factors) == 3 else None
        return _Fitted(
            global_mean=global_mean, user_bias=own(user_bias), item_bias=own(item_bias),
            user_factors=own(factors[0]), item_factors=own(factors[1]),
            implicit_factors=implicit,
            user_implicit=None if implicit is None else _implicit_term(seen, implicit),
            user_counts=np.bincount(users, minlength=n_users).astype(np.int64),
            item_counts=np.bincount(items, minlength=n_items).astype(np.int64),
            seen=seen, rating_scale=scale, biased=getattr(self, "biased", True))



class _SgdFactorization(_RatingModel):
    """Shared fit/predict/recommend/save of SVD and SVDpp (see their docstrings)."""

    _NAME = ""
    _KERNEL = ""  # the backend function an epoch calls
    _RATE_TERMS: tuple[str, ...] = ()

    _RATES: tuple[str, ...] = ()  # the per-term overrides the constructor takes
    # the constructor's settings, as it checks and sets them (_checked_params)
    epochs: int
    lr: float
    reg: float
    init_mean: float
    init_std: float
    # and one attribute per name of _RATES (lr_bu=..., reg_qi=...): a float or None
    grid: int
    shuffle: bool
    backend: str
    num_threads: int
    random_state: RandomState

    def __init__(self, params: dict[str, Any]):
        """``params``: every constructor argument by name (the subclass's)."""
        self._set_checked(params)
        self.backend_used: str | None = None
        self._fitted: _Fitted | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ parameters
    @property
    def rates(self) -> dict[str, float | None]:
        """The per-term rates given (``lr_bu``, ..., ``reg_qi``; None: ``lr`` / ``reg``)."""
        return {name: getattr(self, name) for name in self._RATES}

    def _rate_tuples(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(lr, reg) for the kernels: bu, bi, pu, qi, yj (unused terms repeat lr/reg)."""
        rates = self.rates
        terms = ("bu", "bi", "pu", "qi", "yj")
        lr = tuple(rates.get(f"lr_{t}") or self.lr for t in terms)
        reg = tuple(self.reg if (value := rates.get(f"reg_{t}")) is None else value
                    for t in terms)
        return lr, reg

    def _params(self) -> dict[str, Any]:
        """The constructor arguments (``get_params``)."""
        params = {
            "factors": self.factors, "epochs": self.epochs, "lr": self.lr, "reg": self.reg,
            "init_mean": self.init_mean, "init_std": self.init_std, **self.rates,
            "dtype": param_dtype(self.dtype), "grid": self.grid, "shuffle": self.shuffle,
            "backend": self.backend, "num_threads": self.num_threads,
            "random_state": param_seed(self.random_state),
        }
        if hasattr(self, "biased"):
            params["biased"] = self.biased
        return params

    def _checked_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """The constructor's checks: the attributes ``params`` set."""
        checked: dict[str, Any] = {}
        if "biased" in params:  # SVD
            biased = params["biased"]
            if not isinstance(biased, (bool, np.bool_)):
                raise TypeError(f"biased must be a bool, got {type(biased).__name__}")
            checked["biased"] = bool(biased)
        checked.update(
            factors=check.check_int(params["factors"], "factors", minimum=1,
                                    maximum=MAX_FACTORS),
            epochs=check.check_int(params["epochs"], "epochs", minimum=0),
            lr=check.check_float(params["lr"], "lr", minimum=0.0, strict=True),
            reg=check.check_float(params["reg"], "reg", minimum=0.0))
        init_mean = check.check_float(params["init_mean"], "init_mean")
        init_std = check_start_fits(init_mean, params["init_std"], params["dtype"])
        rates = {}
        for name in self._RATES:  # per-term overrides: lr_bu=..., reg_qi=...
            value = params[name]
            if value is not None:
                strict = name.startswith("lr_")
                value = check.check_float(value, name, minimum=0.0, strict=strict)
            rates[name] = value
        dtype = check.check_float_dtype(params["dtype"])
        shuffle = params["shuffle"]
        grid = check.check_int(params["grid"], "grid", minimum=0, maximum=1024)
        if not isinstance(shuffle, (bool, np.bool_)):
            raise TypeError(f"shuffle must be a bool, got {type(shuffle).__name__}")
        checked.update(
            init_mean=init_mean, init_std=init_std, **rates, dtype=dtype, grid=grid,
            shuffle=bool(shuffle), backend=check.check_backend(params["backend"]),
            num_threads=check.check_threads(params["num_threads"]),
            random_state=check.check_random_state(params["random_state"]))
        check.settings_fit_dtype(checked, ("lr", "reg", "init_mean", *self._RATES), dtype)
        return checked

    # ------------------------------------------------------------------ training
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
        initial_factors: tuple[ArrayLike, ...] | None = None,
    ) -> Self:
        """Train on ratings (users[t], items[t], ratings[t]) and return self.

        The ratings may also come as one users x items sparse matrix or
        ``recfuse.Interactions`` (e.g. ``from_events(..., weight="rating", combine="last")``)
        in ``users``: each stored entry is a rating, and the model's ids are the matrix's
        rows and columns (the Interactions' ``user_ids`` / ``item_ids`` map them back).
        Ids are integers >= 0; ``n_users``/``n_items`` may declare more ids than appear.
        ``rating_scale=(lowest, highest)`` rejects ratings outside it and bounds
        ``predict(clip=True)``; by default it is the range of the training ratings. Repeated
        (user, item) pairs are kept: each is one more SGD update, as in Surprise.
        ``callback(epoch, rmse)`` gets the training RMSE after each epoch.
        ``initial_factors`` replaces the random start: (P, Q) for SVD, (P, Q, Y) for SVD++.
        On bad input the model is left as it was.
        """
        self._check_settings()
        users, items, values, scale, n_users, n_items = self._fit_arguments(
            users, items, ratings, rating_scale, n_users, n_items, callback, show_progress)
        rng = np.random.default_rng(self.random_state)
        given = (None if initial_factors is None
                 else self._initial_factors(rng, n_users, n_items, initial_factors))
        backend = resolve_backend(self.backend, "sgd", needs=self._KERNEL)
        global_mean = mean_of(values)
        blocks = self._layout(users, items, n_users, n_items, values.size, rng)
        ordered = np.ascontiguousarray(values[blocks.order], dtype=self.dtype)
        # built on first use, from the layout's own copies of the pairs
        seen = PairsPattern(blocks.users, blocks.items, n_users, n_items)
        # Training runs on users and items renumbered bin by bin (Blocks.renumbered).
        rows = (blocks.bin_users, blocks.bin_items, blocks.bin_items)  # P, Q, Y
        if given is None:  # drawn straight into the training layout
            seeds = _factor_seeds(rng, self._factor_count())
            trained = [normal_training_rows(seed, r, self.factors, self.init_mean, self.init_std,
                                            self.dtype, backend, self.num_threads)
                       for seed, r in zip(seeds, rows)]
        else:
            trained = [training_rows(f, r, backend) for f, r in zip(given, rows)]
        user_bias = np.zeros(n_users, dtype=self.dtype)
        item_bias = np.zeros(n_items, dtype=self.dtype)
        lr, reg = self._rate_tuples()
        run_epoch = self._epoch_runner(backend, blocks.renumbered(), ordered, global_mean,
                                       user_bias, item_bias, trained, lr, reg)

        def state(final: bool = False) -> _Fitted:
            """The model in the caller's ids: new arrays, or at the end (``final``) the
            training buffers themselves, put in order in place."""
            getattr(run_epoch, "sync", lambda: None)()  # a device-resident fit copies back
            if final:
                tables = [trained_rows_in_id_order(rows_trained, rows_at, self.factors)
                          for rows_at, rows_trained in zip(rows, trained)]
            else:
                tables = [in_id_order(rows_trained[:, : self.factors], rows_at)
                          for rows_at, rows_trained in zip(rows, trained)]
            return self._state(global_mean, in_id_order(user_bias, blocks.bin_users),
                               in_id_order(item_bias, blocks.bin_items), tables, seen, users,
                               items, n_users, n_items, scale, fresh=True)

        if hasattr(backend, "warm_up"):  # a JIT backend compiles now, not in a timed epoch
            backend.warm_up(self._KERNEL, self.dtype)
        threads = EpochThreads(self.num_threads, total=self.epochs)
        progress = progress_bar(self.epochs, show_progress, f"{self._NAME} ({backend.NAME})")
        try:
            for epoch in range(self.epochs):
                threads.run(run_epoch)
                if callback is not None:
                    callback(epoch, _rmse(state(), users, items, values))
                progress.update(1)
        finally:
            progress.close()
        fitted = state(final=True)
        if self._refuse_divergence:
            check_trained(self._NAME, (fitted.user_factors, fitted.item_factors,
                                       fitted.user_bias, fitted.item_bias) +
                          (() if fitted.implicit_factors is None else (fitted.implicit_factors,)),
                          "lower lr or raise reg")
        with self._lock:
            self._fitted = fitted
            self.backend_used = backend.NAME
        return self

    # ------------------------------------------------------------------ per-model hooks
    def _layout(self, users, items, n_users, n_items, nnz, rng):
        grid = self.grid or default_grid(nnz)
        return make_blocks(users, items, n_users, n_items, grid, rng, self.shuffle,
                           num_threads=self.num_threads)

    def _epoch_runner(self, backend, blocks, ratings, global_mean, user_bias, item_bias, factors,
                      lr, reg) -> Callable[[int], None]:
        raise NotImplementedError

    def __repr__(self) -> str:
        state = self._fitted
        fitted = "" if state is None else (
            f", fitted on {state.user_counts.size} users x {state.item_counts.size} items")
        biased = getattr(self, "biased", True)  # set by hand, any value until the next fit
        unbiased = "" if isinstance(biased, (bool, np.bool_)) and biased else \
            f", biased={biased!r}"
        return (f"{self._NAME}(factors={self.factors}, epochs={self.epochs}, lr={self.lr}, "
                f"reg={self.reg}{unbiased}, dtype={dtype_text(self.dtype)}, "
                f"backend={self.backend!r}{fitted})")


class SVD(_SgdFactorization):
    """Funk SVD with biases (Surprise's ``SVD``): r̂_ui = μ + b_u + b_i + q_i·p_u.

    Parameters and defaults are Surprise's: ``factors`` (n_factors), ``epochs``
    (n_epochs), ``lr`` (lr_all), ``reg`` (reg_all), ``biased``, ``init_mean``,
    ``init_std`` (init_std_dev), and per-term overrides ``lr_bu, lr_bi, lr_pu, lr_qi,
    reg_bu, reg_bi, reg_pu, reg_qi``. Then:

    dtype: float32 (default) or float64, for the factors and all arithmetic.
    grid: bins a side of the block grid (0: from the number of ratings, at most 32). The
        grid, not the thread count, decides the order of updates, so the same seed and grid
        give the same model with any number of threads. grid=1: one sequential pass.
    shuffle: visit the ratings of each block in a random order (fixed for the fit), or in
        the order given.
    backend: "auto", "cuda", "cpu", "numba", "cupy" or "numpy" (see
        ``recfuse.backends("sgd")``).
        "cuda" (chosen by "auto" where a device is present) runs batch-Hogwild SGD: warps
        race on shared rows, so its models are not bitwise reproducible and ``grid`` only
        sets the order of the ratings; at most ``recfuse._cuda.SVD_MAX_FACTORS`` factors.
    num_threads: CPU threads, used as given (at most ``grid``); 0: the fit times epochs on
        one thread and on all cores and keeps the faster (``recfuse._sgd.common.EpochThreads``:
        on small data sets, or a busy machine, the threads' hand-offs can cost more than the
        second core gains). The model is the same either way.
    random_state: seed (int) or ``numpy.random.Generator`` for the initial factors, bins and
        order. The starting factors are Normal(init_mean, init_std) draws made by counter
        (``recfuse.reference.normal_draws``): the same bits on every backend and SIMD level,
        not NumPy's generator's stream. With ``init_std=0`` and ``init_mean=0`` the factors
        start at zero, a point their gradients never leave: the model is its biases alone
        (as in Surprise).

    ``get_params``/``set_params`` follow scikit-learn's estimator protocol
    (``sklearn.base.clone`` works); see ``set_params`` for what it does to a fitted model.
    ``backend_used`` names the backend that ran the last ``fit`` (None on a model read
    by ``recfuse.load``, which ran none).

    >>> import numpy as np, recfuse
    >>> rng = np.random.default_rng(0)
    >>> users, items = rng.integers(0, 50, 2000), rng.integers(0, 40, 2000)
    >>> ratings = rng.integers(1, 6, 2000)
    >>> model = recfuse.SVD(factors=8, epochs=5, random_state=0).fit(users, items, ratings)
    >>> 1 <= model.predict(3, 7) <= 5
    True
    >>> model.predict([3, 999], [7, 7]).shape        # id 999 is unknown: mean + item bias
    (2,)
    """

    _NAME = "SVD"
    _KERNEL = "svd_epoch"
    _RATES = ("lr_bu", "lr_bi", "lr_pu", "lr_qi", "reg_bu", "reg_bi", "reg_pu", "reg_qi")
    biased: bool

    def __init__(
        self,
        factors: Integer = 100,
        epochs: Integer = 20,
        lr: float = 0.005,
        reg: float = 0.02,
        biased: bool = True,
        init_mean: float = 0.0,
        init_std: float = 0.1,
        *,
        lr_bu: float | None = None,
        lr_bi: float | None = None,
        lr_pu: float | None = None,
        lr_qi: float | None = None,
        reg_bu: float | None = None,
        reg_bi: float | None = None,
        reg_pu: float | None = None,
        reg_qi: float | None = None,
        dtype: DTypeLike = np.float32,
        grid: Integer = 0,
        shuffle: bool = True,
        backend: str = "auto",
        num_threads: Integer = 0,
        random_state: RandomState = None,
    ) -> None:
        super().__init__(dict(
            factors=factors, epochs=epochs, lr=lr, reg=reg, biased=biased, init_mean=init_mean,
            init_std=init_std, lr_bu=lr_bu, lr_bi=lr_bi, lr_pu=lr_pu, lr_qi=lr_qi,
            reg_bu=reg_bu, reg_bi=reg_bi, reg_pu=reg_pu, reg_qi=reg_qi, dtype=dtype, grid=grid,
            shuffle=shuffle, backend=backend, num_threads=num_threads,
            random_state=random_state))

    def _factor_count(self) -> int:
        return 2

    def _epoch_runner(self, backend, blocks, ratings, global_mean, user_bias, item_bias, factors,
                      lr, reg):
        P, Q = factors
        mean = global_mean if self.biased else 0.0
        if hasattr(backend, "svd_trainer"):  # the data stays on the device between epochs
            return _DeviceEpochs(backend.svd_trainer(blocks, ratings, user_bias, item_bias, P, Q),
                                 (mean, lr, reg, self.biased), (user_bias, item_bias, P, Q))

        def run(threads: int):
            backend.svd_epoch(blocks, ratings, mean, user_bias, item_bias, P, Q, lr, reg,
                              self.biased, threads)

        return run


class _DeviceEpochs:
    """The epoch runner of a device-resident SVD fit: each call runs one epoch on the
    device; ``sync()`` copies the model back into the host arrays the fit reads."""

    def __init__(self, trainer, arguments: tuple, host: tuple):
        self._trainer, self._arguments, self._host = trainer, arguments, host

    def __call__(self, threads: int) -> None:
        del threads  # the device decides its own parallelism
        self._trainer.epochs(*self._arguments, 1)

    def sync(self) -> None:
        self._trainer.download(*self._host)


class SVDpp(_SgdFactorization):
    """SVD++ (Koren 2008; Surprise's ``SVDpp``): r̂_ui = μ + b_u + b_i + q_i·(p_u + z_u),
    z_u = |N(u)|^(-1/2) Σ_{j∈N(u)} y_j over the items N(u) the user rated in training (a
    set: an item the user rated twice counts once, where Surprise's list counts it twice).

    Surprise's defaults (factors=20, epochs=20, lr=0.007, reg=0.02) and rules, with one
    change that makes an epoch O(nnz k) instead of O(Σ_u |N(u)|² k): each epoch visits the
    users in a random order (drawn once for the fit) and all of a user's ratings together
    (a *user pass*); z_u is computed once at the start of the pass and the y_j of the user's
    items receive the pass's summed gradient once, with the same total shrinkage, at its end
    (``recfuse.reference.svdpp_sgd_epoch``). Surprise recomputes z_u and updates every y_j
    after each rating. A pass touches the y_j of all the user's items, so passes cannot run
    side by side without races: SVD++ trains on one thread (``num_threads`` is unused).
    ``grid`` is ignored; ``shuffle=False`` keeps each user's ratings in the order given.
    The other parameters are those of ``SVD`` but ``biased`` (SVD++ is always biased), plus
    ``lr_yj``/``reg_yj``; its backends are "cpu", "numba" and "numpy" (no cuda or cupy kernel:
    ``backend="auto"`` passes over them, naming either raises RuntimeError). ``predict``,
    ``recommend``, ``save`` and ``get_params``/``set_params`` are those of ``SVD``.
    """

    _NAME = "SVDpp"
    _KERNEL = "svdpp_epoch"
    _RATES = ("lr_bu", "lr_bi", "lr_pu", "lr_qi", "lr_yj", "reg_bu", "reg_bi", "reg_pu",
              "reg_qi", "reg_yj")

    def __init__(
        self,
        factors: Integer = 20,
        epochs: Integer = 20,
        lr: float = 0.007,
        reg: float = 0.02,
        init_mean: float = 0.0,
        init_std: float = 0.1,
        *,
        lr_bu: float | None = None,
        lr_bi: float | None = None,
        lr_pu: float | None = None,
        lr_qi: float | None = None,
        lr_yj: float | None = None,
        reg_bu: float | None = None,
        reg_bi: float | None = None,
        reg_pu: float | None = None,
        reg_qi: float | None = None,
        reg_yj: float | None = None,
        dtype: DTypeLike = np.float32,
        grid: Integer = 0,
        shuffle: bool = True,
        backend: str = "auto",
        num_threads: Integer = 0,
        random_state: RandomState = None,
    ) -> None:
        super().__init__(dict(
            factors=factors, epochs=epochs, lr=lr, reg=reg, init_mean=init_mean,
            init_std=init_std, lr_bu=lr_bu, lr_bi=lr_bi, lr_pu=lr_pu, lr_qi=lr_qi, lr_yj=lr_yj,
            reg_bu=reg_bu, reg_bi=reg_bi, reg_pu=reg_pu, reg_qi=reg_qi, reg_yj=reg_yj,
            dtype=dtype, grid=grid, shuffle=shuffle, backend=backend, num_threads=num_threads,
            random_state=random_state))

    @property
    def implicit_factors(self) -> np.ndarray | None:
        """SVD++'s y_j per item (items x factors; None before fit)."""
        return None if self._fitted is None else self._fitted.implicit_factors

    def _factor_count(self) -> int:
        return 3

    def _layout(self, users, items, n_users, n_items, nnz, rng):
        # One block, each user's ratings together: one pass per user and epoch.
        order = user_major_order(users, n_users, rng, self.shuffle)
        return make_blocks(users, items, n_users, n_items, 1, rng, order=order,
                           num_threads=self.num_threads)

    def _epoch_runner(self, backend, blocks, ratings, global_mean, user_bias, item_bias, factors,
                      lr, reg):
        P, Q, Y = factors
        implicit = Pattern.from_pairs(blocks.users, blocks.items, P.shape[0], Q.shape[0])  # N(u)

        def run(threads: int):  # SVD++ runs on one thread
            backend.svdpp_epoch(blocks, ratings, global_mean, user_bias, item_bias, P, Q, Y,
                                implicit, lr, reg)

        return run


# ---------------------------------------------------------------------- helpers
def _factor_seeds(rng: np.random.Generator, count: int) -> list:
    """The seeds of a fit's starting tables (P, Q, then Y), one draw of ``rng`` each."""
    return [int(seed) for seed in rng.integers(0, 2**63, size=count, dtype=np.int64)]


def _saved_vector(arrays: dict, name: str, size: int, dtype) -> np.ndarray:
    """A model file's per-user or per-item vector ``name``: ``size`` finite values."""
    vector = np.asarray(arrays[name])
    if vector.shape != (size,) or vector.dtype.kind not in "fiu":
        raise ValueError(f"saved {name} must hold {size} numbers, got shape {vector.shape} and "
                         f"dtype {vector.dtype}")
    return check.finite_in(vector, dtype, f"saved {name}").copy()


def _saved_ratings(arrays: dict, n_users: int, n_items: int, dtype) -> tuple:
    """A model file's ``ratings`` (``_Fitted.ratings``), checked: a CSR row index of the saved
    users, item ids in range, finite values (repeated pairs are kept, not summed)."""
    indptr, items = np.asarray(arrays["ratings_indptr"]), np.asarray(arrays["ratings_indices"])
    values = np.asarray(arrays["ratings_values"])
    nnz = check.check_csr_arrays(indptr, items, n_users, n_items, "the saved ratings",
                                 data_size=values.size)
    if nnz != items.size or values.shape != items.shape or values.dtype.kind not in "fiu":
        raise ValueError("the saved ratings are not a CSR matrix of the saved users and items")
    values = check.finite_in(values, dtype, "the saved ratings")
    return indptr.astype(np.int64), items.astype(np.int32), values.astype(dtype)


def _implicit_term(seen: Pattern, Y: np.ndarray) -> np.ndarray:
    """z_u for every user (float64 sums, stored in Y's dtype)."""
    n_users = seen.indptr.size - 1
    matrix = seen.to_scipy(Y.shape[0])
    lengths = np.diff(seen.indptr)
    scale = np.where(lengths > 0, 1 / np.sqrt(np.maximum(lengths, 1)), 0.0)
    Z = (matrix @ Y.astype(np.float64)) * scale[:, None]
    return Z.reshape(n_users, Y.shape[1]).astype(Y.dtype)


def _user_vectors(state: _Fitted, users: np.ndarray | slice = slice(None)) -> np.ndarray:
    """The rows p_u (SVD++: p_u + z_u) of ``users`` (default all), in the factors' dtype;
    only those rows are added up, so one prediction does not pay for the whole table."""
    if state.user_implicit is None:
        return state.user_factors[users]
    return state.user_factors[users] + state.user_implicit[users]


_ESTIMATE_CHUNK = 1 << 15  # pairs whose factor rows _estimate gathers at a time


def _estimate(state: _Fitted, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """μ + b_u [u known] + b_i [i known] + q_i·p_u [both known], in float64 (Surprise's
    estimate); unbiased: q_i·p_u when both are known, else μ."""
    n_users, n_items = state.user_counts.size, state.item_counts.size
    known_u = users < n_users
    known_u[known_u] = state.user_counts[users[known_u]] > 0
    known_i = items < n_items
    known_i[known_i] = state.item_counts[items[known_i]] > 0
    estimate = np.full(users.size, state.global_mean, dtype=np.float64)
    both = known_u & known_i
    if state.biased:
        estimate[known_u] += state.user_bias[users[known_u]]
        estimate[known_i] += state.item_bias[items[known_i]]
    else:
        estimate[both] = 0.0
    # In chunks: the gathered rows of all pairs at once would take pairs x k x 16 bytes (32 GB
    # for the callback's RMSE over 20M ratings at k = 100).
    pairs = np.flatnonzero(both)
    for start in range(0, pairs.size, _ESTIMATE_CHUNK):
        chunk = pairs[start:start + _ESTIMATE_CHUNK]
        rows = _user_vectors(state, users[chunk]).astype(np.float64)
        estimate[chunk] += np.einsum("nk,nk->n", rows,
                                     state.item_factors[items[chunk]].astype(np.float64))
    return estimate


def _rmse(state: _Fitted, users, items, ratings) -> float:
    return float(np.sqrt(np.mean((_estimate(state, users, items) - ratings) ** 2)))



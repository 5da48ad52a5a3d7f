"""Bayesian personalised ranking (Rendle et al. 2009) for implicit feedback, by SGD."""

from __future__ import annotations

import threading
from typing import Any, Callable

import numpy as np
import scipy.sparse as sp
from numpy.typing import ArrayLike, DTypeLike

from .. import _validation as check
from .._backend import resolve_backend
from .._sgd.common import (EpochThreads, Pattern, default_grid, in_id_order, make_blocks,
                           trained_rows_in_id_order, training_rows)
from ..retrieval import ItemIndex
from ._common import (EstimatorParams, FactorRetrieval, assigned_tables, check_tables_fit,
                      check_trained, dtype_text, interaction_matrix, keeps_generator_on_failure,
                      param_dtype, param_seed, progress_bar, saveable_tables, saved_factor_tables,
                      seen_rows, shaped_tables, stored_seen)
from .sgd import MAX_FACTORS
from .._typing import Integer, PathLike, RandomState, UserItems


def _checked_item_bias(bias, n_items: int, dtype) -> np.ndarray:
    """``bias`` as ``n_items`` finite values of ``dtype``, checked as the factors are (a NaN,
    or a float64 value beyond float32, would fail every later recommend); else ValueError."""
    bias = np.asarray(bias)
    if bias.shape != (n_items,) or bias.dtype.kind not in "fiu":
        raise ValueError(f"item_bias must hold {n_items} numbers, got shape {bias.shape} and "
                         f"dtype {bias.dtype}")
    return check.finite_in(bias, dtype, "item_bias")


MIN_BIN_ITEMS = 64  # the fewest items a bin of the default grid holds


class BPR(EstimatorParams, FactorRetrieval):
    """BPR with item biases: score(u, i) = p_u·q_i + b_i, trained on triples (u, i, j) of a
    positive item i and a sampled negative item j (``recfuse.reference.bpr_sgd_epoch``).

    Each iteration visits every positive pair (stored value > 0) once. Its negative is drawn
    uniformly from the items of the pair's block column (the items are split into ``grid``
    random bins, as the ratings are for SVD) and redrawn until the user has not interacted
    with it (any stored entry counts); a pair whose ``max_tries`` draws all hit seen items
    is skipped that iteration, never trained on a seen negative. A user without a positive
    pair is never visited and keeps its random starting vector, as in implicit, so its
    ``recommend`` is noise (``recfuse.Recommender`` and the CLI answer a user without any
    stored entry from the popular list). An item that is never a positive is trained only
    as a negative. Blocks of one diagonal share no user and no item, so threads need no
    locks and the model depends on the seed and the grid, not on the thread count.
    ``num_threads``: used as given; 0 times the first epochs on one thread and on all cores
    and keeps the faster (as ``recfuse.SVD`` does).

    Defaults follow ``implicit.bpr.BayesianPersonalizedRanking`` (factors=100, lr=0.01,
    reg=0.01, iterations=100, uniform initial factors in ±0.5/factors).

    Parameters
    ----------
    factors, lr, reg, iterations: size of the vectors, SGD step, L2 regularisation, epochs.
    dtype: float32 (default) or float64, for the factors and all arithmetic.
    grid: bins a side of the block grid (0: from the number of positive pairs, with at
        least 64 items a bin, so that a pair's negative has items to come from; ``fit``'s
        callback counts the pairs skipped).
    max_tries: draws of a negative before the pair is skipped for the iteration.
    backend: "auto", "cpu", "numba" or "numpy" (see ``recfuse.backends("sgd")``).
    num_threads: see above.
    random_state: seed (int) or ``numpy.random.Generator`` for the factors, bins and draws.

    ``get_params``/``set_params`` follow scikit-learn's estimator protocol
    (``sklearn.base.clone`` works); see ``set_params`` for what it does to a fitted model.
    ``backend_used`` names the backend that ran the last ``fit`` (None on a model read
    by ``recfuse.load``, which ran none).

    >>> import recfuse, scipy.sparse as sp
    >>> user_items = sp.random(60, 40, density=0.1, format="csr", random_state=0)
    >>> model = recfuse.BPR(factors=8, iterations=5, random_state=0).fit(user_items)
    >>> ids, scores = model.recommend(0, k=5)
    >>> ids.shape
    (5,)
    """

    # the constructor's settings, as it checks and sets them (_checked_params)
    factors: int
    lr: float
    reg: float
    iterations: int
    dtype: np.dtype
    grid: int
    max_tries: int
    backend: str
    num_threads: int
    random_state: RandomState

    def __init__(
        self,
        factors: Integer = 100,
        lr: float = 0.01,
        reg: float = 0.01,
        iterations: Integer = 100,
        *,
        dtype: DTypeLike = np.float32,
        grid: Integer = 0,
        max_tries: Integer = 100,
        backend: str = "auto",
        num_threads: Integer = 0,
        random_state: RandomState = None,
    ) -> None:
        self._set_checked(dict(
            factors=factors, lr=lr, reg=reg, iterations=iterations, dtype=dtype, grid=grid,
            max_tries=max_tries, backend=backend, num_threads=num_threads,
            random_state=random_state))
        self.user_factors: np.ndarray | None = None
        self.item_factors: np.ndarray | None = None
        self.item_bias: np.ndarray | None = None
        self.backend_used: str | None = None
        self._seen: sp.csr_matrix | None = None
        self._index_cache: tuple | None = None  # (Q, bias, ItemIndex), see _index
        self._lock = threading.Lock()

    @keeps_generator_on_failure
    def fit(self, user_items: UserItems, *, show_progress: bool = False,
            callback: Callable[[int, int], None] | None = None) -> "BPR":
        """Train on a users x items CSR matrix (or a ``recfuse.Interactions``: its
        ``matrix``) and return self. ``callback(iteration, skipped)`` gets the number of
        pairs skipped for want of an unseen negative. On bad input the model is left as it
        was."""
        self._check_settings()
        # the starting tables are drawn in float64 and then cast
        check_tables_fit(user_items, self.factors, 8 + np.dtype(self.dtype).itemsize)
        given = interaction_matrix(user_items)
        matrix = check.check_csr(given, "user_items", dtype=self.dtype)
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable, got {type(callback).__name__}")
        show_progress = check.check_flag(show_progress, "show_progress")
        n_users, n_items = matrix.shape
        backend = resolve_backend(self.backend, "sgd", needs="bpr_epoch")
        rng = np.random.default_rng(self.random_state)
        scale = 1.0 / self.factors
        P = ((rng.random((n_users, self.factors)) - 0.5) * scale).astype(self.dtype)
        Q = ((rng.random((n_items, self.factors)) - 0.5) * scale).astype(self.dtype)
        seen = Pattern(matrix.indptr.astype(np.int64), matrix.indices.astype(np.int32))
        coo = matrix.tocoo()
        positive = coo.data > 0
        users, items = coo.row[positive], coo.col[positive]
        # a default grid keeps MIN_BIN_ITEMS items a bin: a pair's negative comes from its
        # item's bin, and with too few there every draw can hit a seen item
        grid = self.grid or min(default_grid(users.size), max(1, n_items // MIN_BIN_ITEMS))
        blocks = make_blocks(users, items, n_users, n_items, grid, rng,
                             num_threads=self.num_threads)
        negatives = np.empty(users.size, dtype=np.int32)
        seed = int(rng.integers(0, 2**63))
        # Training runs on users and items renumbered bin by bin (Blocks.renumbered).
        train = blocks.renumbered()
        train_seen = seen.permuted(blocks.bin_users, blocks.bin_items)
        P_train = training_rows(P, blocks.bin_users, backend)
        Q_train = training_rows(Q, blocks.bin_items, backend)
        bias_train = np.zeros(n_items, dtype=self.dtype)
        if hasattr(backend, "warm_up"):  # a JIT backend compiles now, not in a timed epoch
            backend.warm_up("bpr_epoch", self.dtype)
        threads = EpochThreads(self.num_threads, total=self.iterations)
        progress = progress_bar(self.iterations, show_progress, f"BPR ({backend.NAME})")
        try:
            for iteration in range(self.iterations):
                skipped = threads.run(lambda count: backend.bpr_epoch(
                    train, train_seen, P_train, Q_train, bias_train, self.lr, self.reg,
                    (seed + iteration) % 2**64, self.max_tries, negatives, count))
                if callback is not None:
                    callback(iteration, skipped)
                progress.update(1)
        finally:
            progress.close()
        P = trained_rows_in_id_order(P_train, blocks.bin_users, self.factors)
        Q = trained_rows_in_id_order(Q_train, blocks.bin_items, self.factors)
        bias = in_id_order(bias_train, blocks.bin_items)
        check_trained("BPR", (P, Q, bias), "lower lr or raise reg")
        matrix = check.unshared_csr(matrix, given)
        with self._lock:
            self.user_factors, self.item_factors, self.item_bias = P, Q, bias
            self._seen = matrix
            self.backend_used = backend.NAME
        return self

    def recommend(self, user_ids: ArrayLike, k: Integer = 10, filter_seen: bool = True,
                  items: ArrayLike | None = None, exclude_items: ArrayLike | None = None, *,
                  user_items: UserItems | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The k best items by p_u·q_i + b_i for one user (1-d results) or a batch (2-d),
        without the items seen in training (``filter_seen``), or those in the user's row of
        ``user_items`` (a CSR matrix or Interactions, one row per requested user) when it is
        given; ``items`` restricts the candidates, ``exclude_items`` removes ids. Ties by
        smaller item id."""
        if sp.issparse(interaction_matrix(k)):  # a matrix or an Interactions
            # recommend(user, user_items): implicit's order; here the second argument is k
            raise TypeError(f"k must be an integer, got {type(k).__name__}: BPR.recommend's "
                            f"second argument is k (implicit's is user_items); pass the rows "
                            f"to filter as user_items=")
        self._require_fitted()
        P, Q, bias, seen = self._tables()
        P, Q = assigned_tables(P, Q)
        single = check.is_one_id(user_ids, "user_ids")
        ids = check.check_ids(user_ids, "user_ids", P.shape[0])
        k = check.check_k(k)
        filter_seen = check.check_flag(filter_seen, "filter_seen")
        allow = None if items is None else check.check_ids(items, "items", Q.shape[0])
        deny = None if exclude_items is None else check.check_ids(exclude_items,
                                                                  "exclude_items", Q.shape[0])
        if filter_seen:
            seen = stored_seen(seen, P.shape[0], Q.shape[0])[ids] if user_items is None \
                else seen_rows(user_items, ids.size, Q.shape[0])
        elif user_items is not None:  # unused, but a wrong one is a mistake to name
            seen_rows(user_items, ids.size, Q.shape[0])
        out_ids, out_scores = self._index(Q, bias).search(
            P[ids], k, exclude=seen if filter_seen else None, allow=allow, deny=deny,
            num_threads=self.num_threads)
        if single:
            return out_ids[0], out_scores[0]
        return out_ids, out_scores

    def _tables(self) -> tuple:
        """(user factors, item factors, item bias, seen matrix) of one fit: fit publishes the
        four under the writer lock, so they are read under it."""
        with self._lock:
            return self.user_factors, self.item_factors, self.item_bias, self._seen

    def _index(self, Q: np.ndarray, bias: np.ndarray) -> ItemIndex:
        """The ItemIndex of these item factors and biases, rebuilt only when fit replaced them
        or the backend changed."""
        cached, backend = self._index_cache, self.backend
        if (cached is None or cached[0] is not Q or cached[1] is not bias
                or cached[2].backend != backend):
            cached = (Q, bias, ItemIndex(Q, item_bias=bias, backend=backend))
            self._index_cache = cached
        return cached[2]

    def _params(self) -> dict[str, Any]:
        """The constructor arguments (``get_params``)."""
        return {"factors": self.factors, "lr": self.lr, "reg": self.reg,
                "iterations": self.iterations, "dtype": param_dtype(self.dtype),
                "grid": self.grid, "max_tries": self.max_tries, "backend": self.backend,
                "num_threads": self.num_threads, "random_state": param_seed(self.random_state)}

    def _checked_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """The constructor's checks: the attributes ``params`` set."""
        checked = {
            "factors": check.check_int(params["factors"], "factors", minimum=1,
                                       maximum=MAX_FACTORS),
            "lr": check.check_float(params["lr"], "lr", minimum=0.0, strict=True),
            "reg": check.check_float(params["reg"], "reg", minimum=0.0),
            "iterations": check.check_int(params["iterations"], "iterations", minimum=0),
            "dtype": check.check_float_dtype(params["dtype"]),
            "grid": check.check_int(params["grid"], "grid", minimum=0, maximum=1024),
            "max_tries": check.check_int(params["max_tries"], "max_tries", minimum=1,
                                         maximum=2**31 - 1),  # the native kernels' int
            "backend": check.check_backend(params["backend"]),
            "num_threads": check.check_threads(params["num_threads"]),
            "random_state": check.check_random_state(params["random_state"]),
        }
        check.settings_fit_dtype(checked, ("lr", "reg"), checked["dtype"])
        return checked

    def _fit_shaped(self) -> dict[str, str]:
        if self.user_factors is None:  # not fitted
            return {}
        return shaped_tables(self.factors)

    def save(self, path: PathLike) -> None:
        """Write the model to ``path`` (a versioned .npz; no pickle). Atomic."""
        from ..persistence import save_model

        self._require_fitted()
        P, Q, bias, seen = self._tables()
        # assigned tables are checked as load will check them: a clear error now, not a file
        # that cannot be loaded
        P, Q = saveable_tables(self, P, Q, seen.shape)
        try:
            bias = _checked_item_bias(bias, Q.shape[0], self.dtype)
        except ValueError as error:
            raise ValueError(f"cannot save: {error}") from error
        save_model(path, "BPR", self._saved_params(), {
            "user_factors": P, "item_factors": Q,
            "item_bias": bias, "seen_indptr": seen.indptr.astype(np.int64),
            "seen_indices": seen.indices.astype(np.int32), "seen_data": seen.data,
            "seen_shape": np.array(seen.shape, dtype=np.int64)})

    @classmethod
    def _from_saved(cls, params: dict, arrays: dict) -> "BPR":
        model = cls(**params)
        # copy=False: a file loaded with mmap=True keeps its tables mapped (read-only)
        P, Q = saved_factor_tables(model, arrays["user_factors"], arrays["item_factors"])
        bias = _checked_item_bias(arrays["item_bias"], Q.shape[0], model.dtype)
        model._seen = check.csr_from_arrays(
            arrays["seen_data"], arrays["seen_indices"], arrays["seen_indptr"],
            arrays["seen_shape"], "saved seen matrix", dtype=model.dtype, n_rows=P.shape[0],
            n_cols=Q.shape[0])
        model.user_factors, model.item_factors, model.item_bias = P, Q, bias
        return model

    def _require_fitted(self) -> tuple[np.ndarray, np.ndarray]:
        """(user factors, item factors); RuntimeError unless both are there (a table
        assigned by hand without the other is not a fitted model)."""
        P, Q = self.user_factors, self.item_factors
        if P is None or Q is None:
            raise RuntimeError("the model is not fitted: call fit() or recfuse.load() first")
        return P, Q

    def _check_seen_items(self) -> None:
        P, Q = self._require_fitted()
        stored_seen(self._seen, P.shape[0], Q.shape[0])

    def _similarity_table(self, side: str) -> np.ndarray:
        P, Q = self._require_fitted()
        return P if side == "users" else Q

    _similarity_source = _similarity_table  # the factor array itself

    def __repr__(self) -> str:
        P, Q = self.user_factors, self.item_factors
        fitted = "" if P is None or Q is None else (
            f", fitted on {P.shape[0]} users x {Q.shape[0]} items")
        return (f"BPR(factors={self.factors}, lr={self.lr}, reg={self.reg}, "
                f"iterations={self.iterations}, dtype={dtype_text(self.dtype)}, "
                f"backend={self.backend!r}{fitted})")

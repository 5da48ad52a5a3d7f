"""Evaluation: rating errors, ranking metrics over all users (native, GIL released), and
beyond-accuracy measures; ``evaluate(model, train, test, k)`` runs the whole protocol.

Ranking metrics, for each evaluated user u with test items T_u and a top-k list (seen
items filtered), with the definitions of ``implicit.evaluation.ranking_metrics_at_k``
where it defines them:

- precision@k = Σ_u hits_u / Σ_u min(k, |T_u|) (implicit's normalisation: a user with
  fewer than k test items can still reach 1);
- recall@k = mean of hits_u / |T_u|;
- MAP@k = mean of Σ_{hit at rank r} (hits up to r)/(r + 1), over min(k, |T_u|);
- NDCG@k = mean of Σ_hits 1/log2(r + 2) over the ideal Σ_{r < min(k,|T_u|)} 1/log2(r + 2);
- AUC = implicit's AUC of the top-k list against all items (see
  ``recfuse.reference_data.ranking_metrics``);
- MRR@k = mean of 1/(rank of the first hit + 1), 0 without a hit; hit rate@k = share of
  users with a hit.

Beyond accuracy: catalog coverage = distinct recommended items / items; novelty = mean
over recommended items of -log2(share of train users who have the item, at least one
user); intra-list diversity = mean over users of the mean pairwise 1 - cosine of the
recommended items' vectors (the model's item factors by default).
"""

from __future__ import annotations

import decimal
import inspect
import numbers
from typing import Any, Literal, overload

import numpy as np
import scipy.sparse as sp
from numpy.typing import ArrayLike

from . import _validation as check
from . import reference_data
from .interactions import Interactions
from .reference_data import RANKING_COLUMNS
from ._typing import Integer, SparseMatrix

COLD_USERS = ("include", "skip", "raise")
_COLUMN = {name: index for index, name in enumerate(RANKING_COLUMNS)}


# ---------------------------------------------------------------------------- rating errors
def rmse(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Root mean squared error of predictions against true ratings.

    >>> rmse([1, 2, 3], [1, 2, 5])
    1.1547005383792515
    """
    errors, scale = _errors(y_true, y_pred)
    return float(np.sqrt(np.mean(errors ** 2))) * scale


def mae(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Mean absolute error of predictions against true ratings.

    >>> mae([1, 2, 3], [1, 2, 5])
    0.6666666666666666
    """
    errors, scale = _errors(y_true, y_pred)
    return float(np.mean(np.abs(errors))) * scale


def _errors(y_true, y_pred) -> tuple[np.ndarray, float]:
    """(errors / scale, scale) of the paired ratings: scale 1, unless squares of the errors
    would overflow float64 (errors near 1e154 and beyond) or underflow it (near 1e-154 and
    below), when the errors come divided by the largest error, so that rmse and mae stay
    exact wherever they are. (The errors' size decides, not the ratings': 1e200 against
    1e200 + 2 is an error of 2.)"""
    truth, predicted = _paired(y_true, y_pred)
    with np.errstate(over="ignore"):  # a difference past float64's range: inf, handled below
        errors = truth - predicted
    largest = float(np.abs(errors).max())  # NaN cannot come: the ratings are finite
    if largest == 0 or 1e-150 < largest < 1e150:
        return errors, 1.0
    if np.isfinite(largest):
        return errors / largest, largest
    halves = truth / 2 - predicted / 2  # finite, whatever the ratings
    largest = float(np.abs(halves).max())
    # the errors are 2 x halves: the 2 goes with the values (<= 2), not the scale, which
    # would overflow where the rmse itself does not
    return 2 * (halves / largest), largest


def _paired(y_true, y_pred):
    """The ratings as two flat float64 arrays of one length. Shapes must match up to axes of
    length 1 (a column (n, 1) pairs with (n,)): (2, 3) against (3, 2) has six values each
    but no pairing of them."""
    truth, predicted = (_ratings_of(values, name)
                        for values, name in ((y_true, "y_true"), (y_pred, "y_pred")))
    if truth.size != predicted.size:
        raise ValueError(f"y_true and y_pred must have one value each per rating, got "
                         f"{truth.size} and {predicted.size}")
    shapes = [tuple(n for n in np.shape(values) if n != 1) for values in (y_true, y_pred)]
    if shapes[0] != shapes[1]:
        raise ValueError(f"y_true and y_pred must have one shape (up to axes of length 1), "
                         f"got {np.shape(y_true)} and {np.shape(y_pred)}")
    if truth.size == 0:
        raise ValueError("no ratings to compare")
    if not (np.isfinite(truth).all() and np.isfinite(predicted).all()):
        raise ValueError("y_true and y_pred must be finite (NaN/inf found)")
    return truth, predicted


def _ratings_of(values, name: str) -> np.ndarray:
    """``values`` as a flat float64 array; TypeError unless they are numbers (strings are
    not read as numbers; an object array must hold values that convert, None as NaN)."""
    array = check.array_of(values, name, "an array of real numbers")
    if array.size and array.dtype.kind not in "biufO":
        raise TypeError(f"{name} must hold real numbers, got dtype {array.dtype}")
    if array.dtype.kind == "O":  # astype would parse strings ("3") as numbers
        odd = next((v for v in array.reshape(-1).tolist() if not (
            v is None or isinstance(v, (numbers.Real, decimal.Decimal)))), None)
        if odd is not None:
            raise TypeError(f"{name} must hold real numbers, got {type(odd).__name__} values")
    try:
        return array.astype(np.float64).reshape(-1)
    except (TypeError, ValueError):  # an object array holding something else
        raise TypeError(f"{name} must hold real numbers, got "
                        f"{type(array.reshape(-1)[0]).__name__} values") from None


# ---------------------------------------------------------------------------- ranking
@overload
def ranking_metrics(recommended: ArrayLike, test: SparseMatrix | Interactions,
                    users: ArrayLike | None = None, *, per_user: Literal[False] = False,
                    num_threads: Integer = 0) -> dict[str, float]: ...


@overload
def ranking_metrics(recommended: ArrayLike, test: SparseMatrix | Interactions,
                    users: ArrayLike | None = None, *, per_user: bool,
                    num_threads: Integer = 0) -> dict[str, Any]: ...


def ranking_metrics(recommended: ArrayLike, test: SparseMatrix | Interactions,
                    users: ArrayLike | None = None, *, per_user: bool = False,
                    num_threads: Integer = 0) -> dict[str, Any]:
    """Ranking metrics of given top-k lists against a test matrix.

    ``recommended`` is (n, k) item ids, each in [0, test's columns) or -1 (which pads a short
    list; no other id may appear twice in a row), for the test rows ``users``
    (default: every row of ``test`` with items, in order). Returns precision, recall, map,
    ndcg, auc, mrr, hit_rate (and, with ``per_user``, a ``per_user`` dict of arrays).
    ``num_threads``: threads of the native computation (0: all cores).

    >>> import numpy as np, scipy.sparse as sp
    >>> test = sp.csr_matrix(np.array([[1, 0, 0, 1], [0, 1, 0, 0]], dtype=np.float32))
    >>> result = ranking_metrics(np.array([[3, 1], [2, 0]]), test)
    >>> result["precision"], result["hit_rate"]
    (0.3333333333333333, 0.5)
    """
    num_threads = check.check_threads(num_threads)
    per_user = check.check_flag(per_user, "per_user")
    test = _csr(test, "test")
    ids = check.id_array(recommended, "recommended", "an array of item ids")
    if ids.ndim != 2 or ids.shape[1] < 1:
        raise ValueError(f"recommended must be 2-d (users x k), got shape {ids.shape}")
    if ids.size and ids.dtype.kind not in "iu":
        raise TypeError(f"recommended must hold item ids (integers), got dtype {ids.dtype}")
    rows = (np.flatnonzero(np.diff(test.indptr) > 0) if users is None
            else check.check_ids(users, "users", test.shape[0]))
    if rows.size != ids.shape[0]:
        raise ValueError(f"recommended has {ids.shape[0]} rows for {rows.size} users")
    if rows.size and (np.diff(test.indptr)[rows] == 0).any():
        raise ValueError("every evaluated user needs at least one test item; "
                         f"users {rows[np.diff(test.indptr)[rows] == 0][:5].tolist()} have none")
    _check_ids_in_range(ids, test.shape[1])
    _check_no_repeats(ids)
    arrays = (np.ascontiguousarray(ids, dtype=np.int64), np.ascontiguousarray(rows, dtype=np.int64),
              np.ascontiguousarray(test.indptr, dtype=np.int64),
              np.ascontiguousarray(test.indices, dtype=np.int32))
    if check._native_usable():
        from . import _core

        table = _core.ranking_metrics(*arrays, n_items=test.shape[1], num_threads=num_threads)
    else:  # the NumPy definition itself
        table = reference_data.ranking_metrics(*arrays, n_items=test.shape[1])
    return _aggregate(table, per_user)


def _check_ids_in_range(ids: np.ndarray, n_items: int, items: str = "test's columns") -> None:
    """An id past the test matrix's items (or below the -1 padding) means the lists and the
    matrix use different item numberings: refused rather than counted as a miss."""
    if ids.size == 0:
        return
    low, high = ids.min(), ids.max()
    if low < -1 or high >= n_items:
        bad = ids[(ids < -1) | (ids >= n_items)]
        raise ValueError(f"recommended must hold item ids in [0, {n_items}) ({items}) or "
                         f"-1 for padding, got {bad.size} others, e.g. {bad[:3].tolist()}")


def _check_no_repeats(ids: np.ndarray) -> None:
    """A list that names an item twice would count its hit twice (precision above 1); the -1
    padding may repeat."""
    rows, columns = _repeats(ids)
    if rows.size:
        raise ValueError(f"recommended must not repeat an item id within a row (-1 pads a "
                         f"short list), got row {int(rows[0])} with item "
                         f"{int(ids[rows[0], columns[0]])} twice")


def _repeats(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, columns) of each later occurrence of an id already in its row (not -1): one
    stable sort of the rows, then neighbours compared."""
    if ids.shape[1] < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    order = np.argsort(ids, axis=1, kind="stable")
    ordered = np.take_along_axis(ids, order, axis=1)
    repeated = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] != -1)
    rows, at = np.nonzero(repeated)
    return rows, order[rows, at + 1]


def _aggregate(table: np.ndarray, per_user: bool) -> dict:
    column = lambda name: table[:, _COLUMN[name]]  # noqa: E731
    relevant = column("relevant").sum()
    mean = lambda name: float(column(name).mean()) if table.shape[0] else 0.0  # noqa: E731
    auc = column("auc")
    result: dict[str, Any] = {
        "precision": float(column("hits").sum() / relevant) if relevant else 0.0,
        "recall": mean("recall"),
        "map": mean("average_precision"),
        "ndcg": mean("ndcg"),
        "auc": float(np.nanmean(auc)) if np.isfinite(auc).any() else float("nan"),
        "mrr": mean("reciprocal_rank"),
        "hit_rate": mean("hit"),
    }
    if per_user:
        result["per_user"] = {name: table[:, i].copy() for i, name in enumerate(RANKING_COLUMNS)}
    return result


def catalog_coverage(recommended: ArrayLike, n_items: Integer) -> float:
    """Distinct valid item ids in ``recommended`` / ``n_items``."""
    n_items = check.check_int(n_items, "n_items", minimum=1)
    ids = _item_ids(recommended)
    valid = ids[(ids >= 0) & (ids < n_items)]
    if n_items > 8 * valid.size + 4096:  # a table of n_items would be mostly empty (or huge)
        return float(np.unique(valid).size / n_items)
    recommended_once = np.zeros(n_items, dtype=bool)  # cheaper than np.unique's sort or hash
    recommended_once[valid] = True
    return float(np.count_nonzero(recommended_once) / n_items)


def novelty(recommended: ArrayLike, train: SparseMatrix | Interactions) -> float:
    """Mean self-information -log2(p_i) of the recommended items, p_i = share of train users
    with item i (at least 1/n_users, so unseen items count as the rarest). Ids are in
    [0, train's columns), or -1 (padding, left out)."""
    train = _csr(train, "train")
    n_users, n_items = train.shape
    ids = _item_ids(recommended)
    _check_ids_in_range(ids, n_items, "train's columns")
    valid = ids[ids >= 0]
    if valid.size == 0:
        return 0.0
    users_per_item = _count_ids(train.indices, n_items)
    share = np.maximum(users_per_item[valid], 1) / max(n_users, 1)
    return float(np.mean(-np.log2(share)))


def _item_ids(recommended) -> np.ndarray:
    """``recommended`` as a flat array of integer item ids (an empty list, e.g. ``[]``, holds
    none whatever its dtype); TypeError for any other dtype rather than NumPy's IndexError
    (or a float id silently truncated) when the ids index the items."""
    ids = check.id_array(recommended, "recommended", "an array of item ids").reshape(-1)
    if ids.size == 0:
        return ids.astype(np.int64)
    if ids.dtype.kind not in "iu":
        raise TypeError(f"recommended must hold item ids (integers), got dtype {ids.dtype}")
    return ids


def _count_ids(ids: np.ndarray, n: int) -> np.ndarray:
    """np.bincount(ids, minlength=n) in slices: bincount widens int32 ids to int64 first, and
    for a whole training matrix (16M ids at 20M events) that copy's fresh pages cost more
    than the counting."""
    counts = np.zeros(n, dtype=np.int64)
    step = 1 << 20
    for start in range(0, ids.size, step):
        counts += np.bincount(ids[start:start + step], minlength=n)
    return counts


def intra_list_diversity(recommended: ArrayLike, item_vectors: ArrayLike, *,
                         num_threads: Integer = 0) -> float:
    """Mean over lists of the mean pairwise 1 - cosine similarity of their items' vectors
    (lists with fewer than two items are left out; -1 pads a short list). An id without a
    row in ``item_vectors`` is refused (ValueError): the lists and the table number the
    items differently; so is an id twice in a list. ``recommended`` is 2-d (lists x k);
    ``num_threads``: threads of the native computation (0: all cores)."""
    num_threads = check.check_threads(num_threads)
    vectors = check.array_of(item_vectors, "item_vectors", "an array of real numbers")
    if vectors.ndim != 2:
        raise ValueError(f"item_vectors must be 2-d (items x dim), got shape {vectors.shape}")
    if vectors.dtype.kind not in "biufO":  # complex: astype would drop the imaginary parts
        raise TypeError(f"item_vectors must hold real numbers, got dtype {vectors.dtype}")
    native = np.dtype(vectors.dtype.type)  # a big-endian float32 table stays float32
    if vectors.dtype not in (np.float32, np.float64):
        try:  # an object table may hold anything
            vectors = vectors.astype(native if native in check.FLOAT_DTYPES else np.float64)
        except (TypeError, ValueError) as error:
            raise TypeError(f"item_vectors must hold real numbers: {error}") from None
    if not check.all_finite(vectors):  # a NaN vector would count as orthogonal to every other
        raise ValueError(f"item_vectors must be finite, got "
                         f"{int((~np.isfinite(vectors)).sum())} NaN/inf values")
    ids = check.id_array(recommended, "recommended", "an array of item ids")
    if ids.ndim != 2:
        raise ValueError(f"recommended must be 2-d (users x k), got shape {ids.shape}")
    if ids.size and ids.dtype.kind not in "iu":
        raise TypeError(f"recommended must hold item ids (integers), got dtype {ids.dtype}")
    _check_ids_in_range(ids, vectors.shape[0], "item_vectors' rows")
    _check_no_repeats(ids)  # a repeat would count as a pair of identical items
    if check._native_usable():
        from . import _core

        per_list = _core.intra_list_diversity(np.ascontiguousarray(ids, dtype=np.int64),
                                              np.ascontiguousarray(vectors),
                                              num_threads=num_threads)
    else:  # the NumPy definition itself
        per_list = reference_data.intra_list_diversity(ids, vectors)
    finite = per_list[np.isfinite(per_list)]
    # 1 - cosine lies in [0, 2]; float32 rounding could stray past either end by an ulp
    return float(np.clip(finite.mean(), 0.0, 2.0)) if finite.size else float("nan")


# ---------------------------------------------------------------------------- protocol
def evaluate(model: Any, train: SparseMatrix | Interactions, test: SparseMatrix | Interactions,
             k: Integer = 10, *, cold_users: str = "include", batch_size: Integer = 1000,
             item_vectors: ArrayLike | None = None, show_progress: bool = False,
             num_threads: Integer = 0) -> dict[str, float]:
    """Recommend k items to every user with test items (items seen in ``train`` filtered)
    and score the lists; returns a dict of metrics.

    ``model`` needs ``recommend(user_ids, user_items=..., k=..., filter_seen=True)`` (every
    recfuse model) or ``recommend(userid, user_items, N=..., filter_already_liked_items=True)``
    (implicit models); with ``predict(user_ids, item_ids)`` the test values are also scored
    by RMSE and MAE. ``train`` and ``test`` are CSR matrices or ``Interactions`` of one
    shape. Users with test items but no train items (cold users) are included like
    implicit.evaluation does (``cold_users="include"``), left out (``"skip"``) or refused
    (``"raise"``); their count is returned as ``cold_users``. RMSE and MAE cover the
    evaluated users' test values (NaN when there are none). ``item_vectors`` for
    diversity (one row per item) default to the model's ``item_factors``. With k above the
    number of items the model is asked for every item and each counts once, where
    implicit.evaluation asks for k and counts its padding (item 0 again) as recommendations
    (its precision can then exceed 1). Users are asked ``batch_size`` at a time;
    ``show_progress`` shows a tqdm bar; ``num_threads`` is for the native metrics (0: all
    cores).

    Keys: precision, recall, map, ndcg, auc, mrr, hit_rate, coverage, novelty, diversity,
    (rmse, mae), k, users, cold_users.
    """
    k = check.check_k(k)
    batch_size = check.check_int(batch_size, "batch_size", minimum=1)
    check.check_choice(cold_users, "cold_users", COLD_USERS)
    show_progress = check.check_flag(show_progress, "show_progress")
    num_threads = check.check_threads(num_threads)
    if isinstance(train, Interactions) and isinstance(test, Interactions):
        for side in ("user_ids", "item_ids"):  # one shape, but other ids behind the ints?
            if getattr(train, side) is not getattr(test, side) and \
                    getattr(train, side) != getattr(test, side):
                raise ValueError(f"train and test must share their id maps, but their "
                                 f"{side} differ: build test with user_ids=train.user_ids, "
                                 f"item_ids=train.item_ids (or split one log)")
    train, test = _csr(train, "train"), _csr(test, "test")
    if train.shape != test.shape:
        raise ValueError(f"train and test must have one shape (same users and items), got "
                         f"{train.shape} and {test.shape}")
    recommend = _recommender(model)
    if item_vectors is not None and np.shape(item_vectors)[:1] != (test.shape[1],):
        raise ValueError(f"item_vectors must have one row per item ({test.shape[1]}, test's "
                         f"columns), got shape {np.shape(item_vectors)}")
    users = np.flatnonzero(np.diff(test.indptr) > 0)
    items = getattr(getattr(model, "item_factors", None), "shape", (test.shape[1],))
    if items[0] != test.shape[1]:
        raise ValueError(f"test has {test.shape[1]} items but the model knows {items[0]}: fit "
                         f"the model on train's matrix, and map the test set with the train "
                         f"id maps")
    known = getattr(model, "user_factors", None)
    if known is not None and users.size and users.max() >= known.shape[0]:
        raise ValueError(f"test has users up to id {users.max()} but the model knows "
                         f"{known.shape[0]} users: fit the model on train's matrix (or give fit "
                         f"n_users={test.shape[0]}), and map the test set with the train id "
                         f"maps")
    cold = users[np.diff(train.indptr)[users] == 0]
    if cold.size and cold_users == "raise":
        raise ValueError(f"{cold.size} test users have no train items (e.g. {cold[:5].tolist()}); "
                         "pass cold_users='include' or 'skip'")
    if cold_users == "skip":
        users = np.setdiff1d(users, cold, assume_unique=True)
    # a list holds at most every item: columns past them would be padding that no metric
    # counts (precision divides by min(k, test items))
    asked = min(k, test.shape[1])
    check.check_result_size(users.size, asked, 8)  # MemoryError naming k, before allocating
    ids = np.full((users.size, max(asked, 1)), -1, dtype=np.int64)
    from .models._common import progress_bar

    progress = progress_bar(users.size, show_progress, "evaluate", "user")
    try:
        for begin in range(0, users.size, batch_size):
            batch = users[begin:begin + batch_size]
            rows = train[batch]
            # (implicit models pad a short list with item 0, or give k ids: cut to asked)
            got = np.asarray(recommend(batch, rows, asked)).reshape(batch.size, -1)[:, :asked]
            if got.size and got.dtype.kind not in "iu":  # not truncated into ids
                raise TypeError(f"model.recommend must return integer item ids, got dtype "
                                f"{got.dtype}")
            # implicit models fill a list short of unseen items with the seen ones (score
            # -FLT_MAX): not recommendations
            got = np.where(_stored_in(rows, got), -1, got)
            ids[begin:begin + batch.size, : got.shape[1]] = got
            progress.update(batch.size)
    finally:
        progress.close()
    # some implicit versions fill a short list with item 0 again instead
    ids[_repeats(ids)] = -1
    result = ranking_metrics(ids, test, users, num_threads=num_threads)
    result["coverage"] = catalog_coverage(ids, test.shape[1]) if ids.size else 0.0
    result["novelty"] = novelty(ids, train)
    vectors = item_vectors if item_vectors is not None else getattr(model, "item_factors", None)
    result["diversity"] = (intra_list_diversity(ids, vectors, num_threads=num_threads)
                           if vectors is not None and ids.size else float("nan"))
    if callable(getattr(model, "predict", None)):  # the evaluated users' test values
        coo = test[users].tocoo()
        result["rmse"] = result["mae"] = float("nan")  # no test values: nothing to compare
        if coo.nnz:
            predicted = model.predict(users[coo.row], coo.col)
            result["rmse"], result["mae"] = rmse(coo.data, predicted), mae(coo.data, predicted)
    result.update(k=k, users=int(users.size), cold_users=int(cold.size))
    return result


def _stored_in(matrix: sp.csr_matrix, ids: np.ndarray) -> np.ndarray:
    """Where ``ids[r, c]`` is a column stored in ``matrix``'s row r (canonical CSR: each row's
    columns ascending, so the (row, column) keys of the entries come sorted)."""
    n_cols = np.int64(matrix.shape[1])
    keys = np.repeat(np.arange(matrix.shape[0], dtype=np.int64), np.diff(matrix.indptr))
    keys = keys * n_cols + matrix.indices
    if keys.size == 0:
        return np.zeros(ids.shape, dtype=bool)
    wanted = np.arange(ids.shape[0], dtype=np.int64)[:, None] * n_cols + ids
    found = keys[np.minimum(np.searchsorted(keys, wanted), keys.size - 1)] == wanted
    return found & (ids >= 0) & (ids < n_cols)


def ranking_metrics_at_k(model: Any, train: SparseMatrix | Interactions,
                         test: SparseMatrix | Interactions, k: Integer | None = None,
                         batch_size: Integer = 1024, *, K: Integer | None = None,
                         show_progress: bool = False, num_threads: Integer = 0
                         ) -> dict[str, float]:
    """``evaluate`` under its earlier name (precision and ndcg among the keys); returns its
    dict. ``k`` defaults to 10.

    It also takes the keywords of ``implicit.evaluation.ranking_metrics_at_k``: ``K`` (the
    list length, another name for ``k``: giving both is a TypeError), ``show_progress`` and
    ``num_threads`` (as for ``evaluate``), so a call written for implicit runs unchanged.
    """
    if K is not None:
        if k is not None:
            raise TypeError(f"give k or K (implicit's name), not both: got k={k!r} and K={K!r}")
        k = check.check_k(K, "K")
    elif k is None:
        k = 10
    return evaluate(model, train, test, k, batch_size=batch_size, show_progress=show_progress,
                    num_threads=num_threads)


def _recommender(model):
    """A function (user ids, their train rows, k) -> (n, <=k) ids for either convention."""
    method = getattr(model, "recommend", None)
    if not callable(method):
        raise TypeError(f"model must have a recommend method, got {type(model).__name__}")
    try:
        parameters = inspect.signature(method).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        parameters = {}
    if "N" in parameters:
        return lambda users, rows, k: method(users, rows, N=k,
                                             filter_already_liked_items=True)[0]
    if "user_items" in parameters:
        return lambda users, rows, k: method(users, user_items=rows, k=k, filter_seen=True)[0]
    return lambda users, rows, k: method(users, k=k, filter_seen=True)[0]  # its own seen items


def _csr(data, name: str) -> sp.csr_matrix:
    if isinstance(data, Interactions):
        return data.matrix
    if not sp.issparse(data):
        raise TypeError(f"{name} must be recfuse.Interactions or a scipy.sparse matrix, got "
                        f"{type(data).__module__}.{type(data).__name__}")
    return check.sorted_rows(sp.csr_matrix(check.to_csr(data, name)), add_repeats=True)

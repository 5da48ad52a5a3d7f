"""Adversarial hunt on the retrieval API the factor models share (recommend, similar_items,
similar_users, recommend_all and its Parquet output, ALS fold-ins of new users), checked
against a brute-force NumPy oracle written from the documented contract: scores descending,
ties by the smaller id, exactly k columns padded with -1 / -inf, no id twice, 1-d results
for one id and 2-d for a list."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from topk_checks import oracle_topk

import recfuse

FEW = settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
IMPLICIT = ["ALS-cg", "ALS-cholesky", "BPR"]
RATING = ["SVD", "SVD-unbiased", "SVDpp", "ExplicitALS", "ExplicitALS-unbiased"]
F = 3  # factors


# ---------------------------------------------------------------------- the oracle
def check_topk(ids, got, scores, allowed, k, exact):
    """``exact``: integer factors, so the ids must be the oracle's; else (trained factors)
    the scores must match and the order must follow the scores the call returned."""
    assert ids.shape == got.shape == (len(scores), k) and ids.dtype == np.int64
    want_ids, want = oracle_topk(scores, allowed, k)
    valid = ids >= 0
    np.testing.assert_array_equal(valid, want_ids >= 0)  # as many, padding last
    assert np.all(np.isneginf(got[~valid])) and np.all(ids[~valid] == -1)
    np.testing.assert_allclose(got[valid], want[valid], rtol=1e-4, atol=1e-5)
    for r in range(len(ids)):
        row, s = ids[r, valid[r]], got[r, valid[r]]
        assert np.unique(row).size == row.size and allowed[r, row].all()
        np.testing.assert_allclose(s, scores[r, row], rtol=1e-4, atol=1e-5)
        assert np.all((s[:-1] > s[1:]) | ((s[:-1] == s[1:]) & (row[:-1] < row[1:])))
    if exact:
        np.testing.assert_array_equal(ids, want_ids)


def cosine_scores(V, rows):
    """Cosines of integer rows: the dot products exact (an orthogonal pair exactly 0)."""
    V = np.asarray(V, np.float64)
    lengths = np.linalg.norm(V, axis=1)
    norms = np.outer(lengths[rows], lengths)
    return np.divide(V[rows] @ V.T, norms, out=np.zeros_like(norms), where=norms > 0)


# ---------------------------------------------------------------------- models
def implicit_model(name, R, hand, seed=0, dtype=np.float32):
    """ALS/BPR on R; ``hand``: integer factors (and BPR item biases) set by hand."""
    rng = np.random.default_rng(seed)
    X, Y = (rng.integers(-2, 3, (n, F)).astype(dtype) for n in R.shape)
    if name == "BPR":
        model = recfuse.BPR(factors=F, iterations=2, random_state=seed, num_threads=1,
                            dtype=dtype).fit(R)
        if hand:  # plain attributes (the model's own fit assigns them so)
            model.user_factors, model.item_factors = X, Y
            model.item_bias = rng.integers(-1, 2, R.shape[1]).astype(dtype)
        return model
    model = recfuse.ALS(factors=F, iterations=0 if hand else 2, solver=name[4:],
                        random_state=seed, num_threads=1, dtype=dtype)
    # iterations=0 keeps the start exactly (ALS.fit's docstring)
    return model.fit(R, initial_factors=(X, Y) if hand else None)


def implicit_scores(model, ids):
    S = model.user_factors[ids].astype(np.float64) @ model.item_factors.T.astype(np.float64)
    if isinstance(model, recfuse.BPR):  # p_u·q_i + b_i (BPR's docstring)
        S = S + model.item_bias
    return S


def rating_model(name, users, items, ratings, shape, hand, seed=0, dtype=np.float32):
    """SVD/SVDpp/ExplicitALS on the ratings, one user and one item more than rated;
    ``hand``: integer starting factors and no training step (SVD++'s y_j zero)."""
    cls = getattr(recfuse, name.split("-")[0])
    kwargs = {"biased": False} if name.endswith("unbiased") else {}
    steps = 0 if hand else 2
    kwargs["iterations" if cls is recfuse.ExplicitALS else "epochs"] = steps
    model = cls(factors=F, random_state=seed, num_threads=1, dtype=dtype, **kwargs)
    start = None
    if hand:
        rng = np.random.default_rng(seed)
        start = [rng.integers(-2, 3, (n, F)).astype(dtype) for n in shape]
        if cls is recfuse.SVDpp:
            start.append(np.zeros((shape[1], F), dtype))
    return model.fit(users, items, ratings, n_users=shape[0], n_items=shape[1],
                     initial_factors=start)


def rating_scores(model, ids, users, items):
    """The documented prediction, unclipped: μ + b_u + b_i + q_i·(p_u [+ z_u]) with
    Surprise's fallbacks for ids without training ratings (unbiased: q_i·p_u or μ)."""
    n_users, n_items = model.user_factors.shape[0], model.item_factors.shape[0]
    known_u = np.bincount(users, minlength=n_users) > 0
    known_i = np.bincount(items, minlength=n_items) > 0
    P = model.user_factors.astype(np.float64)
    if isinstance(model, recfuse.SVDpp):  # z_u = |N(u)|^-1/2 Σ y_j
        N = sp.csr_matrix((np.ones(users.size), (users, items)), shape=(n_users, n_items))
        count = np.maximum(np.asarray(N.sum(axis=1)).ravel(), 1)
        P = P + (N @ model.implicit_factors.astype(np.float64)) / np.sqrt(count)[:, None]
    S = (P @ model.item_factors.T.astype(np.float64)) * np.outer(known_u, known_i)
    if getattr(model, "biased", True):
        S += model.global_mean + (model.user_bias * known_u)[:, None] + model.item_bias * known_i
    else:
        S = np.where(np.outer(known_u, known_i), S, model.global_mean)
    return S[ids]


# ---------------------------------------------------------------------- data
@st.composite
def matrices(draw, max_users=6, max_items=7):
    """Values 0 (stored zero), 1 or 2 at random cells; switchable: a user with nothing
    (row 0), a user who saw everything (row 1), an item nobody saw (the last)."""
    n_users, n_items = draw(st.integers(2, max_users)), draw(st.integers(2, max_items))
    cells = draw(st.lists(st.integers(0, 3), min_size=n_users * n_items,
                          max_size=n_users * n_items))
    dense = np.array(cells, np.float32).reshape(n_users, n_items) - 1  # -1: no entry
    if draw(st.booleans()):
        dense[1] = np.maximum(dense[1], 1)
    dense[0] = -1
    if draw(st.booleans()):
        dense[:, -1] = -1
    rows, cols = np.nonzero(dense >= 0)
    return sp.csr_matrix((dense[rows, cols], (rows, cols)), shape=dense.shape)


@st.composite
def queries(draw, n_users, n_items):
    """user_ids (repeats allowed), k (1 .. past n_items), filter_seen, given seen rows,
    items= (None, empty, with repeats) and exclude_items= (may overlap items=)."""
    ids = draw(st.lists(st.integers(0, n_users - 1), min_size=1, max_size=6))
    k = draw(st.integers(1, n_items + 3))
    item = st.integers(0, n_items - 1)
    items = draw(st.one_of(st.none(), st.just([]), st.lists(item, max_size=2 * n_items)))
    exclude = draw(st.one_of(st.none(), st.lists(item, max_size=n_items)))
    given_rows = None
    if draw(st.booleans()):
        flags = draw(st.lists(st.booleans(), min_size=len(ids) * n_items,
                              max_size=len(ids) * n_items))
        given_rows = sp.csr_matrix(np.array(flags, np.float32).reshape(len(ids), n_items))
    return ids, k, draw(st.booleans()), given_rows, items, exclude


def allowed_items(seen_rows, n_items, filter_seen, items, exclude):
    """Seen: every stored entry, whatever its value (ItemIndex's ``exclude`` contract; the
    models' docstrings say "the items in the user's row", which a stored zero is in)."""
    allowed = np.ones((seen_rows.shape[0], n_items), bool)
    if filter_seen:
        for r in range(seen_rows.shape[0]):
            allowed[r, seen_rows.indices[seen_rows.indptr[r]:seen_rows.indptr[r + 1]]] = False
    if items is not None:
        allowed &= np.isin(np.arange(n_items), items)
    if exclude is not None:
        allowed &= ~np.isin(np.arange(n_items), exclude)
    return allowed


def run_and_check(model, scores_of, seen_matrix, n_items, query, exact):
    ids, k, filter_seen, given_rows, items, exclude = query
    got_ids, got = model.recommend(ids, user_items=given_rows, k=k, filter_seen=filter_seen,
                                   items=items, exclude_items=exclude)
    seen = given_rows if given_rows is not None else seen_matrix[ids]
    allowed = allowed_items(seen, n_items, filter_seen, items, exclude)
    check_topk(got_ids, got, scores_of(ids), allowed, k, exact)
    one_ids, one = model.recommend(np.int64(ids[0]), user_items=None if given_rows is None
                                   else given_rows[0], k=k, filter_seen=filter_seen,
                                   items=items, exclude_items=exclude)
    assert one_ids.shape == one.shape == (k,)  # a single id: 1-d, the batch's row
    np.testing.assert_array_equal(one_ids, got_ids[0])
    np.testing.assert_allclose(one, got[0], rtol=1e-6)


# ---------------------------------------------------------------------- recommend
@FEW
@given(data=st.data(), name=st.sampled_from(IMPLICIT), hand=st.booleans(),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_implicit_recommend_is_the_oracle_top_k(data, name, hand, dtype):
    R = data.draw(matrices())
    model = implicit_model(name, R, hand, dtype=dtype)
    query = data.draw(queries(*R.shape))
    run_and_check(model, lambda ids: implicit_scores(model, ids), R, R.shape[1], query, hand)


@FEW
@given(data=st.data(), name=st.sampled_from(RATING), hand=st.booleans(),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_rating_recommend_is_the_oracle_top_k(data, name, hand, dtype):
    R = data.draw(matrices()).tocoo()
    if R.nnz == 0:
        R = sp.coo_matrix(([3.0], ([1], [0])), shape=R.shape)
    users, items = R.row.astype(np.int64), R.col.astype(np.int64)
    ratings = 1.0 + np.arange(users.size) % 5  # 1..5: every value a rating
    shape = (R.shape[0] + 1, R.shape[1] + 1)  # one user and one item without ratings
    model = rating_model(name, users, items, ratings, shape, hand, dtype=dtype)
    seen = sp.csr_matrix((np.ones(users.size), (users, items)), shape=shape)
    query = data.draw(queries(*shape))
    run_and_check(model, lambda ids: rating_scores(model, ids, users, items), seen, shape[1],
                  query, hand)


@pytest.mark.parametrize("name", IMPLICIT + RATING)
def test_items_out_of_range_empty_and_repeated(name):
    model = tiny_model(name)
    n_items = model.item_factors.shape[0]
    ids, scores = model.recommend([2, 2], k=3, items=[])  # no candidate: all padding
    assert ids.shape == (2, 3) and np.all(ids == -1) and np.all(np.isneginf(scores))
    ids, _ = model.recommend(2, k=3, items=[1, 1, 1], filter_seen=False)
    np.testing.assert_array_equal(ids, [1, -1, -1])  # a repeat is one candidate
    ids, _ = model.recommend(2, k=3, items=[1, 0], exclude_items=[0, 1], filter_seen=False)
    np.testing.assert_array_equal(ids, [-1, -1, -1])
    ids, _ = model.recommend(2, k=n_items + 2, items=[1, 0, 1], exclude_items=[0, 0])
    np.testing.assert_array_equal(ids, [1] + [-1] * (n_items + 1))  # user 2 saw 0 and 2


# ---------------------------------------------------------------------- similar_*
@FEW
@given(data=st.data(), name=st.sampled_from(["ALS-cg", "BPR", "SVD"]))
def test_similar_lists_are_the_cosine_oracle_with_ties_by_id(data, name):
    """Integer vectors with repeated rows (a tie at cosine 1: the smaller id first, even
    before the item itself) and zero rows (similar to nothing: scores 0)."""
    n = data.draw(st.integers(2, 7))
    pool = [[0, 0, 0], [1, 0, 0], [0, 1, -1], [2, 1, 0], [-1, 2, 1], [1, 1, 1]]
    V = np.array([pool[i] for i in data.draw(st.lists(st.integers(0, 5), min_size=n,
                                                      max_size=n))], np.float32)
    U = np.array(pool[1:4], np.float32)
    R = sp.csr_matrix(np.ones((3, n), np.float32))
    if name == "BPR":
        model = implicit_model(name, R, hand=False)
        model.user_factors, model.item_factors = U, V
    else:  # SVD: every id rated, so every vector is used; no training step
        cls, steps = (recfuse.SVD, "epochs") if name == "SVD" else (recfuse.ALS, "iterations")
        model = cls(factors=F, num_threads=1, **{steps: 0}).fit(R, initial_factors=(U, V))
    side = data.draw(st.sampled_from(["items", "users"]))
    table = V if side == "items" else U
    call = model.similar_items if side == "items" else model.similar_users
    rows = data.draw(st.lists(st.integers(0, len(table) - 1), min_size=1, max_size=4))
    k = data.draw(st.integers(1, len(table) + 2))
    ids, scores = call(rows, k=k)
    check_topk(ids, scores, cosine_scores(table, rows), np.ones((len(rows), len(table)), bool),
               k, exact=True)
    one_ids, _ = call(rows[0], k=k)
    assert one_ids.shape == (k,) and np.array_equal(one_ids, ids[0])


# ---------------------------------------------------------------------- recommend_all
def tiny_model(name):
    R = sp.csr_matrix(np.array([[0, 0, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 2, 0, 0],
                                [0, 3, 0, 1, 0], [1, 0, 0, 0, 0], [0, 1, 1, 0, 0]], np.float32))
    if name in IMPLICIT:
        return implicit_model(name, R, hand=False)
    coo = R.tocoo()  # user 6 and item 5 without ratings
    return rating_model(name, coo.row.astype(np.int64), coo.col.astype(np.int64),
                        coo.data.astype(np.float64) + 1, (7, 6), hand=False)


@pytest.mark.parametrize("name", IMPLICIT + RATING)
@pytest.mark.parametrize("filter_seen", [True, False])
def test_recommend_all_rows_equal_per_user_recommend(name, filter_seen, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    model = tiny_model(name)
    n_users, n_items = model.user_factors.shape[0], model.item_factors.shape[0]
    for k in (1, n_items + 2):
        one = [model.recommend(u, k=k, filter_seen=filter_seen) for u in range(n_users)]
        want_ids, want = np.array([i for i, _ in one]), np.array([s for _, s in one])
        for batch in (1, 2, 4, n_users, n_users + 5):
            chunks = list(model.recommend_all(k, batch_size=batch, filter_seen=filter_seen))
            assert [len(u) for u, _, _ in chunks] == \
                [min(batch, n_users - b) for b in range(0, n_users, batch)]
            users = np.concatenate([u for u, _, _ in chunks])
            np.testing.assert_array_equal(users, np.arange(n_users))
            np.testing.assert_array_equal(np.concatenate([i for _, i, _ in chunks]), want_ids)
            np.testing.assert_array_equal(np.concatenate([s for _, _, s in chunks]), want)
        path = tmp_path / f"{name}-{k}.parquet"
        rows = model.recommend_all(k, batch_size=3, filter_seen=filter_seen, path=path)
        table, keep = pq.read_table(path), want_ids >= 0  # padding dropped
        assert rows == table.num_rows == keep.sum()
        want_columns = {"user": np.repeat(np.arange(n_users), k)[keep.ravel()],
                        "rank": np.tile(np.arange(k), n_users)[keep.ravel()],
                        "item": want_ids[keep], "score": want[keep]}
        assert table.column_names == list(want_columns)
        for column, values in want_columns.items():
            np.testing.assert_array_equal(table.column(column).to_numpy(), values)


@pytest.mark.parametrize("name", IMPLICIT + RATING)
def test_user_items_are_checked_also_when_not_filtering(name):
    model = tiny_model(name)
    n_items = model.item_factors.shape[0]
    wrong = sp.csr_matrix(np.ones((2, n_items), np.float32))  # two rows for one user
    for filter_seen in (True, False):
        with pytest.raises(ValueError, match="user_items"):
            model.recommend([0], k=2, filter_seen=filter_seen, user_items=wrong)


def test_hand_assigned_tables_of_two_widths_are_named():
    model = tiny_model("ALS-cg")
    model.user_factors = np.ones((model.user_factors.shape[0], F + 1), np.float32)
    with pytest.raises(ValueError, match="user_factors and item_factors must have one number"):
        model.recommend(0)


@pytest.mark.parametrize("name", ["ALS-cg", "SVD"])
def test_recommend_all_refuses_results_past_memory_at_the_call(name, tmp_path):
    model = tiny_model(name)
    with pytest.raises(MemoryError, match="lower k"):
        model.recommend_all(2**31 - 1, batch_size=4)  # the iterator, before its first chunk
    # a file drops the padding: it asks for at most every item, and is written
    path = tmp_path / "every.parquet"
    assert model.recommend_all(2**31 - 1, path=path) == \
        model.recommend_all(model.item_factors.shape[0], path=tmp_path / "items.parquet")


def test_parquet_schema_does_not_depend_on_the_user_count(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    schemas = []
    for rows in (0, 2):  # ALS fits a matrix of 0 users
        model = recfuse.ALS(factors=2, iterations=1, dtype=np.float64, num_threads=1)
        model.fit(sp.csr_matrix(np.ones((rows, 3))))
        path = tmp_path / f"{rows}.parquet"
        assert model.recommend_all(2, filter_seen=False, path=path) == rows * 2
        schemas.append(pq.read_schema(path))
    assert schemas[0].field("score").type == schemas[1].field("score").type


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize("name", IMPLICIT + RATING)
def test_bad_arguments_are_errors_naming_them_and_change_nothing(name):
    model = tiny_model(name)
    n_users, n_items = model.user_factors.shape[0], model.item_factors.shape[0]
    tables = (model.user_factors.copy(), model.item_factors.copy())
    before = model.recommend(np.arange(n_users), k=3)
    cases = [
        (ValueError, "user_ids", lambda: model.recommend(n_users)),
        (ValueError, "user_ids", lambda: model.recommend([0, -1])),
        (TypeError, "user_ids", lambda: model.recommend(1.0)),
        (TypeError, "user_ids", lambda: model.recommend(np.array([0.0, 1.0]))),
        (TypeError, "user_ids", lambda: model.recommend(True)),
        (ValueError, "user_ids", lambda: model.recommend([[0, 1]])),
        (ValueError, "k", lambda: model.recommend(0, k=0)),
        (ValueError, "k", lambda: model.recommend(0, k=-2)),
        (TypeError, "k", lambda: model.recommend(0, k=1.0)),
        (ValueError, "user_items", lambda: model.recommend(
            [0, 1], user_items=sp.csr_matrix((1, n_items)))),
        (ValueError, "user_items", lambda: model.recommend(
            0, user_items=sp.csr_matrix((1, n_items + 1)))),
        (TypeError, "user_items", lambda: model.recommend(0, user_items=np.zeros((1, n_items)))),
        (ValueError, "exclude_items", lambda: model.recommend(0, exclude_items=[n_items])),
        (ValueError, "items", lambda: model.recommend(0, items=[n_items])),
        (ValueError, "items", lambda: model.recommend(0, items=[0, -1])),
        (ValueError, "items", lambda: model.recommend(0, items=[2**62])),
        (TypeError, "items", lambda: model.recommend(0, items=[0.5])),
        (ValueError, "item_ids", lambda: model.similar_items(n_items)),
        (TypeError, "item_ids", lambda: model.similar_items(0.0)),
        (ValueError, "user_ids", lambda: model.similar_users(-1)),
        (ValueError, "k", lambda: model.similar_users(0, k=-1)),
        (ValueError, "k", lambda: model.recommend_all(k=0)),
        (TypeError, "batch_size", lambda: model.recommend_all(batch_size=2.0)),
        (ValueError, "batch_size", lambda: model.recommend_all(batch_size=-1)),
    ]
    for error, argument, call in cases:
        with pytest.raises(error, match=rf"\b{argument}\b"):
            call()
    np.testing.assert_array_equal(model.user_factors, tables[0])
    np.testing.assert_array_equal(model.item_factors, tables[1])
    for a, b in zip(model.recommend(np.arange(n_users), k=3), before):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------- fold-in
@pytest.mark.parametrize("solver", ["cg", "cholesky"])
def test_fold_in_of_new_users_is_the_closed_form_and_is_served(solver):
    """update_users of ids past the known users: the exact solution of the user's system
    (cg with cg_steps = factors converges on it), the rows in between zero vectors, and
    every retrieval call serves the grown table."""
    R = sp.csr_matrix(np.array([[1, 0, 2, 0, 0], [0, 1, 1, 0, 0], [1, 1, 0, 1, 0]],
                               np.float64))
    model = recfuse.ALS(factors=F, iterations=2, regularization=0.1, alpha=2.0, cg_steps=F,
                        solver=solver, dtype=np.float64, random_state=0, num_threads=1).fit(R)
    Y, X_old = model.item_factors.copy(), model.user_factors.copy()
    row = sp.csr_matrix(np.array([[3.0, 0, 0, 1, 0]]))
    for error, name, ids, rows in ((ValueError, "user_items", [4], sp.csr_matrix((1, 6))),
                                   (TypeError, "user_ids", [4.0], row),
                                   (ValueError, "user_ids", [-4], row)):
        with pytest.raises(error, match=name):
            model.update_users(ids, rows)
    assert model.user_factors.shape == (3, F)  # refused: nothing changed
    vector = model.update_users([4], row)
    c = 1 + 2.0 * row.toarray()[0]  # c = 1 + alpha r, p = [r > 0]
    A = Y.T @ (c[:, None] * Y) + 0.1 * np.eye(F)
    np.testing.assert_allclose(vector[0], np.linalg.solve(A, Y.T @ (c * (c > 1))), rtol=1e-6)
    X = model.user_factors
    assert X.shape == (5, F) and not X[3].any()  # the user in between: a zero vector
    np.testing.assert_array_equal(X[[0, 1, 2, 4]], np.vstack([X_old, vector]))
    ids, scores = model.recommend([4, 3, 4], k=6)
    allowed = np.ones((3, 5), bool)
    allowed[[0, 2]] = row.toarray()[0] == 0  # the new row is what is seen
    check_topk(ids, scores, X[[4, 3, 4]] @ Y.T, allowed, 6, exact=False)
    np.testing.assert_array_equal(ids[1], [0, 1, 2, 3, 4, -1])  # zero vector: id order
    chunks = list(model.recommend_all(6, batch_size=2))
    np.testing.assert_array_equal(np.concatenate([i for _, i, _ in chunks])[[4, 3]], ids[:2])
    similar, cosines = model.similar_users(4, k=5)
    assert similar[0] == 4 and cosines[list(similar).index(3)] == 0  # the zero user: 0


# ---------------------------------------------------------------------- found bugs
@pytest.mark.parametrize("name", ["SVD", "SVDpp", "ExplicitALS"])
def test_rating_top_1_is_the_first_of_top_2(name):
    """q_i·p_u of items 0 and 1 are 1e-8 and 2e-8: distinct in float32, both 3.0 once
    μ = 3 is added. Whichever order is right, a shorter list must be a prefix of a longer
    one (the contract orders every row by score, then id)."""
    cls = getattr(recfuse, name)
    start = [np.ones((2, 1), np.float32), np.array([[1e-8], [2e-8], [0.0]], np.float32)]
    if cls is recfuse.SVDpp:
        start.append(np.zeros((3, 1), np.float32))
    steps = {"iterations" if cls is recfuse.ExplicitALS else "epochs": 0}
    model = cls(factors=1, num_threads=1, **steps).fit(
        [0, 0, 1], [0, 1, 0], [3.0, 3.0, 3.0], n_items=3, initial_factors=start)
    two, scores = model.recommend(0, k=2, filter_seen=False)
    assert scores[0] == scores[1]  # the computed scores tie ...
    assert two[0] < two[1]  # ... and are ordered by id within the list
    np.testing.assert_array_equal(model.recommend(0, k=1, filter_seen=False)[0], two[:1])


def searches(monkeypatch):
    """Records (backend, num_threads) of every ItemIndex search."""
    from recfuse.retrieval import ItemIndex

    seen, search = [], ItemIndex.search

    def spy(self, *args, **kwargs):
        seen.append((self._module.NAME, kwargs.get("num_threads", 0)))
        return search(self, *args, **kwargs)

    monkeypatch.setattr(ItemIndex, "search", spy)
    return seen


@pytest.mark.parametrize("name", ["SVD-unbiased", "SVDpp", "ExplicitALS"])
def test_rating_recommend_searches_on_the_models_threads(name, monkeypatch):
    model = tiny_model(name)  # num_threads=1; user 6 has no rating (unbiased: ties)
    seen = searches(monkeypatch)
    model.recommend([1, 6], k=3), model.similar_items(1, k=3)
    assert seen and all(threads == 1 for _, threads in seen)


@pytest.mark.parametrize("name", ["ALS-cg", "BPR", "SVD", "SVDpp", "ExplicitALS"])
def test_set_params_backend_reaches_retrieval_at_once(name, monkeypatch):
    """set_params' docstring: backend and num_threads, read by fold-ins and recommend,
    take effect at once on a fitted model."""
    model = tiny_model(name)
    model.recommend(1, k=3), model.similar_items(1, k=3)  # the indexes are built
    seen = searches(monkeypatch)
    model.set_params(backend="numpy")
    model.recommend(1, k=3), model.similar_items(1, k=3), model.similar_users(1, k=3)
    assert [backend for backend, _ in seen] == ["numpy"] * 3

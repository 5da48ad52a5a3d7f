"""Adversarial hunt on the semantics of recfuse.BPR, recfuse.ExplicitALS and recfuse.SVDpp,
against oracles written here from their docstrings (python/recfuse/models/bpr.py,
explicit_als.py, sgd.py), the README section "Ratings: SVD, SVD++, explicit ALS and BPR" and
first principles, on the host backends (cpu, numba; numpy where cheap).

The contract used here:
- BPR: score(u, i) = p_u.q_i + b_i. Each iteration visits every positive pair (stored value
  > 0 once repeated entries are added up) once; its negative is drawn from the pair's block
  column bin and redrawn until the user has no stored entry for it (zeros and negative values
  count as seen), at most ``max_tries`` draws, else the pair is skipped. The step is
  x = p.(q_i - q_j) + b_i - b_j, s = sigma(-x); p += lr (s (q_i - q_j) - reg p),
  q_i += lr (s p - reg q_i), q_j += lr (-s p - reg q_j), b_i += lr (s - reg b_i),
  b_j += lr (-s - reg b_j). Start: uniform in +-0.5/factors. recommend ranks by p.q + b
  without stored entries, ties by smaller id.
- ExplicitALS: each half-sweep is the exact minimiser of
  sum_i (r_ui - mu - b_i - b_u - x_u.y_i)^2 + n_u (reg |x_u|^2 + reg_bias b_u^2) (here
  solved by numpy.linalg.lstsq on the stacked system), repeated pairs each one more rating,
  users first; ratings with max|r|^2 x longest row above the dtype's largest value are
  refused with a ValueError.
- SVD++: user passes (z_u once at the start of the pass, y_j of N(u) updated once at its end
  with the pass's summed gradient and shrinkage (1 - lr_yj reg_yj)^c), written here directly;
  predict = mu + b_u + b_i + q_i.(p_u + |N(u)|^-1/2 sum_{j in N(u)} y_j), N(u) the distinct
  training items; unknown ids fall back to mu plus the known biases; clip bounds by the
  scale; recommend scores are the unclipped predictions.

Findings (strict xfail): BPR's default grid gives bins of single items on a small catalogue
with many pairs, so every pair is skipped and nothing trains; ``max_tries`` beyond int32
passes the constructor and fails inside the native call with pybind's "incompatible function
arguments".
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import recfuse
from conftest import backend_params
from recfuse import reference
from recfuse._sgd.common import Pattern, make_blocks, user_major_order

HOST = [p for p in backend_params(("cpu", "numba"), family="sgd")]
HYPOTHESIS = settings(max_examples=30, deadline=None, database=None,
                      suppress_health_check=[HealthCheck.too_slow,
                                             HealthCheck.function_scoped_fixture])


# ------------------------------------------------------------------------------------ BPR


@st.composite
def implicit_matrices(draw, max_users=7, max_items=7):
    """A users x items CSR, possibly non-canonical (repeated entries), with explicit zeros,
    negative values, empty rows and columns."""
    n_users = draw(st.integers(1, max_users))
    n_items = draw(st.integers(1, max_items))
    n = draw(st.integers(0, 3 * max_users))
    rows = draw(st.lists(st.integers(0, n_users - 1), min_size=n, max_size=n))
    cols = draw(st.lists(st.integers(0, n_items - 1), min_size=n, max_size=n))
    values = draw(st.lists(st.sampled_from([1.0, 2.0, 0.0, -1.0, 0.5]), min_size=n,
                           max_size=n))
    coo = sp.coo_matrix((np.array(values, dtype=np.float64),
                         (np.array(rows, dtype=np.int64), np.array(cols, dtype=np.int64))),
                        shape=(n_users, n_items))
    # COO -> CSR keeps the repeats unsummed (scipy sums them lazily): a non-canonical matrix
    matrix = sp.csr_matrix((coo.data, (coo.row, coo.col)), shape=coo.shape) if n else \
        sp.csr_matrix((n_users, n_items))
    return matrix


def canonical(matrix: sp.csr_matrix) -> sp.csr_matrix:
    """Repeated entries added up, indices sorted, explicit zeros kept (they are stored)."""
    out = matrix.copy()
    out.sum_duplicates()
    return out


def bpr_oracle(matrix, factors, iterations, lr, reg, grid, max_tries, seed):
    """The documented BPR fit rebuilt from the generator stream fit draws from, in float64:
    the start, the blocks of the positive pairs, the per-iteration seeds; negatives drawn by
    the shared sampler against every stored entry; the epochs by the reference step."""
    R = canonical(matrix)
    n_users, n_items = R.shape
    rng = np.random.default_rng(seed)
    P = (rng.random((n_users, factors)) - 0.5) / factors
    Q = (rng.random((n_items, factors)) - 0.5) / factors
    bias = np.zeros(n_items)
    coo = R.tocoo()
    positive = coo.data > 0
    users, items = coo.row[positive], coo.col[positive]
    blocks = make_blocks(users, items, n_users, n_items, grid, rng)
    base = int(rng.integers(0, 2**63))
    all_negatives = []
    for iteration in range(iterations):
        negatives = reference.bpr_sample_negatives(
            blocks.users, blocks.offsets, grid, R, blocks.bin_items, blocks.bin_offsets,
            (base + iteration) % 2**64, max_tries)
        all_negatives.append((blocks.users, negatives))
        P, Q, bias = reference.bpr_sgd_epoch(blocks.users, blocks.items, negatives, P, Q, bias,
                                             lr=lr, reg=reg, order=np.flatnonzero(negatives >= 0))
    return P, Q, bias, all_negatives


@pytest.mark.parametrize("backend", HOST)
@HYPOTHESIS
@given(matrix=implicit_matrices(), factors=st.sampled_from([1, 3, 8]),
       grid=st.integers(1, 3), max_tries=st.integers(1, 6), seed=st.integers(0, 2**32 - 1))
def test_bpr_fit_is_the_documented_epochs_over_positive_pairs_and_stored_entries(
        backend, matrix, factors, grid, max_tries, seed):
    skipped = []
    model = recfuse.BPR(factors=factors, iterations=2, lr=0.05, reg=0.02, grid=grid,
                        max_tries=max_tries, dtype=np.float64, backend=backend,
                        num_threads=1, random_state=seed)
    model.fit(matrix, callback=lambda it, s: skipped.append(s))
    P, Q, bias, negatives = bpr_oracle(matrix, factors, 2, 0.05, 0.02, grid, max_tries, seed)
    np.testing.assert_allclose(model.user_factors, P, rtol=0, atol=1e-10)
    np.testing.assert_allclose(model.item_factors, Q, rtol=0, atol=1e-10)
    np.testing.assert_allclose(model.item_bias, bias, rtol=0, atol=1e-10)
    assert skipped == [int((n < 0).sum()) for _, n in negatives]
    # every negative the oracle kept is unseen: no stored entry of any value (0 and -1 too)
    R = canonical(matrix)
    stored = np.zeros(matrix.shape, dtype=bool)
    stored[np.repeat(np.arange(R.shape[0]), np.diff(R.indptr)), R.indices] = True
    for users, n in negatives:
        kept = n >= 0
        assert not stored[users[kept], n[kept]].any()


@pytest.mark.parametrize("backend", HOST)
def test_bpr_a_user_who_saw_all_but_one_item_always_gets_that_item(backend):
    matrix = sp.csr_matrix(np.array([[1, 1, 1, 1, 0], [1, 0, 0, 0, 0]], dtype=np.float32))
    skipped = []
    model = recfuse.BPR(factors=2, iterations=5, grid=1, max_tries=500, random_state=0,
                        backend=backend, dtype=np.float64)
    model.fit(matrix, callback=lambda it, s: skipped.append(s))
    assert skipped == [0] * 5
    # item 4 is the only negative user 0 can have: pushed below every positive of user 0
    # by the bias step (b_j -= lr s per step) while the positives' biases rise
    assert model.item_bias[4] < model.item_bias[[0, 1, 2, 3]].min()


def test_bpr_negatives_by_row_search_equal_the_sampler():
    """The native kernel looks seen items up in a bit matrix when it is small and by binary
    search of the user's row otherwise (SeenBits::pays): many users, few entries take the
    search path; users who saw most items make redraws frequent."""
    from recfuse._sgd import cpu

    rng = np.random.default_rng(0)
    n_users, n_items = 5000, 64
    rows, cols = [], []
    for u in rng.choice(n_users, 15, replace=False):
        chosen = rng.choice(n_items, int(rng.integers(50, 64)), replace=False)
        rows += [u] * chosen.size
        cols += chosen.tolist()
    R = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_users, n_items))
    assert n_users * n_items > 256 * R.nnz + 65536  # the row-search path
    seen = Pattern(R.indptr.astype(np.int64), R.indices.astype(np.int32))
    coo = R.tocoo()
    stored = R.toarray() != 0
    for grid, max_tries in [(1, 1), (1, 10), (2, 3), (3, 100)]:
        blocks = make_blocks(coo.row, coo.col, n_users, n_items, grid, np.random.default_rng(1))
        P = rng.normal(0, 0.1, (n_users, 4)).astype(np.float32)
        Q = rng.normal(0, 0.1, (n_items, 4)).astype(np.float32)
        negatives = np.zeros(blocks.users.size, np.int32)
        skipped = cpu.bpr_epoch(blocks, seen, P, Q, np.zeros(n_items, np.float32), 0.01, 0.01,
                                12345, max_tries, negatives, 1)
        expected = reference.bpr_sample_negatives(blocks.users, blocks.offsets, grid, R,
                                                  blocks.bin_items, blocks.bin_offsets, 12345,
                                                  max_tries)
        np.testing.assert_array_equal(negatives, expected)
        assert skipped == int((expected < 0).sum())
        kept = negatives >= 0
        assert not stored[blocks.users[kept], negatives[kept]].any()


def test_bpr_default_grid_trains_on_a_small_catalogue():
    # 8000 users x 4 items at density 1/2: 16k positive pairs -> default grid 4 = n_items.
    # Almost every user has an unseen item, so almost every pair has a valid negative.
    rng = np.random.default_rng(0)
    dense = rng.random((8000, 4)) < 0.5
    matrix = sp.csr_matrix(dense.astype(np.float32))
    assert (~dense).any(axis=1)[dense.any(axis=1)].mean() > 0.9
    skipped = []
    recfuse.BPR(factors=4, iterations=1, random_state=0).fit(
        matrix, callback=lambda it, s: skipped.append(s))
    assert skipped[0] < 0.5 * matrix.nnz, f"{skipped[0]} of {matrix.nnz} pairs skipped"


def test_bpr_max_tries_beyond_int32_is_refused_by_name_or_works():
    matrix = sp.random(30, 20, density=0.2, format="csr", random_state=0)
    try:
        model = recfuse.BPR(factors=2, iterations=1, max_tries=2**31, backend="cpu",
                            random_state=0)
    except ValueError as error:  # refused at the boundary, by name
        assert "max_tries" in str(error)
        return
    model.fit(matrix)  # or accepted (the draws stop at the first unseen item anyway)
    assert np.isfinite(model.item_factors).all()


@pytest.mark.parametrize("backend", HOST)
@HYPOTHESIS
@given(matrix=implicit_matrices(max_users=6, max_items=9), k=st.integers(1, 12),
       seed=st.integers(0, 2**16))
def test_bpr_recommend_ranks_by_the_training_score_without_stored_entries(backend, matrix, k,
                                                                          seed):
    model = recfuse.BPR(factors=3, iterations=3, lr=0.1, grid=1, random_state=seed,
                        backend=backend, dtype=np.float64).fit(matrix)
    scores = model.user_factors @ model.item_factors.T + model.item_bias
    stored = canonical(matrix)
    n_users, n_items = matrix.shape
    ids, got = model.recommend(np.arange(n_users), k=k)
    for u in range(n_users):
        allowed = np.setdiff1d(np.arange(n_items), stored.indices[
            stored.indptr[u]:stored.indptr[u + 1]])
        order = allowed[np.lexsort((allowed, -scores[u, allowed]))][:k]
        expect_ids = np.full(k, -1)
        expect_ids[:order.size] = order
        np.testing.assert_array_equal(ids[u], expect_ids)
        np.testing.assert_allclose(got[u, :order.size], scores[u, order], rtol=0, atol=1e-12)
        assert np.all(np.isneginf(got[u, order.size:]))


# ---------------------------------------------------------------------------- ExplicitALS


def als_rows_by_lstsq(rows, cols, values, n_rows, Y, reg, reg_bias, mu, other_bias, biased):
    """Each row's minimiser of sum (r - mu - b_other - b - x.y)^2 + n (reg |x|^2 + reg_bias
    b^2), as the least-squares solution of the stacked system [Z; sqrt(n D)] w = [t; 0]."""
    k = Y.shape[1]
    X, B = np.zeros((n_rows, k)), np.zeros(n_rows)
    for u in range(n_rows):
        mine = rows == u
        n = int(mine.sum())
        if n == 0:
            continue
        Z, target = Y[cols[mine]], values[mine].astype(np.float64)
        D = np.full(k, reg)
        if biased:
            Z = np.c_[Z, np.ones(n)]
            target = target - mu - other_bias[cols[mine]]
            D = np.r_[D, reg_bias]
        stacked = np.r_[Z, np.diag(np.sqrt(n * D))]
        w = np.linalg.lstsq(stacked, np.r_[target, np.zeros(D.size)], rcond=None)[0]
        X[u] = w[:k]
        if biased:
            B[u] = w[k]
    return X, B


@st.composite
def rating_problems(draw, max_users=6, max_items=6, max_ratings=24):
    n = draw(st.integers(1, max_ratings))
    n_users = draw(st.integers(1, max_users))
    n_items = draw(st.integers(1, max_items))
    users = np.array(draw(st.lists(st.integers(0, n_users - 1), min_size=n, max_size=n)))
    items = np.array(draw(st.lists(st.integers(0, n_items - 1), min_size=n, max_size=n)))
    values = np.array(draw(st.lists(st.sampled_from([1.0, 5.0, 3.0, 2.5]) |
                                    st.floats(0.5, 5.0), min_size=n, max_size=n)))
    return users, items, values


@pytest.mark.parametrize("backend", HOST)
@HYPOTHESIS
@given(problem=rating_problems(), k=st.integers(1, 4), biased=st.booleans(),
       reg=st.sampled_from([0.01, 0.1, 1.0]), reg_bias=st.sampled_from([0.0, 0.05, 0.5]),
       seed=st.integers(0, 2**16))
def test_explicit_als_iteration_is_the_exact_least_squares_solution(backend, problem, k,
                                                                    biased, reg, reg_bias,
                                                                    seed):
    users, items, values = problem
    n_users, n_items = int(users.max()) + 1, int(items.max()) + 1
    rng = np.random.default_rng(seed)
    X0, Y0 = rng.normal(0, 0.5, (n_users, k)), rng.normal(0, 0.5, (n_items, k))
    model = recfuse.ExplicitALS(factors=k, iterations=1, reg=reg, biased=biased,
                                reg_bias=reg_bias, dtype=np.float64, backend=backend)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no row may be reported unsolvable here
        model.fit(users, items, values, initial_factors=(X0, Y0))
    mu = values.mean()
    X, bu = als_rows_by_lstsq(users, items, values, n_users, Y0, reg, reg_bias, mu,
                              np.zeros(n_items), biased)
    Y, bi = als_rows_by_lstsq(items, users, values, n_items, X, reg, reg_bias, mu, bu, biased)
    np.testing.assert_allclose(model.user_factors, X, rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(model.item_factors, Y, rtol=1e-7, atol=1e-8)
    if biased:
        np.testing.assert_allclose(model.user_bias, bu, rtol=1e-7, atol=1e-8)
        np.testing.assert_allclose(model.item_bias, bi, rtol=1e-7, atol=1e-8)
        assert model.global_mean == pytest.approx(mu)
    else:
        assert not model.user_bias.any() and not model.item_bias.any()


@pytest.mark.parametrize("backend", HOST)
def test_explicit_als_float32_follows_float64(backend, ratings):
    users, items, values = ratings
    rng = np.random.default_rng(3)
    Y0 = rng.normal(0, 0.1, (80, 8))
    fits = [recfuse.ExplicitALS(factors=8, iterations=4, dtype=dtype, backend=backend).fit(
        users, items, values, initial_factors=(np.zeros((120, 8)), Y0))
        for dtype in (np.float32, np.float64)]
    assert fits[0].user_factors.dtype == np.float32
    p32, p64 = (f.predict(users, items, clip=False) for f in fits)
    assert np.abs(p32 - p64).max() < 1e-3


@pytest.mark.parametrize("backend", HOST)
@pytest.mark.parametrize("biased", [True, False])
def test_explicit_als_overflow_bound_refuses_above_and_fits_below(backend, biased):
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 20, 200), rng.integers(0, 15, 200)
    base = rng.integers(1, 6, 200).astype(np.float64)
    longest = max(np.bincount(users).max(), np.bincount(items).max())
    bound = np.sqrt(float(np.finfo(np.float32).max) / longest)
    # uniform magnitudes just below the bound (max |r| = 5 x scale) are accepted and fit as
    # float64 fits them, without rows reported unsolvable
    scale = 0.9 * bound / 5
    Y0 = rng.normal(0, 0.1, (15, 4))
    start = (np.zeros((20, 4)), Y0)
    model = recfuse.ExplicitALS(factors=4, iterations=3, biased=biased, backend=backend)
    wide = recfuse.ExplicitALS(factors=4, iterations=3, biased=biased, backend=backend,
                               dtype=np.float64).fit(users, items, base * scale,
                                                     initial_factors=start)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.fit(users, items, base * scale, initial_factors=start)
    np.testing.assert_allclose(model.predict(users, items, clip=False) / scale,
                               wide.predict(users, items, clip=False) / scale, rtol=0,
                               atol=1e-3)
    before = model.item_factors.copy()
    with pytest.raises(ValueError, match="float32"):
        model.fit(users, items, base * 1.2 * bound / 5)
    np.testing.assert_array_equal(model.item_factors, before)  # a refused fit changes nothing
    big = np.sqrt(float(np.finfo(np.float64).max) / longest) * 1.2
    with pytest.raises(ValueError, match="float64"):
        recfuse.ExplicitALS(factors=2, dtype=np.float64, backend=backend).fit(
            users, items, base / 5 * big)


@pytest.mark.parametrize("cls", [recfuse.ExplicitALS, recfuse.SVDpp])
def test_predictions_at_the_scales_ends_and_single_rating_users(cls):
    # every user has one rating; ratings at both ends of the declared scale
    users = np.arange(6)
    items = np.array([0, 1, 0, 1, 2, 2])
    values = np.array([1.0, 5.0, 1.0, 5.0, 1.0, 5.0])
    kwargs = dict(iterations=5) if cls is recfuse.ExplicitALS else dict(epochs=30, lr=0.05)
    model = cls(factors=2, random_state=0, **kwargs).fit(users, items, values,
                                                         rating_scale=(1, 5), n_users=8,
                                                         n_items=4)
    grid_u, grid_i = (a.ravel() for a in np.meshgrid(np.arange(10), np.arange(6),
                                                     indexing="ij"))
    clipped = model.predict(grid_u, grid_i)
    raw = model.predict(grid_u, grid_i, clip=False)
    np.testing.assert_array_equal(clipped, np.clip(raw, 1, 5))
    mu = values.mean()
    # users 6, 7 declared without ratings and 8, 9 beyond: mu + b_i (items 0-2 known)
    for u in (6, 7, 8, 9):
        for i in range(6):
            expected = mu + (model.item_bias[i] if i < 3 else 0.0)
            assert raw[u * 6 + i] == pytest.approx(expected, abs=1e-6)


# -------------------------------------------------------------------------------- SVD++


def svdpp_direct(users, items, ratings, n_users, n_items, start, epochs, lr, reg, order):
    """SVD++ by user passes, written from the docstring (float64)."""
    lr_bu, lr_bi, lr_pu, lr_qi, lr_yj = lr
    reg_bu, reg_bi, reg_pu, reg_qi, reg_yj = reg
    P, Q, Y = (np.array(a, dtype=np.float64) for a in start)
    bu, bi = np.zeros(n_users), np.zeros(n_items)
    mu = float(np.mean(ratings))
    N = [np.unique(items[users == u]) for u in range(n_users)]
    for _ in range(epochs):
        t = 0
        while t < len(order):
            u = users[order[t]]
            run = []
            while t < len(order) and users[order[t]] == u:
                run.append(order[t])
                t += 1
            scale = 1 / np.sqrt(N[u].size)
            z = scale * Y[N[u]].sum(axis=0)
            g = np.zeros(P.shape[1])
            for index in run:
                i = items[index]
                p, q = P[u].copy(), Q[i].copy()
                err = ratings[index] - (mu + bu[u] + bi[i] + q @ (p + z))
                bu[u] += lr_bu * (err - reg_bu * bu[u])
                bi[i] += lr_bi * (err - reg_bi * bi[i])
                P[u] = p + lr_pu * (err * q - reg_pu * p)
                Q[i] = q + lr_qi * (err * (p + z) - reg_qi * q)
                g += err * q
            Y[N[u]] = (1 - lr_yj * reg_yj) ** len(run) * Y[N[u]] + lr_yj * scale * g
    return mu, bu, bi, P, Q, Y, N


@pytest.mark.parametrize("backend", HOST)
@HYPOTHESIS
@given(problem=rating_problems(max_ratings=30), k=st.integers(1, 5), shuffle=st.booleans(),
       per_term=st.booleans(), seed=st.integers(0, 2**16))
def test_svdpp_fit_and_predict_are_the_documented_user_passes(backend, problem, k, shuffle,
                                                              per_term, seed):
    users, items, values = problem
    n_users, n_items = int(users.max()) + 1, int(items.max()) + 1
    rng = np.random.default_rng(seed)
    start = [rng.normal(0, 0.3, (n, k)) for n in (n_users, n_items, n_items)]
    if per_term:
        lr, reg = (0.011, 0.023, 0.031, 0.043, 0.057), (0.05, 0.0, 0.13, 0.21, 0.33)
        rates = dict(zip(("lr_bu", "lr_bi", "lr_pu", "lr_qi", "lr_yj"), lr))
        rates.update(zip(("reg_bu", "reg_bi", "reg_pu", "reg_qi", "reg_yj"), reg))
        rates.update(lr=0.5, reg=0.7)  # overridden by every term
    else:
        lr, reg = (0.05,) * 5, (0.1,) * 5
        rates = dict(lr=0.05, reg=0.1)
    model = recfuse.SVDpp(factors=k, epochs=3, shuffle=shuffle, dtype=np.float64,
                          backend=backend, random_state=seed, **rates)
    model.fit(users, items, values, initial_factors=start)
    # the user order is the layout's (random users, each user's ratings together)
    order = user_major_order(users, n_users, np.random.default_rng(seed), shuffle)
    mu, bu, bi, P, Q, Y, N = svdpp_direct(users, items, values, n_users, n_items, start, 3, lr,
                                          reg, order)
    for got, expected in zip((model.user_bias, model.item_bias, model.user_factors,
                              model.item_factors, model.implicit_factors), (bu, bi, P, Q, Y)):
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-10)
    # predict: the formula over the distinct training items, for every known pair
    grid_u, grid_i = (a.ravel() for a in np.meshgrid(np.arange(n_users), np.arange(n_items),
                                                     indexing="ij"))
    known = np.isin(grid_u, users) & np.isin(grid_i, items)
    expected = np.array([mu + bu[u] + bi[i] + Q[i] @ (P[u] + Y[N[u]].sum(0) / np.sqrt(N[u].size))
                         for u, i in zip(grid_u[known], grid_i[known])])
    np.testing.assert_allclose(model.predict(grid_u[known], grid_i[known], clip=False), expected,
                               rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("cls", [recfuse.SVDpp, recfuse.ExplicitALS])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_recommend_scores_are_the_unclipped_predictions_with_cold_rows(cls, dtype, ratings):
    users, items, values = ratings
    kwargs = dict(epochs=4) if cls is recfuse.SVDpp else dict(iterations=3)
    model = cls(factors=4, random_state=1, dtype=dtype, **kwargs).fit(
        users[:400], items[:400], values[:400], n_users=130, n_items=90)
    grid_u, grid_i = np.meshgrid(np.arange(130), np.arange(90), indexing="ij")
    predicted = model.predict(grid_u.ravel(), grid_i.ravel(), clip=False).reshape(130, 90)
    ids, scores = model.recommend(np.arange(130), k=90, filter_seen=False)
    for u in range(130):
        np.testing.assert_allclose(scores[u], predicted[u][ids[u]], rtol=0, atol=1e-4)
        assert np.all(np.diff(scores[u]) <= 1e-6)
        assert sorted(ids[u].tolist()) == list(range(90))

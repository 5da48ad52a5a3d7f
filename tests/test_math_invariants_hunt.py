"""Adversarial hunt on the mathematical invariants of the training algorithms, on the CPU
backends (cpu, numba, numpy), with hypothesis-drawn small float64 problems.

The contracts used (python/recfuse/reference.py and the model docstrings):

- implicit ALS (``recfuse.ALS``): c_ui = 1 + alpha r_ui, p_ui = [r_ui > 0], absent pairs
  c = 1, p = 0; a half-sweep solves (YᵀC_uY + λI) x_u = YᵀC_u p_u for every row, which is
  the exact minimiser over that side of the loss ``reference.als_loss``
  [Σ c (p − xᵀy)² + λ(‖X‖² + ‖Y‖²)] / Σ c. So under ``solver="cholesky"`` the loss never
  increases from one iteration to the next, the gradient with respect to the side solved
  last is 0 after fit, and ``update_users`` on a training row gives that row's exact
  minimiser. k CG steps solve a k x k SPD system (exact arithmetic), and CG's Euclidean
  error falls with every step (Hestenes-Stiefel). Repeated (u, i) entries are one entry of
  their sum. ``alpha`` scaled by s with the values scaled by 1/s gives the same confidences.
- ``recfuse.ExplicitALS``: each half-sweep minimises
  Σ (r − μ − b_u − b_i − x_u·y_i)² + Σ_u n_u (λ‖x_u‖² + λ_b b_u²) + Σ_i n_i (λ‖y_i‖² + λ_b b_i²)
  exactly over one side (biases included), so that loss never increases; repeated pairs each
  count as a rating, so the whole data set given twice has the same minimisers.
- ``recfuse.SVD`` / ``recfuse.SVDpp``: grid=1, shuffle=False on one thread is
  ``reference.svd_sgd_epoch`` over the ratings in the order given (SVD++: users in the order
  of ``user_major_order``, each user's ratings as given); ``predict`` is
  μ + b_u + b_i + q_i·(p_u [+ |N(u)|^-1/2 Σ_{j∈N(u)} y_j]); one epoch at a tiny lr lowers
  Surprise's training objective (first order).
- ``recfuse.BPR``: one epoch at a tiny lr raises the mean log σ(x_uij) over the positive
  pairs and their unseen negatives (first order; checked over many pairs, with a margin).
- Starting factors are drawn by counter (``reference.normal_table``): row r of a table is a
  function of the seed and r alone, so the start of a user does not depend on how many
  users there are.
"""

from __future__ import annotations


import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import recfuse
from recfuse import reference as ref
from conftest import backend_params

ALS_BACKENDS = backend_params(("cpu", "numba", "numpy"), family="als")
SGD_BACKENDS = backend_params(("cpu", "numba", "numpy"), family="sgd")
HYPOTHESIS = settings(max_examples=30, deadline=None, database=None,
                      suppress_health_check=[HealthCheck.too_slow,
                                             HealthCheck.function_scoped_fixture])


# ------------------------------------------------------------------------------ problems


@st.composite
def implicit_problems(draw, max_users=8, max_items=7, max_k=4):
    """(R canonical float64 CSR with values >= 0, X0, Y0, k, regularization, alpha)."""
    n_users = draw(st.integers(1, max_users))
    n_items = draw(st.integers(1, max_items))
    k = draw(st.integers(1, max_k))
    cells = draw(st.sets(st.tuples(st.integers(0, n_users - 1), st.integers(0, n_items - 1)),
                         max_size=n_users * n_items))
    values = draw(st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0, 7.0]),
                           min_size=len(cells), max_size=len(cells)))
    rows = np.array([c[0] for c in sorted(cells)], dtype=np.int64)
    cols = np.array([c[1] for c in sorted(cells)], dtype=np.int64)
    R = sp.csr_matrix((np.array(values, dtype=np.float64), (rows, cols)),
                      shape=(n_users, n_items))
    R.sort_indices()
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    X0 = rng.normal(size=(n_users, k)) * draw(st.sampled_from([0.01, 0.3, 1.0]))
    Y0 = rng.normal(size=(n_items, k)) * draw(st.sampled_from([0.01, 0.3, 1.0]))
    regularization = draw(st.sampled_from([0.05, 0.3, 1.0, 4.0]))
    alpha = draw(st.sampled_from([0.25, 1.0, 3.0, 10.0]))
    return R, X0, Y0, k, regularization, alpha


def als(k, regularization, alpha, backend, iterations=1, solver="cholesky", cg_steps=3):
    return recfuse.ALS(factors=k, regularization=regularization, alpha=alpha,
                       iterations=iterations, solver=solver, cg_steps=cg_steps,
                       dtype=np.float64, backend=backend, num_threads=1)


def confidences(R, alpha, confidence="linear"):
    """Dense (C, P) of the implicit model: 1 and 0 where nothing is stored."""
    C = np.ones(R.shape)
    P = np.zeros(R.shape)
    coo = R.tocoo()
    C[coo.row, coo.col] = 1 + alpha * coo.data if confidence == "linear" else np.abs(coo.data)
    P[coo.row, coo.col] = coo.data > 0
    return C, P


def exact_rows(R, Y, regularization, alpha, confidence="linear"):
    """Our own solve of (YᵀC_uY + λI) x_u = YᵀC_u p_u for every row u of R."""
    C, P = confidences(R, alpha, confidence)
    k = Y.shape[1]
    out = np.zeros((R.shape[0], k))
    for u in range(R.shape[0]):
        A = Y.T @ (C[u][:, None] * Y) + regularization * np.eye(k)
        out[u] = np.linalg.solve(A, Y.T @ (C[u] * P[u]))
    return out


# ------------------------------------------------------------------------------ implicit ALS


@pytest.mark.parametrize("backend", ALS_BACKENDS)
@HYPOTHESIS
@given(problem=implicit_problems())
def test_als_cholesky_loss_never_increases(backend, problem):
    R, X0, Y0, k, lam, alpha = problem
    start = als(k, lam, alpha, backend, iterations=0).fit(R, initial_factors=(X0, Y0)).loss()
    assert np.isclose(start, ref.als_loss(R, X0, Y0, regularization=lam, alpha=alpha),
                      rtol=1e-12, atol=1e-15)
    losses = []
    als(k, lam, alpha, backend, iterations=5).fit(
        R, initial_factors=(X0, Y0), callback=lambda _, loss: losses.append(loss))
    sequence = [start, *losses]
    for before, after in zip(sequence, sequence[1:]):
        assert after <= before * (1 + 1e-10) + 1e-14, sequence


@pytest.mark.parametrize("backend", ALS_BACKENDS)
@HYPOTHESIS
@given(problem=implicit_problems())
def test_als_cholesky_half_sweeps_match_our_exact_solves(backend, problem):
    """One iteration = users solved exactly against Y0, then items against the new X."""
    R, X0, Y0, k, lam, alpha = problem
    model = als(k, lam, alpha, backend, iterations=1).fit(R, initial_factors=(X0, Y0))
    X = exact_rows(R, Y0, lam, alpha)
    Y = exact_rows(R.T.tocsr(), X, lam, alpha)
    np.testing.assert_allclose(model.user_factors, X, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(model.item_factors, Y, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("backend", ALS_BACKENDS)
@HYPOTHESIS
@given(problem=implicit_problems())
def test_als_gradient_of_last_solved_side_is_zero(backend, problem):
    R, X0, Y0, k, lam, alpha = problem
    model = als(k, lam, alpha, backend, iterations=3).fit(R, initial_factors=(X0, Y0))
    X, Y = model.user_factors, model.item_factors
    C, P = confidences(R, alpha)
    residual = C * (X @ Y.T - P)  # users x items
    gradient = residual.T @ X + lam * Y  # half the gradient of the unnormalised loss in Y
    scale = 1 + np.abs(C).sum() * (1 + np.abs(X).max() ** 2)
    assert np.abs(gradient).max() <= 1e-9 * scale


@pytest.mark.parametrize("backend", ALS_BACKENDS)
@HYPOTHESIS
@given(problem=implicit_problems(), user=st.integers(0, 7))
def test_als_update_users_on_own_row_is_the_exact_minimiser(backend, problem, user):
    R, X0, Y0, k, lam, alpha = problem
    user %= R.shape[0]
    model = als(k, lam, alpha, backend, iterations=2).fit(R, initial_factors=(X0, Y0))
    Y = model.item_factors.copy()
    got = model.update_users([user], R[user])
    want = exact_rows(R[user], Y, lam, alpha)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(model.user_factors[user], want[0], rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("backend", ALS_BACKENDS)
@HYPOTHESIS
@given(problem=implicit_problems(), extra=st.integers(0, 3))
def test_als_cg_with_k_steps_equals_cholesky_sweep(backend, problem, extra):
    R, X0, Y0, k, lam, alpha = problem
    chol = als(k, lam, alpha, backend, iterations=1).fit(R, initial_factors=(X0, Y0))
    cg = als(k, lam, alpha, backend, iterations=1, solver="cg",
             cg_steps=k + extra).fit(R, initial_factors=(X0, Y0))
    np.testing.assert_allclose(cg.user_factors, chol.user_factors, rtol=1e-6, atol=1e-8)
    # k steps of CG solve a k x k system exactly in exact arithmetic; in floating point the
    # error grows with the system's condition number. The item systems, built on the swept
    # user factors, reach 1e4-1e6 on some draws (CG then off by up to ~5e-4 relative on
    # every backend, the NumPy reference too: a CI run drew one of them).
    X = chol.user_factors
    C, _ = confidences(R, alpha)
    cond = max(np.linalg.cond(X.T @ (C[:, [i]] * X) + lam * np.eye(k))
               for i in range(R.shape[1]))
    scale = max(1.0, 1e-3 * cond)
    np.testing.assert_allclose(cg.item_factors, chol.item_factors, rtol=1e-5 * scale,
                               atol=1e-7 * scale)


@pytest.mark.parametrize("backend", ALS_BACKENDS)
@HYPOTHESIS
@given(problem=implicit_problems(max_k=6))
def test_als_more_cg_steps_never_move_further_from_the_exact_solution(backend, problem):
    """A fold-in of every user from the same start: the error after s CG steps falls with s."""
    R, X0, Y0, k, lam, alpha = problem
    model = als(k, lam, alpha, backend, iterations=0).fit(R, initial_factors=(X0, Y0))
    exact = exact_rows(R, Y0, lam, alpha)
    ids = np.arange(R.shape[0])
    previous = np.linalg.norm(X0 - exact, axis=1)
    for steps in range(1, k + 2):
        model.user_factors = X0.copy()
        model.set_params(solver="cg", cg_steps=steps)
        error = np.linalg.norm(model.update_users(ids, R) - exact, axis=1)
        assert np.all(error <= previous * (1 + 1e-7) + 1e-10), (steps, error, previous)
        previous = error
    assert np.all(previous <= 1e-6 * (1 + np.linalg.norm(exact, axis=1)))


@pytest.mark.parametrize("backend", ALS_BACKENDS)
@HYPOTHESIS
@given(problem=implicit_problems(), scale=st.sampled_from([2.0, 0.5, 4.0, 3.0, 0.1]))
def test_als_alpha_times_s_with_values_over_s_is_the_same_model(backend, problem, scale):
    """c = 1 + alpha r and p = [r > 0] are unchanged by (alpha s, r / s)."""
    R, X0, Y0, k, lam, alpha = problem
    a = als(k, lam, alpha, backend, iterations=2).fit(R, initial_factors=(X0, Y0))
    b = als(k, lam, alpha * scale, backend, iterations=2).fit(R / scale,
                                                              initial_factors=(X0, Y0))
    tol = 0 if scale in (2.0, 0.5, 4.0) else 1e-9  # powers of two: the very same confidences
    np.testing.assert_allclose(b.user_factors, a.user_factors, rtol=tol, atol=tol)
    np.testing.assert_allclose(b.item_factors, a.item_factors, rtol=tol, atol=tol)
    assert np.isclose(a.loss(), b.loss(), rtol=1e-12)


@pytest.mark.parametrize("backend", ALS_BACKENDS)
@HYPOTHESIS
@given(problem=implicit_problems(), data=st.data())
def test_als_repeated_entries_are_one_entry_of_their_sum(backend, problem, data):
    R, X0, Y0, k, lam, alpha = problem
    coo = R.tocoo()
    pieces = data.draw(st.lists(st.integers(1, 3), min_size=coo.nnz, max_size=coo.nnz))
    rows, cols, vals = [], [], []
    for r, c, v, n in zip(coo.row, coo.col, coo.data, pieces):
        rows += [r] * n
        cols += [c] * n
        vals += [v / n] * n  # power-of-two splits are exact; thirds round, hence the tolerance
    order = np.random.default_rng(len(vals)).permutation(len(vals))
    split = sp.coo_matrix((np.array(vals)[order], (np.array(rows, dtype=np.int64)[order],
                                                   np.array(cols, dtype=np.int64)[order])),
                          shape=R.shape).tocsr()  # tocsr keeps the repeats (not summed)
    a = als(k, lam, alpha, backend, iterations=2).fit(R, initial_factors=(X0, Y0))
    b = als(k, lam, alpha, backend, iterations=2).fit(split, initial_factors=(X0, Y0))
    np.testing.assert_allclose(b.user_factors, a.user_factors, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(b.item_factors, a.item_factors, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("backend", ALS_BACKENDS)
@HYPOTHESIS
@given(problem=implicit_problems(), data=st.data())
def test_als_permuting_ids_permutes_factor_rows(backend, problem, data):
    """With starts given per id, renumbering users and items renumbers the factors."""
    R, X0, Y0, k, lam, alpha = problem
    pu = np.array(data.draw(st.permutations(range(R.shape[0]))), dtype=np.int64)
    pi = np.array(data.draw(st.permutations(range(R.shape[1]))), dtype=np.int64)
    a = als(k, lam, alpha, backend, iterations=2).fit(R, initial_factors=(X0, Y0))
    # new user t is old user pu[t]; new item t is old item pi[t]
    b = als(k, lam, alpha, backend, iterations=2).fit(
        R[pu][:, pi].tocsr(), initial_factors=(X0[pu], Y0[pi]))
    np.testing.assert_allclose(b.user_factors, a.user_factors[pu], rtol=1e-8, atol=1e-11)
    np.testing.assert_allclose(b.item_factors, a.item_factors[pi], rtol=1e-8, atol=1e-11)


@pytest.mark.parametrize("backend", ALS_BACKENDS)
@HYPOTHESIS
@given(problem=implicit_problems(), more_users=st.integers(1, 5), more_items=st.integers(1, 5),
       seed=st.integers(0, 2**32))
def test_als_random_start_of_an_id_does_not_depend_on_table_size(backend, problem, more_users,
                                                                  more_items, seed):
    """Starts drawn by counter: row r of the start is normal_draws(seed, r k + c)."""
    R, _, _, k, lam, alpha = problem
    grown = sp.csr_matrix((R.data, R.indices, np.r_[R.indptr, [R.nnz] * more_users]),
                          shape=(R.shape[0] + more_users, R.shape[1] + more_items))
    model = recfuse.ALS(factors=k, iterations=0, dtype=np.float64, backend=backend,
                        random_state=seed)
    small = model.fit(R).user_factors.copy(), model.item_factors.copy()
    big = model.fit(grown).user_factors, model.item_factors
    np.testing.assert_array_equal(big[0][: R.shape[0]], small[0])
    np.testing.assert_array_equal(big[1][: R.shape[1]], small[1])


# ------------------------------------------------------------------------------ rating models


@st.composite
def rating_problems(draw, max_users=7, max_items=6, max_k=3, repeats=True):
    """(users, items, ratings float64, n_users, n_items, k, seed)."""
    n_users = draw(st.integers(1, max_users))
    n_items = draw(st.integers(1, max_items))
    k = draw(st.integers(1, max_k))
    pairs = draw(st.lists(st.tuples(st.integers(0, n_users - 1), st.integers(0, n_items - 1)),
                          min_size=1, max_size=3 * n_users * n_items,
                          unique=not repeats))
    ratings = draw(st.lists(st.sampled_from([1.0, 2.0, 3.0, 4.0, 5.0, 2.5]),
                            min_size=len(pairs), max_size=len(pairs)))
    users = np.array([p[0] for p in pairs], dtype=np.int64)
    items = np.array([p[1] for p in pairs], dtype=np.int64)
    return users, items, np.array(ratings), n_users, n_items, k, draw(st.integers(0, 2**31))


def explicit_loss(model, users, items, ratings, X, Y, bu, bi, mu, biased):
    """ALS-WR's objective: squared errors + n_u (λ‖x_u‖² + λ_b b_u²) + the same for items."""
    lam, lam_b = model.reg, model.bias_reg
    mu = mu if biased else 0.0
    pred = mu + bu[users] + bi[items] + np.einsum("nk,nk->n", X[users], Y[items])
    n_u = np.bincount(users, minlength=X.shape[0])
    n_i = np.bincount(items, minlength=Y.shape[0])
    penalty = (n_u * (lam * (X**2).sum(1) + lam_b * bu**2)).sum() + \
        (n_i * (lam * (Y**2).sum(1) + lam_b * bi**2)).sum()
    return float(((ratings - pred) ** 2).sum() + penalty)


def explicit(k, backend, iterations, biased, reg=0.1, reg_bias=None):
    return recfuse.ExplicitALS(factors=k, iterations=iterations, reg=reg, biased=biased,
                               reg_bias=reg_bias, dtype=np.float64, backend=backend,
                               num_threads=1)


@pytest.mark.parametrize("backend", SGD_BACKENDS)
@HYPOTHESIS
@given(problem=rating_problems(), biased=st.booleans(),
       regs=st.sampled_from([(0.1, None), (0.02, 0.5), (1.0, 0.0), (0.5, 2.0)]))
def test_explicit_als_loss_never_increases(backend, problem, biased, regs):
    users, items, ratings, n_users, n_items, k, seed = problem
    rng = np.random.default_rng(seed)
    start = (rng.normal(size=(n_users, k)), rng.normal(size=(n_items, k)))
    losses = []
    for iterations in range(0, 5):
        model = explicit(k, backend, iterations, biased, *regs).fit(
            users, items, ratings, n_users=n_users, n_items=n_items, initial_factors=start)
        X, Y = (start if iterations == 0 else (model.user_factors, model.item_factors))
        bu, bi = model.user_bias, model.item_bias
        if iterations == 0:
            bu, bi = np.zeros(n_users), np.zeros(n_items)
        losses.append(explicit_loss(model, users, items, ratings, X, Y, bu, bi,
                                    model.global_mean, biased))
    for before, after in zip(losses, losses[1:]):
        assert after <= before * (1 + 1e-10) + 1e-12, losses


@pytest.mark.parametrize("backend", SGD_BACKENDS)
@HYPOTHESIS
@given(problem=rating_problems(), biased=st.booleans(),
       regs=st.sampled_from([(0.1, None), (0.02, 0.5), (0.5, 2.0)]))
def test_explicit_als_last_side_and_its_biases_are_stationary(backend, problem, biased, regs):
    """After fit the items (solved last) and their biases zero the objective's gradient."""
    users, items, ratings, n_users, n_items, k, seed = problem
    model = explicit(k, backend, 3, biased, *regs).set_params(random_state=seed)
    model.fit(users, items, ratings, n_users=n_users, n_items=n_items)
    X, Y = model.user_factors, model.item_factors
    bu, bi = model.user_bias, model.item_bias
    mu = model.global_mean if biased else 0.0
    e = ratings - (mu + bu[users] + bi[items] + np.einsum("nk,nk->n", X[users], Y[items]))
    n_i = np.bincount(items, minlength=n_items)
    grad_y = np.zeros((n_items, k))
    np.add.at(grad_y, items, -e[:, None] * X[users])
    grad_y += n_i[:, None] * model.reg * Y
    scale = 1 + np.abs(ratings).max() * (1 + np.abs(X).max()) * n_i.max()
    assert np.abs(grad_y).max() <= 1e-9 * scale
    if biased:
        grad_b = np.bincount(items, weights=-e, minlength=n_items) + n_i * model.bias_reg * bi
        assert np.abs(grad_b).max() <= 1e-9 * scale
    else:
        assert not bu.any() and not bi.any()


@pytest.mark.parametrize("backend", SGD_BACKENDS)
@HYPOTHESIS
@given(problem=rating_problems(), biased=st.booleans())
def test_explicit_als_data_given_twice_has_the_same_minimisers(backend, problem, biased):
    """Every rating twice: the squared errors and each n_u-weighted penalty double."""
    users, items, ratings, n_users, n_items, k, seed = problem
    rng = np.random.default_rng(seed)
    start = (rng.normal(size=(n_users, k)), rng.normal(size=(n_items, k)))
    once = explicit(k, backend, 3, biased).fit(users, items, ratings, n_users=n_users,
                                               n_items=n_items, initial_factors=start)
    twice = explicit(k, backend, 3, biased).fit(
        np.r_[users, users], np.r_[items, items], np.r_[ratings, ratings], n_users=n_users,
        n_items=n_items, initial_factors=start)
    for name in ("user_factors", "item_factors", "user_bias", "item_bias"):
        np.testing.assert_allclose(getattr(twice, name), getattr(once, name), rtol=1e-7,
                                   atol=1e-9, err_msg=name)


def svd_model(cls, k, backend, epochs=1, lr=0.005, reg=0.02, **kw):
    return cls(factors=k, epochs=epochs, lr=lr, reg=reg, grid=1, shuffle=False,
               dtype=np.float64, backend=backend, num_threads=1, **kw)


@pytest.mark.parametrize("backend", SGD_BACKENDS)
@HYPOTHESIS
@given(problem=rating_problems(), biased=st.booleans(), epochs=st.integers(1, 3))
def test_svd_sequential_epochs_equal_the_reference(backend, problem, biased, epochs):
    users, items, ratings, n_users, n_items, k, seed = problem
    rng = np.random.default_rng(seed)
    P0, Q0 = rng.normal(size=(n_users, k)) * 0.3, rng.normal(size=(n_items, k)) * 0.3
    lr, reg = (0.01, 0.03, 0.02, 0.005), (0.02, 0.1, 0.05, 0.0)
    model = svd_model(recfuse.SVD, k, backend, epochs=epochs, biased=biased, lr_bu=lr[0],
                      lr_bi=lr[1], lr_pu=lr[2], lr_qi=lr[3], reg_bu=reg[0], reg_bi=reg[1],
                      reg_pu=reg[2], reg_qi=reg[3], random_state=seed)
    model.fit(users, items, ratings, n_users=n_users, n_items=n_items, initial_factors=(P0, Q0))
    bu, bi, P, Q = np.zeros(n_users), np.zeros(n_items), P0, Q0
    for _ in range(epochs):
        bu, bi, P, Q = ref.svd_sgd_epoch(users, items, ratings, ratings.mean(), bu, bi, P, Q,
                                         lr=lr, reg=reg, biased=biased)
    np.testing.assert_allclose(model.user_factors, P, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(model.item_factors, Q, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(model.user_bias, bu if biased else 0, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(model.item_bias, bi if biased else 0, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("backend", SGD_BACKENDS)
@HYPOTHESIS
@given(problem=rating_problems(), epochs=st.integers(1, 2))
def test_svdpp_epochs_equal_the_reference_in_user_major_order(backend, problem, epochs):
    users, items, ratings, n_users, n_items, k, seed = problem
    rng = np.random.default_rng(seed)
    P0, Q0, Y0 = (rng.normal(size=(n, k)) * 0.3 for n in (n_users, n_items, n_items))
    lr, reg = (0.01, 0.02, 0.015, 0.005, 0.03), (0.05, 0.0, 0.1, 0.02, 0.2)
    model = svd_model(recfuse.SVDpp, k, backend, epochs=epochs, random_state=seed,
                      **{f"lr_{t}": v for t, v in zip(ref.SVDPP_RATE_NAMES, lr)},
                      **{f"reg_{t}": v for t, v in zip(ref.SVDPP_RATE_NAMES, reg)})
    model.fit(users, items, ratings, n_users=n_users, n_items=n_items,
              initial_factors=(P0, Q0, Y0))
    # fit's generator: its first draw is the users' order (user_major_order, shuffle=False)
    rank = np.random.default_rng(seed).permutation(n_users)
    order = np.argsort(rank[users], kind="stable")
    implicit = sp.csr_matrix((np.ones(users.size), (users, items)), shape=(n_users, n_items))
    implicit.sum_duplicates()
    state = (np.zeros(n_users), np.zeros(n_items), P0, Q0, Y0)
    for _ in range(epochs):
        state = ref.svdpp_sgd_epoch(users, items, ratings, ratings.mean(), *state, implicit,
                                    lr=lr, reg=reg, order=order)
    bu, bi, P, Q, Y = state
    for name, want in (("user_bias", bu), ("item_bias", bi), ("user_factors", P),
                       ("item_factors", Q), ("implicit_factors", Y)):
        np.testing.assert_allclose(getattr(model, name), want, rtol=1e-11, atol=1e-13,
                                   err_msg=name)


def predicted_by_hand(model, users, items, n_users, n_items, seen_pairs=None):
    """μ + b_u + b_i + q_i·(p_u [+ z_u]) from the public tables (every id known)."""
    p = model.user_factors[users].copy()
    if isinstance(model, recfuse.SVDpp):
        N = sp.csr_matrix((np.ones(len(seen_pairs[0])), seen_pairs), shape=(n_users, n_items))
        N.sum_duplicates()
        N.data[:] = 1
        counts = np.diff(N.indptr)
        Z = (N @ model.implicit_factors) / np.sqrt(np.maximum(counts, 1))[:, None]
        p = p + Z[users]
    dot = np.einsum("nk,nk->n", p, model.item_factors[items])
    if getattr(model, "biased", True):
        return model.global_mean + model.user_bias[users] + model.item_bias[items] + dot
    return dot


@pytest.mark.parametrize("backend", SGD_BACKENDS)
@pytest.mark.parametrize("cls", [recfuse.SVD, recfuse.SVDpp, recfuse.ExplicitALS])
@HYPOTHESIS
@given(problem=rating_problems(), epochs=st.integers(1, 3))
def test_predict_is_the_documented_formula(backend, cls, problem, epochs):
    users, items, ratings, n_users, n_items, k, seed = problem
    if cls is recfuse.ExplicitALS:
        model = recfuse.ExplicitALS(factors=k, iterations=epochs, dtype=np.float64,
                                    backend=backend, random_state=seed)
    else:
        model = cls(factors=k, epochs=epochs, dtype=np.float64, backend=backend,
                    random_state=seed)
    model.fit(users, items, ratings, n_users=n_users, n_items=n_items)
    # every rated pair, and every pair of a rated user with a rated item
    ku, ki = np.unique(users), np.unique(items)
    qu, qi = (a.ravel() for a in np.meshgrid(ku, ki, indexing="ij"))
    want = predicted_by_hand(model, qu, qi, n_users, n_items, (users, items))
    got = model.predict(qu, qi, clip=False)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(model.predict(qu, qi), np.clip(want, ratings.min(),
                                                             ratings.max()),
                               rtol=1e-12, atol=1e-12)


def surprise_objective(model, users, items, ratings, bu, bi, P, Q, lr_reg):
    """Σ_t [e_t² + reg (b_u² + b_i² + ‖p_u‖² + ‖q_i‖²)] / 2: what Surprise's SGD descends."""
    e = ratings - (ratings.mean() + bu[users] + bi[items] +
                   np.einsum("nk,nk->n", P[users], Q[items]))
    penalty = bu[users] ** 2 + bi[items] ** 2 + (P[users] ** 2).sum(1) + (Q[items] ** 2).sum(1)
    return float((e**2 + lr_reg * penalty).sum() / 2)


@pytest.mark.parametrize("backend", SGD_BACKENDS)
@HYPOTHESIS
@given(problem=rating_problems(repeats=False))
def test_svd_epoch_at_tiny_lr_lowers_the_training_objective(backend, problem):
    users, items, ratings, n_users, n_items, k, seed = problem
    rng = np.random.default_rng(seed)
    P0, Q0 = rng.normal(size=(n_users, k)), rng.normal(size=(n_items, k))
    reg = 0.05
    model = svd_model(recfuse.SVD, k, backend, epochs=1, lr=1e-5, reg=reg, random_state=seed)
    model.fit(users, items, ratings, n_users=n_users, n_items=n_items, initial_factors=(P0, Q0))
    before = surprise_objective(model, users, items, ratings, np.zeros(n_users),
                                np.zeros(n_items), P0, Q0, reg)
    after = surprise_objective(model, users, items, ratings, model.user_bias,
                               model.item_bias, model.user_factors, model.item_factors, reg)
    assert after < before


# ------------------------------------------------------------------------------ BPR


def mean_log_sigmoid(P, Q, b, R):
    """Mean of log σ(x_uij) over every positive (u, i) and every item j u has not seen."""
    S = P @ Q.T + b
    seen = R.toarray() != 0
    total, count = 0.0, 0
    for u in range(R.shape[0]):
        pos = np.flatnonzero(R[u].toarray()[0] > 0)
        neg = np.flatnonzero(~seen[u])
        if pos.size and neg.size:
            x = S[u, pos][:, None] - S[u, neg][None, :]
            total += float(-np.logaddexp(0, -x).sum())
            count += x.size
    return total / count


@pytest.mark.parametrize("backend", SGD_BACKENDS)
def test_bpr_epoch_at_tiny_lr_raises_the_mean_log_sigmoid(backend):
    """Over 10 seeds each epoch raises BPR-Opt on average and for most seeds (a generous
    margin: sampling makes single epochs noisy, the expected step is an ascent step)."""
    R = sp.random(80, 40, density=0.15, format="csr", random_state=3)
    gains = []
    for seed in range(10):
        start = recfuse.BPR(factors=8, iterations=0, lr=1e-3, reg=0.0, dtype=np.float64,
                            backend=backend, random_state=seed, num_threads=1).fit(R)
        trained = recfuse.BPR(factors=8, iterations=1, lr=1e-3, reg=0.0, dtype=np.float64,
                              backend=backend, random_state=seed, num_threads=1).fit(R)
        np.testing.assert_array_equal(start.item_bias, 0)
        gains.append(mean_log_sigmoid(trained.user_factors, trained.item_factors,
                                      trained.item_bias, R) -
                     mean_log_sigmoid(start.user_factors, start.item_factors,
                                      start.item_bias, R))
    assert np.mean(gains) > 0 and sum(g > 0 for g in gains) >= 8, gains


@pytest.mark.parametrize("backend", ALS_BACKENDS)
@HYPOTHESIS
@given(problem=implicit_problems(), signs=st.lists(st.sampled_from([1.0, -1.0]), min_size=49,
                                                   max_size=49))
def test_als_raw_confidence_sweep_is_exact_and_loss_never_increases(backend, problem, signs):
    """confidence="raw": c = |r| (below 1 too, 0 for a stored zero), p = [r > 0]."""
    R, X0, Y0, k, lam, alpha = problem
    R = R.copy()
    R.data = R.data * np.array(signs[: R.nnz])
    model = recfuse.ALS(factors=k, regularization=lam, iterations=1, solver="cholesky",
                        confidence="raw", dtype=np.float64, backend=backend, num_threads=1)
    losses = []
    model.fit(R, initial_factors=(X0, Y0), callback=lambda _, loss: losses.append(loss))
    X = exact_rows(R, Y0, lam, 0.0, "raw")
    Y = exact_rows(R.T.tocsr(), X, lam, 0.0, "raw")
    np.testing.assert_allclose(model.user_factors, X, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(model.item_factors, Y, rtol=1e-7, atol=1e-9)
    start = ref.als_loss(R, X0, Y0, regularization=lam, confidence="raw")
    assert losses[0] <= start * (1 + 1e-10) + 1e-14
    assert np.isclose(model.loss(), losses[0], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("backend", ALS_BACKENDS)
@HYPOTHESIS
@given(problem=implicit_problems())
def test_als_loss_reads_repeated_and_integer_entries_as_their_sum(backend, problem):
    R, X0, Y0, k, lam, alpha = problem
    model = als(k, lam, alpha, backend, iterations=1).fit(R, initial_factors=(X0, Y0))
    coo = R.tocoo()
    twice = sp.csr_matrix((np.r_[coo.data, coo.data] / 2, (np.r_[coo.row, coo.row],
                                                           np.r_[coo.col, coo.col])),
                          shape=R.shape)
    want = ref.als_loss(R, model.user_factors, model.item_factors, regularization=lam,
                        alpha=alpha)
    assert np.isclose(model.loss(twice), want, rtol=1e-12, atol=1e-15)
    doubled = (R * 2).astype(np.int64)  # whole numbers: alpha / 2 gives the same confidences
    halved = als(k, lam, alpha / 2, backend, iterations=1).fit(doubled,
                                                               initial_factors=(X0, Y0))
    np.testing.assert_array_equal(halved.user_factors, model.user_factors)
    assert np.isclose(halved.loss(), model.loss(), rtol=1e-12)


@pytest.mark.parametrize("backend", SGD_BACKENDS)
@pytest.mark.parametrize("cls", [recfuse.SVD, recfuse.ExplicitALS])
@HYPOTHESIS
@given(problem=rating_problems(), epochs=st.integers(1, 2))
def test_unbiased_predict_is_the_dot_product(backend, cls, problem, epochs):
    users, items, ratings, n_users, n_items, k, seed = problem
    kw = dict(iterations=epochs) if cls is recfuse.ExplicitALS else dict(epochs=epochs)
    model = cls(factors=k, biased=False, dtype=np.float64, backend=backend, random_state=seed,
                **kw).fit(users, items, ratings, n_users=n_users, n_items=n_items)
    assert not model.user_bias.any() and not model.item_bias.any()
    ku, ki = np.unique(users), np.unique(items)
    qu, qi = (a.ravel() for a in np.meshgrid(ku, ki, indexing="ij"))
    want = np.einsum("nk,nk->n", model.user_factors[qu], model.item_factors[qi])
    np.testing.assert_allclose(model.predict(qu, qi, clip=False), want, rtol=1e-12,
                               atol=1e-12)


@pytest.mark.parametrize("backend", SGD_BACKENDS)
@pytest.mark.parametrize("cls", [recfuse.SVD, recfuse.SVDpp, recfuse.ExplicitALS])
@HYPOTHESIS
@given(problem=rating_problems())
def test_callback_rmse_is_the_rmse_of_the_model_so_far(backend, cls, problem):
    users, items, ratings, n_users, n_items, k, seed = problem
    kw = dict(iterations=2) if cls is recfuse.ExplicitALS else dict(epochs=2)
    seen = []
    model = cls(factors=k, dtype=np.float64, backend=backend, random_state=seed, **kw).fit(
        users, items, ratings, n_users=n_users, n_items=n_items,
        callback=lambda _, rmse: seen.append(rmse))
    rmse = np.sqrt(np.mean((model.predict(users, items, clip=False) - ratings) ** 2))
    assert len(seen) == 2 and np.isclose(seen[-1], rmse, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@settings(max_examples=15, deadline=None, database=None)
@given(seed=st.integers(0, 2**63), n_users=st.integers(1, 9), n_items=st.integers(1, 9),
       k=st.integers(1, 5))
def test_random_starts_are_the_counter_draws_on_every_backend(dtype, seed, n_users, n_items, k):
    """ALS's start: Normal(0, 0.01²) by reference.normal_table, seeds drawn from
    default_rng(random_state); SVD's start is the same bits on every backend."""
    R = sp.csr_matrix((n_users, n_items))
    seeds = np.random.default_rng(seed).integers(0, 2**63, size=2, dtype=np.int64)
    want = [ref.normal_table(int(s), n, k, 0.0, 0.01, dtype)
            for s, n in zip(seeds, (n_users, n_items))]
    users, items = np.arange(n_users) % n_users, np.arange(n_users) % n_items
    svd = []
    for backend in [p.values[0] for p in SGD_BACKENDS if not p.marks]:
        model = recfuse.ALS(factors=k, iterations=0, dtype=dtype, backend=backend,
                            random_state=seed).fit(R)
        np.testing.assert_array_equal(model.user_factors, want[0])
        np.testing.assert_array_equal(model.item_factors, want[1])
        svd.append(recfuse.SVD(factors=k, epochs=0, dtype=dtype, backend=backend,
                               random_state=seed).fit(users, items, np.ones(n_users),
                                                      n_items=n_items))
    for other in svd[1:]:
        np.testing.assert_array_equal(other.user_factors, svd[0].user_factors)
        np.testing.assert_array_equal(other.item_factors, svd[0].item_factors)

"""Audit of the NumPy reference (recfuse/reference.py, recfuse/reference_data.py).

Every backend is property-tested against these two modules, so an error in them would be
invisible to the rest of the suite. Each test here checks a reference function against an
implementation that does not come from recfuse: written from the literature (Hu, Koren &
Volinsky 2008 for implicit ALS; Rendle et al. 2009 for BPR; Box-Muller; Vigna's splitmix64)
or from the modules' own documented contract, or taken from a peer library installed here
(implicit 0.7.3, scikit-surprise 1.1.5, scikit-learn, scipy, pandas).

Conventions where recfuse differs from a peer on purpose are pinned by tests that state
both sides (names containing ``convention``). The one error found (an overflowing Cholesky
row came back NaN) is fixed; its test stays.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import examples
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from recfuse import reference as ref
from recfuse import reference_data as refdata

# implicit warns once per process about a multi-threaded BLAS: advice, not a failure.
pytestmark = pytest.mark.filterwarnings("ignore:.*(OpenBLAS|MKL|BLAS library).*:RuntimeWarning")

seeds = st.integers(0, 2**32 - 1)


def audit(count: int):
    """Hypothesis settings of this file: an example budget that keeps the file well under
    90 s on 2 shared cores in the dev and ci profiles (scaled up by the nightly profile, as
    conftest.examples does for the project's slow properties), no deadline (shared machine)."""
    return settings(max_examples=examples(count), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


# ============================================================================ implicit ALS
# Hu, Koren & Volinsky (2008), eq. (4): x_u = (YᵀC_uY + λI)⁻¹ YᵀC_u p(u). recfuse's linear
# confidence: c = 1 + α r on stored cells, c = 1 elsewhere; p = [r > 0] on stored cells.
# "raw" (implicit's convention): c = |r|, p = [r > 0].

@st.composite
def als_problems(draw, raw=False):
    rows, cols, k = draw(st.integers(1, 7)), draw(st.integers(1, 7)), draw(st.integers(1, 4))
    # A non-canonical CSR: (u, i) may repeat (scipy reads it as one entry holding the sum)
    # and the column indices of a row are not sorted.
    n = draw(st.integers(0, 2 * rows * cols))
    cells = draw(st.lists(st.tuples(st.integers(0, rows - 1), st.integers(0, cols - 1)),
                          min_size=n, max_size=n))
    # Exactly representable values: the dense side and the sparse side see the same numbers.
    values = [-3.0, -1.0, -0.5] if raw else []
    values += [0.0, 0.5, 1.0, 2.0, 3.0, 7.0, 40.0]
    data = draw(st.lists(st.sampled_from(values), min_size=n, max_size=n))
    return rows, cols, k, cells, np.array(data, dtype=np.float64), draw(seeds)


def noncanonical_csr(rows, cols, cells, data, dtype=np.float64):
    """CSR straight from triplets: repeats kept, rows grouped, columns in input order."""
    order = sorted(range(len(cells)), key=lambda t: cells[t][0])  # stable: columns unsorted
    indptr = np.zeros(rows + 1, dtype=np.int32)
    for u, _ in cells:
        indptr[u + 1] += 1
    indices = np.array([cells[t][1] for t in order], dtype=np.int32)
    values = np.array([data[t] for t in order], dtype=dtype)
    return sp.csr_matrix((values, indices, np.cumsum(indptr)), shape=(rows, cols))


def dense_confidence(rows, cols, cells, data, alpha, confidence):
    """C and P from the definition, built without scipy: repeats summed by hand."""
    total = np.zeros((rows, cols))
    stored = np.zeros((rows, cols), dtype=bool)
    for (u, i), value in zip(cells, data):
        total[u, i] += value
        stored[u, i] = True
    C, P = np.ones((rows, cols)), np.zeros((rows, cols))
    C[stored] = 1.0 + alpha * total[stored] if confidence == "linear" else np.abs(total[stored])
    P[stored] = total[stored] > 0
    return C, P


def dense_normal_equations(C, P, Y, lam, u):
    """(YᵀC_uY + λI, YᵀC_u p_u) for row u, straight from the paper."""
    Cu = np.diag(C[u])
    return Y.T @ Cu @ Y + lam * np.eye(Y.shape[1]), Y.T @ Cu @ P[u]


@audit(60)
@given(problem=als_problems(), alpha=st.sampled_from([0.5, 1.0, 2.0, 40.0]),
       lam=st.sampled_from([0.01, 0.1, 1.0]))
def test_als_cholesky_half_sweep_is_the_dense_solve_of_the_normal_equations(problem, alpha, lam):
    rows, cols, k, cells, data, seed = problem
    rng = np.random.default_rng(seed)
    Y, X0 = rng.normal(size=(cols, k)), rng.normal(size=(rows, k))
    R = noncanonical_csr(rows, cols, cells, data)
    C, P = dense_confidence(rows, cols, cells, data, alpha, "linear")
    got = ref.als_half_sweep(R, Y, X0, regularization=lam, alpha=alpha, solver="cholesky")
    for u in range(rows):
        A, b = dense_normal_equations(C, P, Y, lam, u)
        # Nonnegative values: c >= 1, A >= λI is SPD. The solve's relative error is at most a
        # few eps x cond(A); cond(A) <= 1e6 here (checked) gives <= ~1e-9 of slack.
        condition = np.linalg.cond(A)
        assume(condition < 1e6)
        expected = np.linalg.solve(A, b)
        np.testing.assert_allclose(got[u], expected, rtol=1e-8,
                                   atol=1e-9 * (1 + np.abs(expected).max()))


@audit(60)
@given(problem=als_problems(raw=True), lam=st.sampled_from([0.0, 0.1, 1.0, 5.0]),
       confidence=st.sampled_from(["linear", "raw"]), alpha=st.sampled_from([0.5, 2.0]))
def test_als_negative_values_and_the_not_positive_definite_rule(problem, lam, confidence,
                                                                alpha):
    """Negative values: raw c = |r| (so A = Σ c y yᵀ + λI stays PSD), linear c = 1 + αr (may
    be negative: A indefinite). λ = 0: A may be singular. A row whose A is not positive
    definite keeps its previous vector and is counted (module docstring)."""
    rows, cols, k, cells, data, seed = problem
    rng = np.random.default_rng(seed)
    Y, X0 = rng.normal(size=(cols, k)), rng.normal(size=(rows, k))
    R = noncanonical_csr(rows, cols, cells, data)
    C, P = dense_confidence(rows, cols, cells, data, alpha, confidence)
    got, failed = ref.als_half_sweep_counted(R, Y, X0, regularization=lam, alpha=alpha,
                                             confidence=confidence, solver="cholesky")
    expected_failed = 0
    for u in range(rows):
        A, b = dense_normal_equations(C, P, Y, lam, u)
        smallest = np.linalg.eigvalsh(A).min()
        scale = np.abs(A).max()
        assume(abs(smallest) > 1e-6 * scale)  # keep clear of the PD boundary (rounding)
        if smallest < 0:
            event("a row whose system is not positive definite")
            expected_failed += 1
            np.testing.assert_array_equal(got[u], X0[u])
            continue
        assume(np.linalg.cond(A) < 1e6)  # as above: <= ~1e-9 relative error from the solve
        expected = np.linalg.solve(A, b)
        np.testing.assert_allclose(got[u], expected, rtol=1e-8,
                                   atol=1e-9 * (1 + np.abs(expected).max()))
    assert failed == expected_failed


OVERFLOW_CASES = {
    # c = 1 + 1e10 * 1e30 = inf in float32: w·y yᵀ puts inf and inf·0 = NaN into A.
    "confidence overflows": (np.array([[1e30, 0, 0], [1, 0, 1]], np.float32), 1e10),
    # two finite confidences (3e38 each) whose sum in A[0, 0] and in b overflows to inf.
    "sum overflows": (np.array([[3e38, 3e38, 0], [1, 0, 1]], np.float32), 1.0),
}


@pytest.mark.parametrize("case", list(OVERFLOW_CASES))
def test_als_row_whose_sums_overflow_keeps_its_previous_vector(case):
    values, alpha = OVERFLOW_CASES[case]
    Y = np.array([[1, 0], [1, 0], [0, 1]], np.float32)
    X0 = np.full((2, 2), 0.5, np.float32)
    with np.errstate(all="ignore"):
        got, failed = ref.als_half_sweep_counted(sp.csr_matrix(values), Y, X0,
                                                 regularization=0.1, alpha=alpha,
                                                 solver="cholesky")
    assert np.isfinite(got[1]).all()  # the ordinary row is solved either way
    np.testing.assert_array_equal(got[0], X0[0])  # documented: previous vector kept
    assert failed == 1  # documented: and counted


def test_als_fixed_gram_is_the_whole_sides_gram():
    """fixed_gram: the YᵀY of the whole fixed side when Y holds only a block of its rows.
    A block sweep over the block's columns equals the full sweep of a matrix whose other
    columns are empty (those add only to YᵀY)."""
    rng = np.random.default_rng(8)
    Y = rng.normal(size=(9, 3))
    X0 = rng.normal(size=(6, 3))
    block = np.array([1, 4, 5, 7])
    R_block = sp.csr_matrix(np.floor(rng.random((6, block.size)) * 6) * (rng.random((6, 4)) < 0.5))
    dense = np.zeros((6, 9))
    dense[:, block] = R_block.toarray()
    got, _ = ref.als_half_sweep_counted(R_block, Y[block], X0, regularization=0.2, alpha=2.0,
                                        solver="cholesky", fixed_gram=Y.T @ Y)
    C, P = np.ones((6, 9)), np.zeros((6, 9))
    C[dense != 0] = 1 + 2.0 * dense[dense != 0]
    P[dense > 0] = 1
    for u in range(6):
        A, b = dense_normal_equations(C, P, Y, 0.2, u)
        np.testing.assert_allclose(got[u], np.linalg.solve(A, b), rtol=1e-9, atol=1e-12)


def test_als_integer_matrix_gives_fractional_confidences():
    """Stored values are read in Y's dtype: an int64 3 with α = 0.5 is c = 2.5, not 2."""
    R = sp.csr_matrix(np.array([[3, 0, 1], [0, 2, 0]], dtype=np.int64))
    rng = np.random.default_rng(1)
    Y, X0 = rng.normal(size=(3, 2)), rng.normal(size=(2, 2))
    C = np.ones((2, 3))
    C[R.toarray() != 0] = 1 + 0.5 * R.toarray()[R.toarray() != 0]
    P = (R.toarray() > 0).astype(float)
    got = ref.als_half_sweep(R, Y, X0, regularization=0.1, alpha=0.5, solver="cholesky")
    for u in range(2):
        A, b = dense_normal_equations(C, P, Y, 0.1, u)
        np.testing.assert_allclose(got[u], np.linalg.solve(A, b), rtol=1e-10)


@audit(25)
@given(problem=als_problems(), alpha=st.sampled_from([0.5, 2.0]))
def test_als_float32_half_sweep_solves_the_same_system(problem, alpha):
    """All arithmetic in Y's dtype: float32 rows agree with the float64 solve of the same
    (float32-rounded) system to cond(A) x float32 eps; cond <= 100 here, so 1e-4 relative."""
    rows, cols, k, cells, data, seed = problem
    rng = np.random.default_rng(seed)
    Y = rng.normal(size=(cols, k)).astype(np.float32)
    X0 = rng.normal(size=(rows, k)).astype(np.float32)
    R = noncanonical_csr(rows, cols, cells, data, np.float32)
    C, P = dense_confidence(rows, cols, cells, data, alpha, "linear")
    got = ref.als_half_sweep(R, Y, X0, regularization=1.0, alpha=alpha, solver="cholesky")
    assert got.dtype == np.float32
    for u in range(rows):
        A, b = dense_normal_equations(C, P, Y.astype(np.float64), 1.0, u)
        assume(np.linalg.cond(A) < 100)
        expected = np.linalg.solve(A, b)
        np.testing.assert_allclose(got[u], expected, rtol=1e-4,
                                   atol=1e-4 * (1 + np.abs(expected).max()))


@audit(60)
@given(problem=als_problems(raw=True), alpha=st.sampled_from([0.5, 1.0, 3.0]),
       lam=st.sampled_from([0.0, 0.1, 2.0]), confidence=st.sampled_from(["linear", "raw"]))
def test_als_loss_is_the_dense_weighted_squared_loss(problem, alpha, lam, confidence):
    rows, cols, k, cells, data, seed = problem
    rng = np.random.default_rng(seed)
    X, Y = rng.normal(size=(rows, k)), rng.normal(size=(cols, k))
    R = noncanonical_csr(rows, cols, cells, data)
    C, P = dense_confidence(rows, cols, cells, data, alpha, confidence)
    total = sum(C[u, i] * (P[u, i] - X[u] @ Y[i]) ** 2 for u in range(rows) for i in range(cols))
    total += lam * ((X**2).sum() + (Y**2).sum())
    expected = total / C.sum() if C.sum() else 0.0
    got = ref.als_loss(R, X, Y, regularization=lam, alpha=alpha, confidence=confidence)
    # O(100) float64 terms, summed in a different order: ~1e-14 relative. C.sum() can be
    # near 0 under raw with negatives (huge quotients): compare relative to the terms.
    scale = (np.abs(C) * (1 + (X @ Y.T) ** 2)).sum() / max(abs(C.sum()), 1e-300)
    assert abs(got - expected) <= 1e-11 * max(scale, 1.0)


def _implicit_fit_one_iteration(R_implicit, alpha, X0, Y0, lam):
    implicit_als = pytest.importorskip("implicit.cpu.als")
    model = implicit_als.AlternatingLeastSquares(
        factors=X0.shape[1], regularization=lam, alpha=alpha, use_cg=False, iterations=1,
        dtype=np.float64, num_threads=1, random_state=0)
    model.user_factors, model.item_factors = X0.copy(), Y0.copy()  # fit keeps preset factors
    model.fit(R_implicit, show_progress=False)
    return model.user_factors, model.item_factors


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_als_one_iteration_matches_implicit_cholesky_raw_convention(seed):
    """implicit 0.7.3 (cpu/als.py fit): Cui = alpha * R, and the stored value *is* the
    confidence (c = |αr|, p = [αr > 0], no +1; a stored 0 is c = 0, as in recfuse). So
    implicit(alpha=α, R) is recfuse's confidence="raw" on α·R (raw ignores alpha). One
    iteration = users from Y0, then items from the new X. R holds integers and α = 2
    (implicit casts to float32 and scales there: exact here). Both solve the same SPD
    systems in float64 (LAPACK posv vs Cholesky + two solves): 1e-9 relative."""
    rng = np.random.default_rng(seed)
    R = sp.random(12, 9, density=0.35, random_state=seed, format="csr")
    R.data = np.floor(R.data * 6) - 2  # -2 .. 3: negatives ("disliked") and stored zeros too
    X0, Y0 = rng.normal(size=(12, 4)), rng.normal(size=(9, 4))
    X_imp, Y_imp = _implicit_fit_one_iteration(R, 2.0, X0, Y0, 1.0)
    X1, failed_users = ref.als_half_sweep_counted(2.0 * R, Y0, X0, regularization=1.0,
                                                  confidence="raw", solver="cholesky")
    Y1, failed_items = ref.als_half_sweep_counted((2.0 * R).T.tocsr(), X1, Y0,
                                                  regularization=1.0, confidence="raw",
                                                  solver="cholesky")
    assert failed_users == failed_items == 0  # every system PD: nothing kept back
    np.testing.assert_allclose(X1, X_imp, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(Y1, Y_imp, rtol=1e-9, atol=1e-9)


def test_als_linear_confidence_is_implicit_given_one_plus_alpha_r():
    """recfuse's linear c = 1 + αr with p = [r > 0] equals implicit(alpha=1) given the
    matrix 1 + αr on the stored cells, for r > 0 (for a stored r <= 0 the two differ: recfuse
    has p = 0, implicit reads 1 + αr > 0 as p = 1; a documented convention)."""
    rng = np.random.default_rng(5)
    R = sp.random(10, 8, density=0.4, random_state=5, format="csr")
    R.data = np.floor(R.data * 4) + 1
    X0, Y0 = rng.normal(size=(10, 3)), rng.normal(size=(8, 3))
    alpha = 0.5
    C = R.copy()
    C.data = 1 + alpha * C.data
    X_imp, Y_imp = _implicit_fit_one_iteration(C, 1.0, X0, Y0, 0.2)
    X1 = ref.als_half_sweep(R, Y0, X0, regularization=0.2, alpha=alpha, solver="cholesky")
    Y1 = ref.als_half_sweep(R.T.tocsr(), X1, Y0, regularization=0.2, alpha=alpha,
                            solver="cholesky")
    np.testing.assert_allclose(X1, X_imp, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(Y1, Y_imp, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("steps", [1, 3, 6])
def test_als_cg_half_sweep_matches_implicits_python_cg(steps):
    """implicit's pure-Python least_squares_cg (cpu/als.py) is the same CG (start from the
    previous x, stop when r·r < 1e-20) on the same raw-confidence system; negatives included.
    Same algorithm, different summation order (implicit never forms A): 1e-9 relative over
    at most 6 steps on systems with cond <= ~1e3."""
    implicit_als = pytest.importorskip("implicit.cpu.als")
    rng = np.random.default_rng(steps)
    R = sp.random(15, 10, density=0.4, random_state=steps, format="csr")
    R.data = np.floor(R.data * 6) - 1  # -1 .. 4: negatives and stored zeros as well
    R.data[R.data == 0] = 3.0  # a raw stored zero is c = 0 (w = -1): keep A PD here
    X0, Y = rng.normal(size=(15, 4)), rng.normal(size=(10, 4))
    X_imp = X0.copy()
    implicit_als.least_squares_cg(R, X_imp, Y, 0.5, cg_steps=steps)
    got = ref.als_half_sweep(R, Y, X0, regularization=0.5, confidence="raw", solver="cg",
                             cg_steps=steps)
    np.testing.assert_allclose(got, X_imp, rtol=1e-9, atol=1e-11)


def test_als_loss_matches_implicits_calculate_loss_on_positive_confidences():
    """implicit's native calculate_loss normalises by Σ stored c + #unstored = Σ_all c, as
    recfuse does. implicit reads the matrix as float32 and accumulates partly in float32
    (observed 2e-9 relative), hence 1e-7."""
    implicit_native = pytest.importorskip("implicit.cpu._als")
    rng = np.random.default_rng(3)
    R = sp.random(20, 14, density=0.3, random_state=3, format="csr", dtype=np.float32)
    R.data = np.floor(R.data * 5) + 1
    X, Y = rng.normal(size=(20, 3)), rng.normal(size=(14, 3))
    theirs = implicit_native.calculate_loss(R, X, Y, 0.3, num_threads=1)
    ours = ref.als_loss(R, X, Y, regularization=0.3, confidence="raw")
    assert ours == pytest.approx(theirs, rel=1e-7)


def test_als_loss_convention_implicit_adds_c_for_negative_entries():
    """Convention (implicit's quirk, not recfuse's error): for a stored negative (p = 0)
    implicit's calculate_loss adds the constant c to the loss, as if p were 1 in the
    constant term; recfuse's is the documented Σ c (p - xy)². implicit = recfuse + Σ_neg c/N."""
    implicit_native = pytest.importorskip("implicit.cpu._als")
    rng = np.random.default_rng(4)
    R = sp.random(10, 8, density=0.4, random_state=4, format="csr", dtype=np.float32)
    R.data = np.floor(R.data * 6) - 2
    R.data[R.data == 0] = 1
    X, Y = rng.normal(size=(10, 2)), rng.normal(size=(8, 2))
    theirs = implicit_native.calculate_loss(R, X, Y, 0.1, num_threads=1)
    ours = ref.als_loss(R, X, Y, regularization=0.1, confidence="raw")
    negatives = -R.data[R.data < 0].sum()
    normaliser = np.abs(R.data).sum() + (R.shape[0] * R.shape[1] - R.nnz)
    assert theirs == pytest.approx(ours + negatives / normaliser, rel=1e-6)


# ============================================================================ Funk SVD
# Surprise 1.1.5, prediction_algorithms/matrix_factorization.pyx, SVD.sgd: for each rating,
#   err = r - (mu + bu[u] + bi[i] + Σ_f qi[i,f] pu[u,f]);  if biased: bu += ..., bi += ...
#   for f: puf, qif = pu[u,f], qi[i,f]; pu[u,f] += lr_pu (err qif - reg_pu puf);
#          qi[i,f] += lr_qi (err puf - reg_qi qif)
# (mu = 0 when not biased; bu, bi still enter err: Surprise keeps them at 0.)

def surprise_svd_loop(sequence, mu, bu, bi, P, Q, lr, reg, biased):
    """Surprise's SVD epoch, element by element in Python floats (float64)."""
    lr_bu, lr_bi, lr_pu, lr_qi = lr
    reg_bu, reg_bi, reg_pu, reg_qi = reg
    bu, bi, P, Q = bu.copy(), bi.copy(), P.copy(), Q.copy()
    mu = mu if biased else 0.0
    for u, i, r in sequence:
        dot = 0.0
        for f in range(P.shape[1]):
            dot += Q[i, f] * P[u, f]
        err = r - (mu + bu[u] + bi[i] + dot)
        if biased:
            bu[u] += lr_bu * (err - reg_bu * bu[u])
            bi[i] += lr_bi * (err - reg_bi * bi[i])
        for f in range(P.shape[1]):
            puf, qif = P[u, f], Q[i, f]
            P[u, f] += lr_pu * (err * qif - reg_pu * puf)
            Q[i, f] += lr_qi * (err * puf - reg_qi * qif)
    return bu, bi, P, Q


def surprise_trainset(users, items, ratings):
    surprise = pytest.importorskip("surprise")
    frame = pd.DataFrame({"u": users, "i": items, "r": ratings})
    return surprise.Dataset.load_from_df(frame, surprise.Reader(rating_scale=(1, 5))) \
        .build_full_trainset()


def random_ratings(seed, n=80, n_users=9, n_items=11):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, n_users, n), rng.integers(0, n_items, n),
            rng.integers(1, 6, n).astype(np.float64))


@pytest.mark.parametrize("biased", [True, False], ids=["biased", "unbiased"])
@pytest.mark.parametrize("seed", [0, 1])
def test_surprise_loop_and_reference_equal_surprise_svd(seed, biased):
    """First the hand loop is validated against surprise.SVD (same start: Surprise draws
    pu then qi from RandomState(random_state).normal(init_mean, init_std_dev, ...); same
    order: trainset.all_ratings()), then reference.svd_sgd_epoch is compared with both.
    Identical float64 arithmetic up to the dot's summation order: 1e-12 over 3 epochs."""
    surprise = pytest.importorskip("surprise")
    trainset = surprise_trainset(*random_ratings(seed))
    k, epochs = 4, 3
    lr, reg = (0.01, 0.02, 0.015, 0.005), (0.02, 0.05, 0.1, 0.03)
    algo = surprise.SVD(n_factors=k, n_epochs=epochs, biased=biased, init_std_dev=0.3,
                        lr_bu=lr[0], lr_bi=lr[1], lr_pu=lr[2], lr_qi=lr[3], reg_bu=reg[0],
                        reg_bi=reg[1], reg_pu=reg[2], reg_qi=reg[3], random_state=seed)
    algo.fit(trainset)
    rs = np.random.RandomState(seed)
    P0 = rs.normal(0, 0.3, (trainset.n_users, k))
    Q0 = rs.normal(0, 0.3, (trainset.n_items, k))
    sequence = [(u, i, r) for u, i, r in trainset.all_ratings()]
    mu = trainset.global_mean
    hand = (np.zeros(trainset.n_users), np.zeros(trainset.n_items), P0, Q0)
    ours = hand
    users = np.array([s[0] for s in sequence])
    items = np.array([s[1] for s in sequence])
    ratings = np.array([s[2] for s in sequence])
    for _ in range(epochs):
        hand = surprise_svd_loop(sequence, mu, *hand, lr, reg, biased)
        ours = ref.svd_sgd_epoch(users, items, ratings, mu, *ours, lr=lr, reg=reg,
                                 biased=biased)
    for mine, theirs in zip(hand, (algo.bu, algo.bi, algo.pu, algo.qi)):
        np.testing.assert_allclose(mine, theirs, rtol=1e-12, atol=1e-13)
    for reference_value, theirs in zip(ours, (algo.bu, algo.bi, algo.pu, algo.qi)):
        np.testing.assert_allclose(reference_value, theirs, rtol=1e-12, atol=1e-13)


@audit(40)
@given(seed=seeds, biased=st.booleans(), scalar_rates=st.booleans())
def test_svd_epoch_over_a_given_order_is_the_surprise_loop(seed, biased, scalar_rates):
    """``order[t]`` is the entry visited at step t: any permutation, entries repeated."""
    rng = np.random.default_rng(seed)
    n, n_users, n_items, k = int(rng.integers(1, 40)), int(rng.integers(1, 6)), \
        int(rng.integers(1, 6)), int(rng.integers(1, 5))
    users, items = rng.integers(0, n_users, n), rng.integers(0, n_items, n)
    ratings = rng.uniform(1, 5, n)
    order = rng.integers(0, n, int(rng.integers(0, 2 * n)))  # repeats and omissions allowed
    P, Q = rng.normal(0, 0.3, (n_users, k)), rng.normal(0, 0.3, (n_items, k))
    bu, bi = rng.normal(0, 0.1, n_users), rng.normal(0, 0.1, n_items)
    if scalar_rates:
        lr, reg = 0.02, 0.05
        lr4, reg4 = (lr,) * 4, (reg,) * 4
    else:
        lr4 = tuple(rng.uniform(0.001, 0.05, 4))
        reg4 = tuple(rng.uniform(0.0, 0.2, 4))
        lr, reg = lr4, reg4
    if not biased:
        bu, bi = np.zeros(n_users), np.zeros(n_items)  # what Surprise holds when unbiased
    mu = float(ratings.mean())
    sequence = [(users[t], items[t], ratings[t]) for t in order]
    expected = surprise_svd_loop(sequence, mu, bu, bi, P, Q, lr4, reg4, biased)
    got = ref.svd_sgd_epoch(users, items, ratings, mu, bu, bi, P, Q, lr=lr, reg=reg,
                            biased=biased, order=order)
    for a, b in zip(got, expected):  # same float64 operations up to the dot's order
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)


# ============================================================================ SVD++
# The documented variant (reference.py comment): by user passes (maximal runs of one user in
# ``order``): z_u once from the current y; each rating as SVD with p_u + z_u in the
# prediction and the q_i step, g += e q_i (old q_i); then for each j in N(u):
# y_j <- (1 - lr_yj reg_yj)^c y_j + lr_yj g / sqrt|N(u)|.

def documented_svdpp_epoch(users, items, ratings, mu, bu, bi, P, Q, Y, N, lr, reg, order):
    lr_bu, lr_bi, lr_pu, lr_qi, lr_yj = lr
    reg_bu, reg_bi, reg_pu, reg_qi, reg_yj = reg
    bu, bi, P, Q, Y = (np.array(a, dtype=np.float64) for a in (bu, bi, P, Q, Y))
    passes = []
    for t in order:
        if passes and users[passes[-1][0]] == users[t]:
            passes[-1].append(t)
        else:
            passes.append([t])
    for entries in passes:
        u = users[entries[0]]
        Nu = N[u]
        root = math.sqrt(len(Nu)) if Nu else None
        z = sum((Y[j] for j in Nu), np.zeros(P.shape[1])) / root if Nu else np.zeros(P.shape[1])
        g = np.zeros(P.shape[1])
        for t in entries:
            i, r = items[t], ratings[t]
            p, q = P[u].copy(), Q[i].copy()
            e = r - (mu + bu[u] + bi[i] + float(np.dot(q, p + z)))
            bu[u] = bu[u] + lr_bu * (e - reg_bu * bu[u])
            bi[i] = bi[i] + lr_bi * (e - reg_bi * bi[i])
            P[u] = p + lr_pu * (e * q - reg_pu * p)
            Q[i] = q + lr_qi * (e * (p + z) - reg_qi * q)
            g = g + e * q
        for j in Nu:
            Y[j] = (1 - lr_yj * reg_yj) ** len(entries) * Y[j] + lr_yj * g / root
    return bu, bi, P, Q, Y


@audit(40)
@given(seed=seeds, grouped=st.booleans())
def test_svdpp_epoch_is_the_documented_user_pass_variant(seed, grouped):
    rng = np.random.default_rng(seed)
    n, n_users, n_items, k = int(rng.integers(1, 30)), int(rng.integers(1, 5)), \
        int(rng.integers(1, 6)), int(rng.integers(1, 4))
    users, items = rng.integers(0, n_users, n), rng.integers(0, n_items, n)
    ratings = rng.uniform(1, 5, n)
    order = rng.permutation(n)
    if grouped:  # each user's ratings together (the order recfuse.SVDpp uses)
        order = order[np.argsort(users[order], kind="stable")]
    # N(u): any item set (empty included), not necessarily the rated items.
    N = [sorted(set(rng.integers(0, n_items, int(rng.integers(0, 4))).tolist()))
         for _ in range(n_users)]
    indptr = np.cumsum([0] + [len(s) for s in N])
    implicit = sp.csr_matrix((np.ones(indptr[-1]), np.concatenate([np.array(s, dtype=int)
                              for s in N] + [np.zeros(0, int)]), indptr), shape=(n_users, n_items))
    P, Q, Y = (rng.normal(0, 0.3, (m, k)) for m in (n_users, n_items, n_items))
    bu, bi = rng.normal(0, 0.1, n_users), rng.normal(0, 0.1, n_items)
    lr = tuple(rng.uniform(0.001, 0.05, 5))
    reg = tuple(rng.uniform(0.0, 0.3, 5))
    mu = float(ratings.mean())
    expected = documented_svdpp_epoch(users, items, ratings, mu, bu, bi, P, Q, Y, N, lr, reg,
                                      order)
    got = ref.svdpp_sgd_epoch(users, items, ratings, mu, bu, bi, P, Q, Y, implicit, lr=lr,
                              reg=reg, order=order)
    z = [sum((Y[j] for j in s), np.zeros(k)) / math.sqrt(len(s)) if s else np.zeros(k) for s in N]
    np.testing.assert_allclose(ref.svdpp_implicit_term(implicit, Y), z, rtol=1e-13, atol=1e-14)
    for a, b in zip(got, expected):  # float64, operation order differs: ~1e-15 per step
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12)


def _surprise_svdpp_vs_reference(users, items, ratings, lr_yj):
    surprise = pytest.importorskip("surprise")
    trainset = surprise_trainset(users, items, ratings)
    k = 3
    algo = surprise.SVDpp(n_factors=k, n_epochs=1, init_std_dev=0.3, lr_all=0.01,
                          lr_yj=lr_yj, reg_all=0.05, random_state=0)
    algo.fit(trainset)
    rs = np.random.RandomState(0)  # Surprise's draws: pu, qi, yj in that order
    P0 = rs.normal(0, 0.3, (trainset.n_users, k))
    Q0 = rs.normal(0, 0.3, (trainset.n_items, k))
    Y0 = rs.normal(0, 0.3, (trainset.n_items, k))
    sequence = list(trainset.all_ratings())
    u_in = np.array([s[0] for s in sequence])
    i_in = np.array([s[1] for s in sequence])
    r_in = np.array([s[2] for s in sequence])
    # N(u) = trainset.ur[u], repeated items included (Surprise's Iu): a non-canonical CSR.
    implicit = noncanonical_csr(trainset.n_users, trainset.n_items,
                                list(zip(u_in.tolist(), i_in.tolist())), np.ones(len(sequence)))
    got = ref.svdpp_sgd_epoch(u_in, i_in, r_in, trainset.global_mean, np.zeros(trainset.n_users),
                              np.zeros(trainset.n_items), P0, Q0, Y0, implicit,
                              lr=(0.01, 0.01, 0.01, 0.01, lr_yj), reg=0.05)
    return got, (algo.bu, algo.bi, algo.pu, algo.qi, algo.yj)


def test_svdpp_pass_of_one_rating_is_exactly_surprise():
    """Every user has one rating, so every pass is one rating: the documentation says that
    is Surprise's update exactly (float64, only rounding order differs: 1e-12)."""
    rng = np.random.default_rng(11)
    users = np.arange(12)
    items = rng.integers(0, 5, 12)
    ratings = rng.integers(1, 6, 12).astype(float)
    got, theirs = _surprise_svdpp_vs_reference(users, items, ratings, lr_yj=0.01)
    for a, b in zip(got, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)


def test_svdpp_convention_differs_from_surprise_only_through_the_y_updates():
    """Convention (documented variant): with several ratings per user pass Surprise
    recomputes z_u and updates y after each rating, recfuse once per pass (12 ratings per pass
    here). With lr_yj = 0 y never moves and the two are equal; with lr_yj > 0 they differ,
    linearly in lr_yj (observed max gap 5e-4, 3.5e-3, 2e-2 at lr_yj 0.001, 0.007, 0.05)."""
    users, items, ratings = random_ratings(3, n=60, n_users=5, n_items=8)
    got, theirs = _surprise_svdpp_vs_reference(users, items, ratings, lr_yj=0.0)
    for a, b in zip(got, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)
    got, theirs = _surprise_svdpp_vs_reference(users, items, ratings, lr_yj=0.007)
    gap = max(np.abs(a - b).max() for a, b in zip(got, theirs))
    assert 1e-6 < gap < 1e-2  # observed 3.5e-3 (on q) at Surprise's default lr 0.007


# ============================================================================ BPR
# Rendle et al. 2009, LearnBPR: θ <- θ + α (σ(-x̂_uij) ∂x̂_uij/∂θ - λ θ) for BPR-Opt =
# Σ ln σ(x̂_uij) - λ‖θ‖² (the paper's Fig. 4 prints "+ λ_Θ·Θ"; the gradient of the
# objective's -λ‖θ‖² is -λθ, which is what every implementation uses),
# with x̂_uij = p_u·(q_i - q_j) + b_i - b_j; all partials at the pre-step values.

def textbook_bpr_step(P, Q, b, u, i, j, lr, reg):
    from scipy.special import expit

    p, qi, qj = P[u].copy(), Q[i].copy(), Q[j].copy()
    x = p @ (qi - qj) + b[i] - b[j]
    s = expit(-x)  # d ln σ(x) / dx
    grads = {"p": qi - qj, "qi": p, "qj": -p, "bi": 1.0, "bj": -1.0}
    P[u] = p + lr * (s * grads["p"] - reg * p)
    Q[i] = qi + lr * (s * grads["qi"] - reg * qi)
    Q[j] = qj + lr * (s * grads["qj"] - reg * qj)
    bi_old, bj_old = b[i], b[j]
    b[i] = bi_old + lr * (s * grads["bi"] - reg * bi_old)
    b[j] = bj_old + lr * (s * grads["bj"] - reg * bj_old)


@audit(40)
@given(seed=seeds, scale=st.sampled_from([0.1, 1.0, 4.0]))
def test_bpr_epoch_is_the_textbook_learnbpr_step(seed, scale):
    rng = np.random.default_rng(seed)
    n_users, n_items, k = int(rng.integers(1, 5)), int(rng.integers(2, 7)), int(rng.integers(1, 5))
    n = int(rng.integers(0, 30))
    users = rng.integers(0, n_users, n)
    positives = rng.integers(0, n_items, n)
    negatives = (positives + rng.integers(1, n_items, n)) % n_items  # != positive
    P, Q = rng.normal(0, scale, (n_users, k)), rng.normal(0, scale, (n_items, k))
    b = rng.normal(0, scale, n_items)
    order = rng.permutation(n)
    lr, reg = 0.05, 0.01
    Pe, Qe, be = P.copy(), Q.copy(), b.copy()
    for t in order:
        textbook_bpr_step(Pe, Qe, be, users[t], positives[t], negatives[t], lr, reg)
    got = ref.bpr_sgd_epoch(users, positives, negatives, P, Q, b, lr=lr, reg=reg, order=order)
    # σ(-x) as (1 - tanh(x/2))/2 vs expit: equal to ~1e-16 relative for |x| < ~30 and both
    # below 1e-13 beyond; the steps are float64: 1e-11 after 30 steps.
    for a, e in zip(got, (Pe, Qe, be)):
        np.testing.assert_allclose(a, e, rtol=1e-11, atol=1e-12)


def test_bpr_logistic_form_agrees_with_expit_including_extremes():
    """The documented s = (1 - tanh(x/2)) / 2 is σ(-x): same value within 1e-15 absolute
    over [-800, 800] in float64 (no overflow at either end)."""
    from scipy.special import expit

    x = np.linspace(-800, 800, 20001)
    s = 0.5 * (1 - np.tanh(0.5 * x))
    np.testing.assert_allclose(s, expit(-x), rtol=0, atol=1e-15)


_M64 = (1 << 64) - 1


def splitmix64_stream(state):
    """Vigna's splitmix64 (prng.di.unimi.it/splitmix64.c), Python ints."""
    while True:
        state = (state + 0x9E3779B97F4A7C15) & _M64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
        yield z ^ (z >> 31)


def test_splitmix64_known_answers():
    """Published splitmix64 outputs for seed 1234567 (the test vector used by, e.g., the
    xoshiro reference seeding and many ports); also the counter form mix(start + nγ)."""
    expected = [6457827717110365317, 3203168211198807973, 9817491932198370423,
                4593380528125082431, 16408922859458223821]
    stream = splitmix64_stream(1234567)
    assert [next(stream) for _ in range(5)] == expected
    assert ref.splitmix64_draws(1234567, np.arange(1, 6)).tolist() == expected


@audit(30)
@given(seed=seeds, grid=st.integers(1, 3), max_tries=st.integers(1, 6))
def test_bpr_negative_sampler_follows_its_documented_definition(seed, grid, max_tries):
    """Block b = s*grid + r draws from bin c = (r + s) mod grid with splitmix64 seeded at
    seed XOR (0xD1B54A32D192ED03 (b + 1)) mod 2^64, candidate x mod n, redrawn while seen, at
    most max_tries times, else -1. Written from the comment with an independent splitmix64;
    plus the properties the backends rely on (unseen, from the block's bin)."""
    rng = np.random.default_rng(seed)
    n_users, n_items = int(rng.integers(1, 8)), int(rng.integers(1, 10))
    seen = sp.random(n_users, n_items, density=0.5, random_state=int(rng.integers(2**31)),
                     format="csr")
    bins = rng.integers(0, grid, n_items)
    bin_items = np.concatenate([np.flatnonzero(bins == c) for c in range(grid)]).astype(np.int32)
    bin_offsets = np.r_[0, np.cumsum([np.sum(bins == c) for c in range(grid)])]
    per_block = rng.integers(0, 4, grid * grid)
    offsets = np.r_[0, np.cumsum(per_block)]
    users = rng.integers(0, n_users, offsets[-1])
    sampler_seed = int(rng.integers(0, 2**63)) * 2 + 1
    got = ref.bpr_sample_negatives(users, offsets, grid, seen, bin_items, bin_offsets,
                                   sampler_seed, max_tries)
    expected = np.full(len(users), -1)
    for block in range(grid * grid):
        s, r = block // grid, block % grid
        c = (r + s) % grid
        candidates = bin_items[bin_offsets[c]:bin_offsets[c + 1]]
        stream = splitmix64_stream((sampler_seed ^ (0xD1B54A32D192ED03 * (block + 1))) & _M64)
        for t in range(offsets[block], offsets[block + 1]):
            row = set(seen[users[t]].indices.tolist())
            if len(candidates) == 0:
                continue
            for _ in range(max_tries):
                j = int(candidates[next(stream) % len(candidates)])
                if j not in row:
                    expected[t] = j
                    break
            if expected[t] >= 0:
                assert bins[expected[t]] == c
    np.testing.assert_array_equal(got, expected)
    for t, j in enumerate(got):
        if j >= 0:
            assert j not in set(seen[users[t]].indices.tolist())


# ============================================================================ ranking metrics
# Hand formulas (Manning et al., IR book, ch. 8; Järvelin & Kekäläinen 2002 for NDCG with
# binary gains), sklearn.metrics.ndcg_score / roc_auc_score, implicit.evaluation.

def hand_metrics(ids, test, n_items):
    """(hits, relevant, AP, NDCG, AUC, RR, recall, hit) from the textbook definitions, for
    a list of unique ids where entries outside [0, n_items) are empty slots."""
    from sklearn.metrics import roc_auc_score

    k = len(ids)
    ranked = [(rank, item) for rank, item in enumerate(ids) if 0 <= item < n_items]
    hit_ranks = [rank for rank, item in ranked if item in test]
    hits, relevant = len(hit_ranks), min(k, len(test))
    ap = sum((n + 1) / (rank + 1) for n, rank in enumerate(hit_ranks)) / relevant
    dcg = sum(1 / math.log2(rank + 2) for rank in hit_ranks)
    idcg = sum(1 / math.log2(rank + 2) for rank in range(relevant))
    # AUC with ties counted half: listed items above all unlisted, unlisted items tied.
    labels = np.zeros(n_items)
    labels[list(test)] = 1
    score = np.zeros(n_items)
    for rank, item in ranked:
        score[item] = k - rank
    auc = roc_auc_score(labels, score) if len(test) < n_items else np.nan
    rr = 1 / (hit_ranks[0] + 1) if hit_ranks else 0.0
    return np.array([hits, relevant, ap, dcg / idcg, auc, rr, hits / len(test), hits > 0],
                    dtype=float)


@st.composite
def ranking_cases(draw, padded=False):
    n_items = draw(st.integers(2, 12))
    n_rows = draw(st.integers(1, 5))
    k = draw(st.integers(1, n_items))
    rng = np.random.default_rng(draw(seeds))
    tests = [sorted(rng.choice(n_items, int(rng.integers(1, n_items)), replace=False).tolist())
             for _ in range(n_rows)]  # non-empty, never every item (AUC needs a negative)
    recommended = np.array([rng.permutation(n_items)[:k] for _ in range(n_rows)], dtype=np.int64)
    if padded:  # empty slots: -1 or ids >= n_items, at the end or anywhere
        holes = rng.random(recommended.shape) < 0.3
        recommended[holes] = rng.choice([-1, n_items, n_items + 3], int(holes.sum()))
    indptr = np.cumsum([0] + [len(t) for t in tests])
    return recommended, tests, indptr, np.concatenate(tests).astype(np.int32), n_items


@audit(60)
@given(case=ranking_cases(padded=True))
def test_ranking_metrics_are_the_textbook_formulas(case):
    recommended, tests, indptr, indices, n_items = case
    # rows[r] names the test row of recommendation row r: reversed here
    got = refdata.ranking_metrics(recommended[::-1], np.arange(len(tests))[::-1], indptr,
                                  indices, n_items)[::-1]
    assert refdata.RANKING_COLUMNS == ("hits", "relevant", "average_precision", "ndcg", "auc",
                                       "reciprocal_rank", "recall", "hit")
    for r, ids in enumerate(recommended):
        # a handful of float64 terms each: 1e-12
        np.testing.assert_allclose(got[r], hand_metrics(ids.tolist(), set(tests[r]), n_items),
                                   rtol=1e-12, atol=1e-12)


@audit(40)
@given(case=ranking_cases())
def test_ranking_ndcg_matches_sklearn_on_full_lists(case):
    """sklearn.metrics.ndcg_score(y_true, y_score, k): binary gains, log2 discounts, IDCG
    from the true labels. Listed items get descending scores, the rest 0: with k valid unique
    ids the top k positions are exactly the list (no ties inside them), so the definitions
    agree. (Padded lists: see the convention test below.)"""
    from sklearn.metrics import ndcg_score

    recommended, tests, indptr, indices, n_items = case
    got = refdata.ranking_metrics(recommended, np.arange(len(tests)), indptr, indices, n_items)
    k = recommended.shape[1]
    for r, ids in enumerate(recommended):
        labels = np.zeros((1, n_items))
        labels[0, tests[r]] = 1
        scores = np.zeros((1, n_items))
        scores[0, ids] = k - np.arange(k)
        assert got[r, 3] == pytest.approx(ndcg_score(labels, scores, k=k), rel=1e-12)


def test_ranking_ndcg_convention_padded_slots_versus_sklearn_ties():
    """Convention: recfuse gives an empty slot (-1) gain 0. sklearn has no empty slot: the
    unlisted items tie below the list, and ndcg_score (ignore_ties=False) spreads the tied
    group's mean gain over the positions that reach into the top k. Documented ("ids outside
    [0, n_items) are empty slots")."""
    from sklearn.metrics import ndcg_score

    recommended = np.array([[0, -1, -1]])
    test = [3]  # unlisted positive among 4 unlisted items
    got = refdata.ranking_metrics(recommended, [0], np.array([0, 1]), np.array(test), 5)
    labels = np.zeros((1, 5))
    labels[0, test] = 1
    scores = np.array([[3.0, 0, 0, 0, 0]])
    assert got[0, 3] == 0.0
    assert ndcg_score(labels, scores, k=3) > 0  # 1/4 of the gain at ranks 2 and 3


class _FixedLists:
    """A stand-in model for implicit.evaluation: recommend returns the given lists."""

    def __init__(self, recommended):
        self.recommended = np.asarray(recommended, dtype=np.int32)

    def recommend(self, userid, user_items, N=10, **kwargs):
        rows = np.atleast_1d(np.asarray(userid))
        ids = self.recommended[rows, :N]
        return ids, np.zeros(ids.shape, dtype=np.float32)


def implicit_aggregates(got):
    """implicit's aggregation of the per-row columns: precision = Σhits / Σmin(K, |T|),
    map, ndcg and auc are means over rows with test items."""
    return {"precision": got[:, 0].sum() / got[:, 1].sum(), "map": got[:, 2].mean(),
            "ndcg": got[:, 3].mean(), "auc": got[:, 4].mean()}


@audit(30)
@given(case=ranking_cases())
def test_ranking_metrics_match_implicit_evaluation_on_full_lists(case):
    evaluation = pytest.importorskip("implicit.evaluation")
    recommended, tests, indptr, indices, n_items = case
    test = sp.csr_matrix((np.ones(len(indices), np.float32), indices, indptr),
                         shape=(len(tests), n_items))
    train = sp.csr_matrix((len(tests), n_items), dtype=np.float32)
    theirs = evaluation.ranking_metrics_at_k(_FixedLists(recommended), train, test,
                                             K=recommended.shape[1], show_progress=False)
    got = refdata.ranking_metrics(recommended, np.arange(len(tests)), indptr, indices, n_items)
    ours = implicit_aggregates(got)
    for name in ("precision", "map", "ndcg", "auc"):
        assert ours[name] == pytest.approx(theirs[name], rel=1e-12, abs=1e-12), name


def test_ranking_auc_convention_padding_is_a_miss_in_implicit():
    """Convention: implicit's ranking_metrics_at_k reads a -1 slot (its topk pads short
    lists with -1) as a listed negative: `miss` counts it, so it lowers the AUC and reduces
    the unlisted negatives. recfuse skips empty slots (docstring: "-1 pads a short list: no
    item at all"), so its AUC is the tie-half AUC of the items actually listed."""
    evaluation = pytest.importorskip("implicit.evaluation")
    recommended = np.array([[0, 1, 2, -1], [0, 1, 2, -1]])
    test = sp.csr_matrix(np.array([[1, 0, 0, 1, 0, 0], [0, 1, 0, 0, 0, 1]], dtype=np.float32))
    theirs = evaluation.ranking_metrics_at_k(_FixedLists(recommended),
                                             sp.csr_matrix(test.shape, dtype=np.float32), test,
                                             K=4, show_progress=False)
    got = refdata.ranking_metrics(recommended, [0, 1], test.indptr, test.indices, 6)
    assert theirs["auc"] == pytest.approx(0.5)  # (4.5/8 + 3.5/8) / 2: -1 counted as a miss
    assert got[:, 4].mean() == pytest.approx(0.5625)  # (5/8 + 4/8) / 2
    for r in range(2):
        np.testing.assert_allclose(
            got[r], hand_metrics(recommended[r].tolist(), set(test[r].indices), 6), rtol=1e-12)
    assert implicit_aggregates(got)["precision"] == pytest.approx(theirs["precision"])
    assert implicit_aggregates(got)["map"] == pytest.approx(theirs["map"])
    assert implicit_aggregates(got)["ndcg"] == pytest.approx(theirs["ndcg"])


def test_ranking_auc_is_nan_without_negatives():
    got = refdata.ranking_metrics(np.array([[1, 0]]), [0], np.array([0, 3]),
                                  np.array([0, 1, 2]), 3)
    assert np.isnan(got[0, 4])


@audit(40)
@given(seed=seeds)
def test_intra_list_diversity_is_the_mean_scipy_cosine_distance(seed):
    from scipy.spatial.distance import cosine

    rng = np.random.default_rng(seed)
    n, d = int(rng.integers(1, 8)), int(rng.integers(1, 5))
    vectors = rng.normal(size=(n, d)) * 10.0 ** rng.integers(-3, 4, (n, 1))
    vectors[np.abs(vectors).max(axis=1) == 0] = 1.0  # nonzero rows: scipy's cosine is defined
    lists = rng.integers(-1, n + 2, (int(rng.integers(1, 5)), int(rng.integers(0, 6))))
    got = refdata.intra_list_diversity(lists, vectors)
    for r, ids in enumerate(lists):
        valid = [i for i in ids if 0 <= i < n]
        if len(valid) < 2:
            assert np.isnan(got[r])
            continue
        pairs = [(a, b) for x, a in enumerate(valid) for b in valid[x + 1:]]
        expected = np.mean([cosine(vectors[a], vectors[b]) for a, b in pairs])
        # scipy clips to [0, 2]; a repeated id gives 1 - cos = ±1e-16 either way: 1e-12
        assert got[r] == pytest.approx(expected, abs=1e-12)


def test_intra_list_diversity_convention_zero_vectors_and_extreme_magnitudes():
    """Convention: scipy's cosine is undefined (NaN) for a zero vector; recfuse documents
    cosine 0 with every vector, i.e. a distance of 1. Subnormal and huge rows keep their
    direction: 1e-310 * (1, 0) vs 1e300 * (1, 1) is 1 - 1/sqrt(2)."""
    vectors = np.array([[0.0, 0.0], [1.0, 2.0], [1e-310, 0.0], [1e300, 1e300]])
    got = refdata.intra_list_diversity(np.array([[0, 1], [0, 0], [2, 3]]), vectors)
    assert got[0] == 1.0 and got[1] == 1.0
    assert got[2] == pytest.approx(1 - 1 / math.sqrt(2), rel=1e-12)


# ============================================================================ group_events

@audit(60)
@given(seed=seeds, combine=st.sampled_from(["sum", "max", "last", "count"]),
       with_times=st.booleans(), with_multiplicity=st.booleans(), with_values=st.booleans())
def test_group_events_matches_a_pandas_groupby(seed, combine, with_times, with_multiplicity,
                                               with_values):
    rng = np.random.default_rng(seed)
    n, n_users, n_items = int(rng.integers(0, 40)), int(rng.integers(1, 5)), int(rng.integers(1, 5))
    frame = pd.DataFrame({
        "u": rng.integers(0, n_users, n), "i": rng.integers(0, n_items, n),
        "v": rng.normal(size=n).round(3) if with_values else np.ones(n),
        "t": rng.integers(0, 4, n) if with_times else np.zeros(n, dtype=np.int64),  # many ties
        "m": rng.integers(1, 4, n) if with_multiplicity else np.ones(n, dtype=np.int64),
        "e": np.arange(n)})
    got = refdata.group_events(frame.u.values, frame.i.values,
                               frame.v.values if with_values else None,
                               frame.t.values if with_times else None,
                               frame.m.values if with_multiplicity else None,
                               n_users=n_users, n_items=n_items, combine=combine)
    latest = frame.sort_values(["t", "e"], kind="stable").groupby(["u", "i"]).tail(1) \
        .set_index(["u", "i"]).sort_index()
    grouped = frame.groupby(["u", "i"], sort=True)
    value = {"sum": grouped.v.sum(), "max": grouped.v.max(), "last": latest.v,
             "count": grouped.m.sum().astype(float)}[combine]
    keys = grouped.size().index
    users = np.array([k[0] for k in keys], dtype=np.int64)
    indptr = np.r_[0, np.cumsum(np.bincount(users, minlength=n_users))]
    np.testing.assert_array_equal(got[0], indptr)
    np.testing.assert_array_equal(got[1], [k[1] for k in keys])
    # pandas sums with Kahan compensation, NumPy pairwise: equal to 1e-12 on <= 40 terms
    np.testing.assert_allclose(got[2], value.loc[keys].to_numpy(float), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(got[3], grouped.m.sum().loc[keys].to_numpy())
    if with_times:
        np.testing.assert_array_equal(got[4], grouped.t.max().loc[keys].to_numpy())
    else:
        assert got[4] is None


# ============================================================================ top-k

def brute_force_topk(Q, V, k, exclude, mask, bias, scale):
    """Python floats (IEEE: 0 * inf is NaN), every item scored, then sorted by (-s, id)."""
    m, n = len(Q), len(V)
    excluded = set(zip(*exclude.nonzero())) | {
        (u, int(j)) for u in range(exclude.shape[0])
        for j in exclude.indices[exclude.indptr[u]:exclude.indptr[u + 1]]}
    ids = np.full((m, k), -1, dtype=np.int64)
    out = np.full((m, k), -np.inf)
    qualifying = np.zeros((m, n), dtype=bool)
    for u in range(m):
        scored = []
        for j in range(n):
            s = sum(float(a) * float(b) for a, b in zip(Q[u], V[j])) if len(Q[u]) else 0.0
            s = s * float(scale[j]) + float(bias[j])
            ok = bool(mask[j]) and (u, j) not in excluded and s > -math.inf  # NaN: False
            qualifying[u, j] = ok
            if ok:
                scored.append((-s, j))
        best = sorted(scored)[:k]
        ids[u, :len(best)] = [j for _, j in best]
        out[u, :len(best)] = [-s for s, _ in best]
    return ids, out, qualifying


@audit(60)
@given(seed=seeds, special=st.booleans())
def test_topk_is_a_brute_force_sort(seed, special):
    rng = np.random.default_rng(seed)
    m, n, d, k = (int(rng.integers(1, 5)), int(rng.integers(1, 12)), int(rng.integers(1, 4)),
                  int(rng.integers(0, 14)))
    # Small integers: exact products and sums, hence many exact ties (the tie rule matters).
    Q = rng.integers(-2, 3, (m, d)).astype(np.float64)
    V = rng.integers(-2, 3, (n, d)).astype(np.float64)
    bias = rng.integers(-1, 2, n).astype(np.float64)
    scale = rng.integers(0, 3, n).astype(np.float64)
    if special:  # NaN and ±inf inside the item table, a -inf and a +inf bias
        for value in (np.nan, np.inf, -np.inf):
            V[rng.integers(0, n), rng.integers(0, d)] = value
        bias[rng.integers(0, n)] = -np.inf
        bias[rng.integers(0, n)] = np.inf
        Q[rng.integers(0, m), rng.integers(0, d)] = np.inf  # an inf query: ±inf or NaN scores
    mask = rng.random(n) < 0.8
    dense = rng.random((m, n)) < 0.3
    exclude = sp.csr_matrix((rng.integers(0, 2, int(dense.sum())).astype(float),  # stored 0s
                             np.nonzero(dense)), shape=(m, n))
    ids, scores, qualifying = brute_force_topk(Q, V, k, exclude, mask, bias, scale)
    with np.errstate(invalid="ignore"):
        got_ids, got_scores = ref.topk(Q, V, k, exclude=exclude, mask=mask, item_bias=bias,
                                       item_scale=scale)
        got_ok = ref.topk_qualifying(ref.topk_scores(Q, V, bias, scale), exclude, mask)
    np.testing.assert_array_equal(got_ok, qualifying)
    np.testing.assert_array_equal(got_ids, ids)
    np.testing.assert_array_equal(got_scores, scores)


def test_topk_tie_rule_and_explicit_zero_exclusion():
    Q = np.array([[1.0], [1.0]])
    V = np.array([[2.0], [3.0], [3.0], [2.0], [np.nan]])
    exclude = sp.csr_matrix((np.array([0.0]), (np.array([1]), np.array([1]))), shape=(2, 5))
    ids, scores = ref.topk(Q, V, 6, exclude=exclude)
    np.testing.assert_array_equal(ids, [[1, 2, 0, 3, -1, -1], [2, 0, 3, -1, -1, -1]])
    np.testing.assert_array_equal(scores[0], [3, 3, 2, 2, -np.inf, -np.inf])


# ============================================================================ MLP
# An explicit forward pass written from the comment in reference.py: layer l computes
# act(h @ W.T + b) with W (out, in); bfloat16 / int8 apply to the middle layers only.

def bf16_round(x):
    """Nearest bfloat16 (8 significant bits, float32's exponent range), ties to even, from
    frexp and np.round (banker's rounding): no bit tricks."""
    x = np.asarray(x, dtype=np.float32).astype(np.float64)
    out = x.copy()
    finite = np.isfinite(x) & (x != 0)
    exponent = np.maximum(np.frexp(np.abs(x[finite]))[1] - 1, -126)
    ulp = np.ldexp(1.0, exponent - 7)
    rounded = np.round(x[finite] / ulp) * ulp
    rounded[np.abs(rounded) >= 2.0**128] = np.copysign(np.inf, rounded[np.abs(rounded) >= 2.0**128])
    out[finite] = rounded
    return out.astype(np.float32)


def int8_rows(x):
    """(q, scale) per row as documented: float32 m = max|x|, q = rint(x * (127/m)) clipped,
    scale = m/127; m < 2^-120: zeros, scale 0; NaN/inf in the row: zeros, scale NaN."""
    x = np.asarray(x, dtype=np.float32)
    q = np.zeros(x.shape, dtype=np.float64)
    scale = np.zeros(x.shape[0], dtype=np.float64)
    for r, row in enumerate(x):
        if not np.all(np.isfinite(row)):
            scale[r] = np.nan
            continue
        m = np.float32(np.abs(row).max()) if row.size else np.float32(0)
        if m < np.float32(2.0**-120):
            continue
        inverse = np.float32(127) / m
        q[r] = np.clip(np.rint((row * inverse).astype(np.float32)), -127, 127)
        scale[r] = float(m / np.float32(127))
    return q, scale


def activation(name, z):
    if name == "relu":
        return max(z, 0.0)
    if name == "gelu":
        return 0.5 * z * (1 + math.erf(z / math.sqrt(2)))
    if name == "sigmoid":
        return 1 / (1 + math.exp(-z)) if z > -700 else 0.0
    if name == "tanh":
        return math.tanh(z)
    return z


def explicit_forward(layers, X, precision):
    out = []
    for x in np.asarray(X, dtype=np.float64):
        h = x.copy()
        for position, (W, b, name) in enumerate(layers):
            W = np.asarray(W, dtype=np.float32).astype(np.float64)
            middle = 0 < position < len(layers) - 1
            z = np.zeros(W.shape[0])
            if precision == "bfloat16" and middle:
                Wr = bf16_round(W).astype(np.float64)
                hr = bf16_round(h.astype(np.float32)).astype(np.float64)
                for o in range(W.shape[0]):  # exact products (8 x 8 bits), fsum: exact sum
                    z[o] = math.fsum(hr * Wr[o])
            elif precision == "int8" and middle:
                qh, sh = int8_rows(h[None, :])
                qw, sw = int8_rows(W)
                for o in range(W.shape[0]):
                    integer = int(sum(int(a) * int(c) for a, c in zip(qh[0], qw[o])))
                    z[o] = integer * (sh[0] * sw[o])  # the scales' product exact in float64
            else:
                for o in range(W.shape[0]):
                    z[o] = math.fsum(h * W[o])
            if b is not None:
                z = z + np.asarray(b, dtype=np.float32).astype(np.float64)
            h = np.array([activation(name, v) for v in z])
        out.append(h)
    return np.array(out)


def random_mlp(rng, widths, activations):
    layers = []
    for l in range(len(widths) - 1):
        W = rng.normal(0, 1 / math.sqrt(widths[l]), (widths[l + 1], widths[l])).astype(np.float32)
        b = rng.normal(0, 0.1, widths[l + 1]).astype(np.float32) if rng.random() < 0.7 else None
        layers.append((W, b, activations[l]))
    return layers


@audit(40)
@given(seed=seeds, precision=st.sampled_from(["float32", "bfloat16", "int8"]),
       depth=st.integers(1, 4))
def test_mlp_forward_is_the_explicit_forward_pass(seed, precision, depth):
    rng = np.random.default_rng(seed)
    widths = [int(rng.integers(1, 7)) for _ in range(depth)] + [1]
    names = list(rng.choice(["relu", "gelu", "sigmoid", "tanh", "identity"], depth))
    layers = random_mlp(rng, widths, names)
    X = rng.normal(0, 2, (int(rng.integers(1, 6)), widths[0])).astype(np.float32)
    got = ref.mlp_forward(layers, X, precision)
    expected = explicit_forward(layers, X, precision)
    # float32 / bfloat16: float64 matmul vs exact fsum, a few ulps of float64: 1e-12.
    # int8: the reference rounds the product of the two float32 scales to float32 (see the
    # notes: "Suspicious"); the exact product differs by <= 2^-24 relative: 2e-7. The
    # relative differences then pass through the activations (Lipschitz <= 1.13 for gelu).
    tolerance = 2e-7 if precision == "int8" else 1e-12
    np.testing.assert_allclose(got, expected, rtol=tolerance, atol=tolerance)


def test_round_to_bfloat16_matches_an_arithmetic_rounding_on_random_bit_patterns():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2**32, 50_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    x = np.r_[x, np.float32(3.4028235e38), np.float32(-3.39e38), np.float32(1e-45),
              np.float32(1.0 + 2**-8), np.float32(1.0 + 3 * 2**-8)]  # overflow, subnormal, ties
    with np.errstate(invalid="ignore"):
        expected = bf16_round(x)
    got = ref.round_to_bfloat16(x)
    same = (got.view(np.uint32) == expected.view(np.uint32)) | (np.isnan(got) & np.isnan(expected))
    assert same.all()


@audit(40)
@given(seed=seeds)
def test_quantize_int8_rows_follows_its_documentation(seed):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(6, int(rng.integers(1, 9)))) *
         10.0 ** rng.integers(-40, 30, (6, 1))).astype(np.float32)
    x[rng.integers(0, 6)] *= np.float32(2.0**-90)  # rows near the zero-row threshold
    x[rng.integers(0, 6), 0] = rng.choice([np.nan, np.inf, 0.0])
    q, scale = ref.quantize_int8_rows(x)
    q_expected, scale_expected = int8_rows(x)
    np.testing.assert_array_equal(q, q_expected)
    np.testing.assert_array_equal(scale, scale_expected.astype(np.float32))


def test_mlp_gelu_is_the_exact_erf_form():
    z = np.linspace(-8, 8, 161)
    expected = [0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in z]
    np.testing.assert_allclose(ref.mlp_activation("gelu", z), expected, rtol=1e-14, atol=1e-15)


@audit(40)
@given(seed=seeds)
def test_mlp_gather_and_rank_scores_against_a_brute_force(seed):
    rng = np.random.default_rng(seed)
    users, n_items, k = int(rng.integers(1, 4)), int(rng.integers(1, 8)), int(rng.integers(0, 6))
    counts = rng.integers(0, 8, users)
    indptr = np.r_[0, np.cumsum(counts)]
    ids = rng.integers(0, n_items, indptr[-1])  # repeats on purpose
    U, T = rng.normal(size=(users, 2)), rng.normal(size=(n_items, 3))
    UF, IF, CF = rng.normal(size=(users, 1)), rng.normal(size=(n_items, 2)), \
        rng.normal(size=(indptr[-1], 2))
    rows = ref.mlp_gather(U, indptr, ids, T, UF, IF, CF)
    for c in range(indptr[-1]):
        u = int(np.searchsorted(indptr, c, side="right") - 1)
        np.testing.assert_array_equal(rows[c], np.r_[U[u], UF[u], T[ids[c]], IF[ids[c]], CF[c]])
    scores = rng.integers(-2, 3, indptr[-1]).astype(float)  # ties on purpose
    scores[rng.random(indptr[-1]) < 0.2] = np.nan
    scores[rng.random(indptr[-1]) < 0.1] = -np.inf
    scores[rng.random(indptr[-1]) < 0.1] = np.inf  # +inf is a number above -inf: kept
    got_ids, got_scores = ref.mlp_rank_scores(indptr, ids, scores, k)
    for u in range(users):
        best = {}
        for c in range(indptr[u], indptr[u + 1]):
            if scores[c] > -np.inf:  # NaN and -inf dropped
                best[int(ids[c])] = max(best.get(int(ids[c]), -np.inf), scores[c])
        ranked = sorted(best.items(), key=lambda item: (-item[1], item[0]))[:k]
        expected_ids = [i for i, _ in ranked] + [-1] * (k - len(ranked))
        expected_scores = [s for _, s in ranked] + [-np.inf] * (k - len(ranked))
        np.testing.assert_array_equal(got_ids[u], expected_ids)
        np.testing.assert_array_equal(got_scores[u], expected_scores)


@audit(30)
@given(seed=seeds, offset=st.sampled_from([0.0, 0.25, -3.0]))
def test_mlp_rank_rescored_equals_the_exact_ranking_when_rough_errors_are_uniform(seed, offset):
    """When the rough score is the exact one plus a constant (0 included), rough and exact
    orders agree, so the band rule must return the full-sort ranking of the exact scores."""
    rng = np.random.default_rng(seed)
    users, n_items, k = int(rng.integers(1, 4)), int(rng.integers(1, 60)), int(rng.integers(1, 12))
    indptr = np.r_[0, np.cumsum(rng.integers(0, 80, users))]
    ids = rng.integers(0, n_items, indptr[-1])
    exact = rng.normal(size=indptr[-1]).round(2)
    got = ref.mlp_rank_rescored(indptr, ids, exact + offset, lambda positions: exact[positions], k)
    expected = ref.mlp_rank_scores(indptr, ids, exact, k)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])


# ============================================================================ starting draws

def test_normal_draws_are_box_muller_of_their_documented_bits():
    """Draw 2n and 2n+1 are r cos θ and r sin θ with r = sqrt(-2 ln u1), u1 = (2·a + 1) 2^-24
    (a = bits 41..63 of the pair's splitmix64 draw), θ = quarter·π/2 + angle, the angle
    (2·b + 1 − 2^22) π/2^23 from bits 16..37 and quarter from bits 38..39. Computed here in
    float64 from an independent splitmix64; the reference's float32 polynomials agree to
    ~1e-6 relative (2e-6 with r; absolute 1e-6 near zero). Plus a KS test against N(0, 1)."""
    from scipy import stats

    seed, pairs = 987654321, 4000
    stream = splitmix64_stream(seed)
    expected = []
    for _ in range(pairs):
        x = next(stream)
        u1 = (2 * (x >> 41) + 1) * 2.0**-24
        quarter = (x >> 38) & 3
        angle = (2 * ((x >> 16) & 0x3FFFFF) + 1 - (1 << 22)) * (math.pi / 2) * 2.0**-23
        theta = angle + quarter * math.pi / 2
        r = math.sqrt(-2 * math.log(u1))
        expected += [r * math.cos(theta), r * math.sin(theta)]
    got = ref.normal_draws(seed, np.arange(2 * pairs))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=2e-6, atol=2e-6)
    assert stats.kstest(got.astype(np.float64), "norm").pvalue > 1e-3


# ============================================================================ explicit ALS

@audit(30)
@given(seed=seeds, biased=st.booleans())
def test_explicit_als_half_sweep_is_the_regularised_least_squares_minimiser(seed, biased):
    """Zhou et al. 2008 (weighted-λ): minimise Σ_i (r - μ - b_i - b_u - x·y_i)² +
    n_u(λ‖x‖² + λ_b b_u²), solved here as an augmented least-squares problem with lstsq."""
    rng = np.random.default_rng(seed)
    rows, cols, k = int(rng.integers(1, 5)), int(rng.integers(1, 6)), int(rng.integers(1, 4))
    n = int(rng.integers(0, 15))
    cells = list(zip(rng.integers(0, rows, n).tolist(), rng.integers(0, cols, n).tolist()))
    R = noncanonical_csr(rows, cols, cells, rng.integers(0, 6, n).astype(float))  # 0s, repeats
    Y, X = rng.normal(size=(cols, k)), rng.normal(size=(rows, k))
    lam, lam_b, mu = 0.1, 0.3, 3.0
    other, own = rng.normal(size=cols), rng.normal(size=rows)
    kwargs = dict(global_mean=mu, other_bias=other, own_bias=own) if biased else {}
    Xn, own_new, failed = ref.explicit_als_half_sweep(R, Y, X, reg=lam, reg_bias=lam_b, **kwargs)
    assert failed == 0
    for u in range(rows):
        cols_u = R.indices[R.indptr[u]:R.indptr[u + 1]]
        values = R.data[R.indptr[u]:R.indptr[u + 1]]
        if cols_u.size == 0:
            assert not Xn[u].any() and (not biased or own_new[u] == 0)
            continue
        Z = np.c_[Y[cols_u], np.ones(cols_u.size)] if biased else Y[cols_u]
        target = values - mu - other[cols_u] if biased else values
        penalty = np.sqrt(cols_u.size * np.r_[np.full(k, lam), [lam_b] if biased else []])
        w = np.linalg.lstsq(np.r_[Z, np.diag(penalty)], np.r_[target, np.zeros(Z.shape[1])],
                            rcond=None)[0]
        np.testing.assert_allclose(Xn[u], w[:k], rtol=1e-9, atol=1e-10)  # well conditioned
        if biased:
            assert own_new[u] == pytest.approx(w[k], rel=1e-9, abs=1e-10)

"""recfuse.reference checked against independent computations.

The reference kernels are the contract every backend is tested against
(tests/test_als_backends.py), so they are checked here against plain linear algebra:
np.linalg.solve, normal equations built by hand from the dense matrix and the confidence
definition in the module docstring, and a brute-force loop for the loss.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from conftest import csr_matrices
from hypothesis import given
from hypothesis import strategies as st

from recfuse import reference

DTYPES = [pytest.param(np.float32, id="float32"), pytest.param(np.float64, id="float64")]
CONFIDENCES = ["linear", "raw"]
seeds = st.integers(0, 2**32 - 1)


def confidence_and_preference(value: float, alpha: float, confidence: str) -> tuple[float, float]:
    """c_ui and p_ui of one stored value, straight from the definition."""
    c = abs(value) if confidence == "raw" else 1.0 + alpha * value
    return c, (1.0 if value > 0 else 0.0)


def dense_confidence(matrix: sp.csr_matrix, alpha: float, confidence: str):
    """C and P for every (u, i): stored cells from the definition, the others c = 1, p = 0."""
    C = np.ones(matrix.shape)
    P = np.zeros(matrix.shape)
    coo = matrix.tocoo()  # keeps explicit zeros, which under "raw" have c = 0
    for u, i, value in zip(coo.row, coo.col, coo.data.astype(np.float64)):
        C[u, i], P[u, i] = confidence_and_preference(value, alpha, confidence)
    return C, P


def spd_system(rng, k, low=1.0, high=10.0):
    """A random SPD matrix with eigenvalues spread over [low, high], a right side and a start."""
    Q, _ = np.linalg.qr(rng.standard_normal((k, k)))
    spacing = (high - low) / k
    eigenvalues = np.linspace(low, high - spacing, k) + rng.uniform(0, spacing, k)
    A = (Q * eigenvalues) @ Q.T
    A = (A + A.T) / 2
    return A, rng.standard_normal(k), rng.standard_normal(k)


def a_norm(A, v) -> float:
    return float(np.sqrt(v @ A @ v))


# ---------------------------------------------------------------------------- CG
@given(seed=seeds, k=st.integers(1, 12))
def test_conjugate_gradient_with_k_steps_solves_a_well_conditioned_system(seed, k):
    A, b, x0 = spd_system(np.random.default_rng(seed), k)
    x = reference.conjugate_gradient(A, b, x0, k)
    exact = np.linalg.solve(A, b)
    np.testing.assert_allclose(x, exact, rtol=0, atol=1e-9 * np.linalg.norm(exact))


@given(seed=seeds)
def test_conjugate_gradient_first_step_is_the_exact_line_search_along_the_residual(seed):
    A, b, x0 = spd_system(np.random.default_rng(seed), 6)
    r = b - A @ x0
    expected = x0 + (r @ r) / (r @ A @ r) * r
    np.testing.assert_allclose(reference.conjugate_gradient(A, b, x0, 1), expected,
                               rtol=1e-12, atol=1e-12)


@given(seed=seeds, k=st.integers(5, 12))
def test_conjugate_gradient_approaches_the_exact_solve_as_steps_grow(seed, k):
    A, b, x0 = spd_system(np.random.default_rng(seed), k)
    exact = np.linalg.solve(A, b)
    errors = [a_norm(A, reference.conjugate_gradient(A, b, x0, steps) - exact)
              for steps in range(k + 1)]
    euclidean = [np.linalg.norm(reference.conjugate_gradient(A, b, x0, steps) - exact)
                 for steps in range(k + 1)]
    # CG decreases both the A-norm and the 2-norm error at every step, and is exact after k.
    assert errors[1] > errors[3] > errors[k]
    assert euclidean[1] > euclidean[3] > euclidean[k]
    assert all(later <= earlier * (1 + 1e-12) for earlier, later in zip(errors, errors[1:]))
    assert errors[k] <= 1e-9 * errors[0]


@given(seed=seeds, steps=st.integers(0, 5))
def test_conjugate_gradient_stops_at_once_when_the_start_solves_the_system(seed, steps):
    A, _, x0 = spd_system(np.random.default_rng(seed), 5)
    b = A @ x0  # r = b - A x0 is rounding noise: ‖r‖² < CG_TOLERANCE
    assert (b - A @ x0) @ (b - A @ x0) < reference.CG_TOLERANCE
    x = reference.conjugate_gradient(A, b, x0, steps)
    assert x is not x0
    assert np.array_equal(x, x0)


def test_conjugate_gradient_with_zero_steps_returns_a_copy_of_the_start():
    A, b, x0 = spd_system(np.random.default_rng(0), 4)
    x = reference.conjugate_gradient(A, b, x0, 0)
    assert x is not x0 and np.array_equal(x, x0)


def well_conditioned_half_sweep_problem(seed, k):
    rng = np.random.default_rng(seed)
    matrix = sp.random(15, 40, density=0.3, format="csr", random_state=rng)
    Y = rng.standard_normal((40, k))  # 40 items: YᵀY is well conditioned
    X0 = rng.standard_normal((15, k))
    return matrix, Y, X0


@given(seed=seeds, k=st.integers(5, 8))
def test_half_sweep_cg_approaches_the_cholesky_solve_as_cg_steps_grow(seed, k):
    matrix, Y, X0 = well_conditioned_half_sweep_problem(seed, k)
    options = dict(regularization=0.5, alpha=1.0)
    exact = reference.als_half_sweep(matrix, Y, X0, solver="cholesky", **options)

    def error(steps):
        X = reference.als_half_sweep(matrix, Y, X0, solver="cg", cg_steps=steps, **options)
        return float(np.linalg.norm(X - exact))

    assert error(1) > error(3) > error(k)
    assert error(k) <= 1e-8 * float(np.linalg.norm(X0 - exact))


# ---------------------------------------------------------------------------- half-sweep
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("confidence", CONFIDENCES)
@given(data=st.data(), seed=seeds, k=st.integers(1, 9), regularization=st.floats(0.01, 1.0),
       alpha=st.floats(0.0, 5.0))
def test_cholesky_half_sweep_rows_satisfy_their_normal_equations(
    dtype, confidence, data, seed, k, regularization, alpha
):
    matrix = data.draw(csr_matrices(dtype=dtype, allow_negative=confidence == "raw"))
    rng = np.random.default_rng(seed)
    Y = rng.standard_normal((matrix.shape[1], k)).astype(dtype)
    X0 = rng.standard_normal((matrix.shape[0], k)).astype(dtype)
    X = reference.als_half_sweep(matrix, Y, X0, regularization=regularization, alpha=alpha,
                                 confidence=confidence, solver="cholesky")
    assert X.dtype == dtype
    C, P = dense_confidence(matrix, alpha, confidence)
    Y64 = Y.astype(np.float64)
    eps = float(np.finfo(dtype).eps)
    for u in range(matrix.shape[0]):
        # (Yᵀ C_u Y + λI) x_u = Yᵀ C_u p_u, summed over every item, stored or not.
        A = Y64.T @ (C[u][:, None] * Y64) + regularization * np.eye(k)
        b = Y64.T @ (C[u] * P[u])
        # What rounding is relative to: the same sums over absolute values.
        A_abs = np.abs(Y64).T @ ((1 + np.abs(C[u] - 1))[:, None] * np.abs(Y64)) \
            + regularization * np.eye(k)
        b_abs = np.abs(Y64).T @ (np.abs(C[u]) * P[u])
        x = X[u].astype(np.float64)
        residual = np.linalg.norm(A @ x - b)
        scale = np.linalg.norm(A_abs, 2) * np.linalg.norm(x) + np.linalg.norm(b_abs)
        # Subnormal values (hypothesis draws them) carry an absolute rounding error instead.
        subnormal = float(np.finfo(dtype).smallest_subnormal)
        underflow = 4 * k * subnormal * (1 + np.linalg.norm(A_abs, 2))
        assert residual <= 16 * k * eps * scale + underflow, (u, residual, scale)


@pytest.mark.parametrize("solver", ["cg", "cholesky"])
def test_half_sweep_row_with_no_stored_values_solves_the_gram_system(solver):
    rng = np.random.default_rng(3)
    Y = rng.standard_normal((6, 3))
    X0 = rng.standard_normal((2, 3))
    before = X0.copy()
    matrix = sp.csr_matrix((np.array([2.0]), (np.array([1]), np.array([4]))), shape=(2, 6))
    X = reference.als_half_sweep(matrix, Y, X0, regularization=0.3, solver=solver, cg_steps=3)
    # Row 0 stores nothing: (YᵀY + λI) x = 0, so x = 0 exactly for Cholesky, and CG with
    # k = 3 steps reaches it up to rounding.
    np.testing.assert_allclose(X[0], np.zeros(3), atol=1e-10)
    assert np.linalg.norm(X[1]) > 0.01  # row 1 has a positive value: a non-zero solution
    np.testing.assert_array_equal(X0, before)


# ---------------------------------------------------------------------------- loss
@pytest.mark.parametrize("confidence", CONFIDENCES)
@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data(), seed=seeds, k=st.integers(1, 4), regularization=st.floats(0.0, 1.0),
       alpha=st.floats(0.0, 5.0))
def test_als_loss_matches_a_brute_force_double_loop(
    confidence, dtype, data, seed, k, regularization, alpha
):
    matrix = data.draw(csr_matrices(max_rows=5, max_cols=5, dtype=dtype,
                                    allow_negative=confidence == "raw"))
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((matrix.shape[0], k)).astype(dtype)
    Y = rng.standard_normal((matrix.shape[1], k)).astype(dtype)
    stored = {}
    coo = matrix.tocoo()
    for u, i, value in zip(coo.row, coo.col, coo.data):
        stored[(int(u), int(i))] = float(value)
    weighted, total_confidence = 0.0, 0.0
    for u in range(matrix.shape[0]):
        for i in range(matrix.shape[1]):
            if (u, i) in stored:
                c, p = confidence_and_preference(stored[(u, i)], alpha, confidence)
            else:
                c, p = 1.0, 0.0
            prediction = sum(float(X[u, f]) * float(Y[i, f]) for f in range(k))
            weighted += c * (p - prediction) ** 2
            total_confidence += c
    penalty = regularization * (sum(float(v) ** 2 for v in X.flat)
                                + sum(float(v) ** 2 for v in Y.flat))
    loss = reference.als_loss(matrix, X, Y, regularization=regularization, alpha=alpha,
                              confidence=confidence)
    assert isinstance(loss, float)
    if total_confidence == 0:  # every cell stored as 0 under "raw": defined as 0, not 0/0
        assert loss == 0.0
        return
    expected = (weighted + penalty) / total_confidence
    # Every term is non-negative (c >= 0 here), so the sums cannot cancel.
    assert loss == pytest.approx(expected, rel=1e-10)


# ---------------------------------------------------------------------------- dtypes
@pytest.mark.parametrize("solver", ["cg", "cholesky"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_half_sweep_keeps_the_dtype_of_the_factors(dtype, solver):
    rng = np.random.default_rng(1)
    matrix = sp.random(7, 5, density=0.4, format="csr", random_state=rng, dtype=dtype)
    Y = rng.standard_normal((5, 3)).astype(dtype)
    X0 = rng.standard_normal((7, 3)).astype(dtype)
    before = X0.copy()
    X = reference.als_half_sweep(matrix, Y, X0, regularization=0.1, solver=solver)
    assert X.dtype == dtype and X.shape == X0.shape
    assert np.array_equal(X0, before), "the starting factors were modified"
    # X in the other dtype: the arithmetic, and the result, follow Y.
    other = np.float64 if dtype == np.float32 else np.float32
    assert reference.als_half_sweep(matrix, Y, X0.astype(other), regularization=0.1,
                                    solver=solver).dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
def test_kernels_keep_the_dtype(dtype):
    rng = np.random.default_rng(2)
    A, b, x0 = spd_system(rng, 4)
    A, b, x0 = A.astype(dtype), b.astype(dtype), x0.astype(dtype)
    assert reference.conjugate_gradient(A, b, x0, 3).dtype == dtype
    Y = rng.standard_normal((5, 3)).astype(dtype)
    assert reference.gram(Y).dtype == dtype
    values = np.array([-2.0, 0.0, 1.5], dtype=dtype)
    for confidence in CONFIDENCES:
        w, q = reference.confidence_weights(values, 2.0, confidence)
        assert w.dtype == dtype and q.dtype == dtype


# ---------------------------------------------------------------------------- input reading
def dense_row_solution(dense_values, stored, Y, regularization, alpha, confidence):
    """x_u = (Yᵀ C_u Y + λI)⁻¹ Yᵀ C_u p_u per row, from dense float64 arrays: ``dense_values``
    the matrix's values (repeated entries summed), ``stored`` which cells hold an entry."""
    Y = np.asarray(Y, np.float64)
    if confidence == "raw":
        C = np.where(stored, np.abs(dense_values), 1.0)
    else:
        C = np.where(stored, 1.0 + alpha * dense_values, 1.0)
    P = (dense_values > 0).astype(np.float64)
    return np.array([np.linalg.solve(Y.T @ (C[u][:, None] * Y) + regularization * np.eye(Y.shape[1]),
                                     Y.T @ (C[u] * P[u])) for u in range(C.shape[0])])


@pytest.mark.parametrize("confidence", CONFIDENCES)
def test_half_sweep_and_loss_read_integer_values_as_numbers_not_truncated_confidences(confidence):
    # 1 + 0.5 * r is 1.5 or 2.5 for r = 1, 3: computed in the integer dtype it became 1 or 2.
    rng = np.random.default_rng(11)
    values = np.array([[1, 0, 3, 0, 2], [0, 5, 0, 0, 1]])
    Y = rng.standard_normal((5, 2))
    X0 = rng.standard_normal((2, 2))
    as_int, as_float = sp.csr_matrix(values), sp.csr_matrix(values.astype(np.float64))
    assert as_int.dtype.kind == "i"
    expected = dense_row_solution(values.astype(np.float64), values != 0, Y, 0.1, 0.5, confidence)
    for solver in ("cholesky", "cg"):
        got = reference.als_half_sweep(as_int, Y, X0, regularization=0.1, alpha=0.5,
                                       confidence=confidence, solver=solver, cg_steps=2)
        np.testing.assert_array_equal(got, reference.als_half_sweep(
            as_float, Y, X0, regularization=0.1, alpha=0.5, confidence=confidence,
            solver=solver, cg_steps=2))
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    c, _ = reference.confidence_and_preference(np.array([1, 3]), 0.5, confidence)
    np.testing.assert_array_equal(c, [1.5, 2.5] if confidence == "linear" else [1.0, 3.0])
    assert reference.als_loss(as_int, X0, Y, regularization=0.1, alpha=0.5,
                              confidence=confidence) == pytest.approx(reference.als_loss(
        as_float, X0, Y, regularization=0.1, alpha=0.5, confidence=confidence), rel=1e-15)


def test_half_sweep_computes_in_the_factors_dtype_whatever_the_matrix_dtype():
    # float64 values with float32 factors: the documented arithmetic is float32 throughout
    # (the backends cast the values first), so it equals the sweep of the float32 matrix.
    rng = np.random.default_rng(12)
    matrix = sp.random(6, 8, density=0.5, format="csr", random_state=rng) * 7.3
    Y = rng.standard_normal((8, 3)).astype(np.float32)
    X0 = rng.standard_normal((6, 3)).astype(np.float32)
    for solver in ("cholesky", "cg"):
        np.testing.assert_array_equal(
            reference.als_half_sweep(matrix, Y, X0, regularization=0.1, solver=solver),
            reference.als_half_sweep(matrix.astype(np.float32), Y, X0, regularization=0.1,
                                     solver=solver))


@pytest.mark.parametrize("confidence", CONFIDENCES)
def test_repeated_entries_are_one_entry_holding_their_sum_in_sweep_and_loss(confidence):
    # Row 0 stores column 0 twice (1 and 2) and column 2 once; row 1 stores column 3 as 2 and
    # -2 (summed: a stored 0). Before, the sweep counted every copy (target c p twice) and the
    # loss kept only the last copy: the two disagreed with each other and with the matrix.
    rng = np.random.default_rng(13)
    data = np.array([1.0, 2.0, 4.0, 2.0, -2.0])
    indices = np.array([0, 0, 2, 3, 3])
    matrix = sp.csr_matrix((data, indices, np.array([0, 3, 5])), shape=(2, 4))
    assert not matrix.has_canonical_format
    summed = np.array([[3.0, 0, 4.0, 0], [0, 0, 0, 0.0]])
    stored = np.array([[True, False, True, False], [False, False, False, True]])
    Y = rng.standard_normal((4, 2))
    X0 = rng.standard_normal((2, 2))
    canonical = matrix.copy()
    canonical.sum_duplicates()
    options = dict(regularization=0.2, alpha=0.7, confidence=confidence)
    got = reference.als_half_sweep(matrix, Y, X0, solver="cholesky", **options)
    np.testing.assert_allclose(got, dense_row_solution(summed, stored, Y, 0.2, 0.7, confidence),
                               rtol=1e-12, atol=1e-12)
    for solver in ("cholesky", "cg"):
        np.testing.assert_array_equal(
            reference.als_half_sweep(matrix, Y, X0, solver=solver, **options),
            reference.als_half_sweep(canonical, Y, X0, solver=solver, **options))
    assert reference.als_loss(matrix, X0, Y, **options) == reference.als_loss(canonical, X0, Y,
                                                                              **options)
    assert matrix.indices.tolist() == indices.tolist(), "the input was modified"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("confidence", CONFIDENCES)
def test_half_sweep_cg_is_textbook_cg_on_the_dense_normal_equations(dtype, confidence):
    """n steps of CG from X0 on (Yᵀ C_u Y + λI) x = Yᵀ C_u p_u, the system built densely."""
    rng = np.random.default_rng(14)
    values = sp.random(5, 9, density=0.4, format="csr", random_state=rng) * 6
    if confidence == "raw":
        values.data[::2] *= -1
    values = values.astype(dtype)
    Y = rng.standard_normal((9, 3)).astype(dtype)
    X0 = rng.standard_normal((5, 3)).astype(dtype)
    dense = values.toarray().astype(np.float64)
    stored = (abs(values) + sp.csr_matrix((np.ones(values.nnz), values.indices, values.indptr),
                                          shape=values.shape)).toarray() != 0
    C = np.where(stored, np.abs(dense) if confidence == "raw" else 1 + 1.5 * dense, 1.0)
    P = (dense > 0).astype(np.float64)
    Y64 = Y.astype(np.float64)
    for steps in (1, 2):
        got = reference.als_half_sweep(values, Y, X0, regularization=0.3, alpha=1.5,
                                       confidence=confidence, solver="cg", cg_steps=steps)
        for u in range(5):
            A = Y64.T @ np.diag(C[u]) @ Y64 + 0.3 * np.eye(3)
            x = X0[u].astype(np.float64)
            r = Y64.T @ (C[u] * P[u]) - A @ x
            d = r.copy()
            for _ in range(steps):
                step = (r @ r) / (d @ A @ d)
                x, r_new = x + step * d, r - step * (A @ d)
                d, r = r_new + (r_new @ r_new) / (r @ r) * d, r_new
            tolerance = 1e-10 if dtype == np.float64 else 1e-4
            np.testing.assert_allclose(got[u], x, rtol=tolerance, atol=tolerance)


# ---------------------------------------------------------------------------- MLP activations
@pytest.mark.parametrize("name", ["relu", "gelu", "sigmoid", "tanh", "identity"])
def test_mlp_activation_matches_torch_including_infinities(name):
    torch = pytest.importorskip("torch")
    modules = {"relu": torch.nn.ReLU(), "gelu": torch.nn.GELU(), "sigmoid": torch.nn.Sigmoid(),
               "tanh": torch.nn.Tanh(), "identity": torch.nn.Identity()}
    x = np.r_[np.linspace(-12, 12, 241), [-1e4, -800.0, 800.0, 1e4, -np.inf, np.inf, np.nan]]
    got = reference.mlp_activation(name, x)  # no warning (warnings are errors here)
    expected = modules[name](torch.tensor(x, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-14, atol=1e-15, equal_nan=True)


# ---------------------------------------------------------------------------- ranking metrics
def test_ranking_metrics_of_a_hand_computed_list():
    from recfuse import reference_data

    # 10 items, test items {1, 4, 7}; the list 4, 2, 1 then a -1 pad (k = 4).
    table = reference_data.ranking_metrics(np.array([[4, 2, 1, -1]]), [0], np.array([0, 3]),
                                           np.array([1, 4, 7]), 10)
    got = dict(zip(reference_data.RANKING_COLUMNS, table[0]))
    # AUC over the 3 x 7 (positive, negative) pairs: 4 beats all 7 negatives, 1 beats the 6
    # unlisted ones, 7 (unlisted) loses to 2 and ties the 6 unlisted negatives: (7 + 6 + 3) / 21.
    expected = dict(hits=2, relevant=3, average_precision=(1 / 1 + 2 / 3) / 3,
                    ndcg=(1 + 1 / np.log2(4)) / (1 + 1 / np.log2(3) + 1 / np.log2(4)),
                    auc=16 / 21, reciprocal_rank=1.0, recall=2 / 3, hit=1.0)
    assert got == pytest.approx(expected, rel=1e-14)


def test_explicit_half_sweep_takes_both_biases_or_neither():
    R = sp.csr_matrix(np.array([[5.0, 0.0], [0.0, 0.0]]))  # row 1 has no entries
    Y, X = np.ones((2, 2)), np.zeros((2, 2))
    for given in (dict(other_bias=np.zeros(2)), dict(own_bias=np.zeros(2))):
        with pytest.raises(ValueError, match="both given"):
            reference.explicit_als_half_sweep(R, Y, X, reg=0.1, **given)
    X2, own, failed = reference.explicit_als_half_sweep(R, Y, X, reg=0.1, other_bias=np.zeros(2),
                                                        own_bias=np.zeros(2))
    assert failed == 0 and own[1] == 0 and not X2[1].any()

"""Plain NumPy reference kernels: the contract every backend implements.

These functions are written to be read, not to be fast. Every native, Numba and CuPy
backend is tested against them (see tests/test_als_backends.py).

ALS half-sweep (Hu, Koren, Volinsky 2008)
------------------------------------------
For a CSR matrix ``R`` (rows x cols) of stored values ``r`` and fixed factors ``Y``
(cols x k), every row ``u`` gets the ``x_u`` that solves::

    (YᵀY + λI + Σ_i w_ui y_i y_iᵀ) x_u = Σ_i q_ui y_i

with, for each stored entry ``r_ui`` (``confidence="linear"``, the default)::

    c_ui = 1 + alpha * r_ui      w_ui = c_ui - 1      q_ui = c_ui * p_ui,  p_ui = [r_ui > 0]

which is ``(YᵀY + Yᵀ(C_u − I)Y + λI) x_u = Yᵀ C_u p_u``. ``confidence="raw"`` reproduces
the convention of the ``implicit`` package, where the stored value is the confidence
itself: ``c_ui = |r_ui|``, ``p_ui = [r_ui > 0]`` (negative values mean "disliked").
Entries that are not stored have ``c = 1`` and ``p = 0``. ``R`` is read as scipy reads it:
repeated (u, i) entries of a non-canonical matrix are one entry holding their sum (what the
models' input validation makes of them, and what the backends are given), and the stored
values are taken in ``Y``'s dtype (integer values included: no confidence is truncated).

``solver="cholesky"`` solves exactly; a row whose system is not positive definite (with
regularization 0 or negative values, or when its sums overflow the dtype) keeps its previous
vector (the native kernels, when finite confidences add up past the dtype, leave NaN there
instead, which a fit reports as a divergence; its input checks refuse such sums first), and
``als_half_sweep_counted`` reports how many did. ``solver="cg"`` runs ``cg_steps`` steps of
conjugate gradient from the current ``x_u`` (the algorithm below, step for step), and
stops early when the squared residual norm falls below ``CG_TOLERANCE``. A CG row fails as
a Cholesky row does (keeps its previous vector, and is counted) when a step's ``p·Ap`` is
not a positive finite number in the dtype (its sums overflowed, as long item vectors with
large confidences make them, or the system is singular along ``p``) or when the solution
holds inf or NaN. CG multiplies ``A`` by a vector as the kernels do, ``(G + λI) v + Σ_i w_i
(y_i·v) y_i``, never forming ``A`` (its entries rounded to eps·c would swamp λ). Backends
agree on which rows fail where the overflow is decisive; on systems conditioned far beyond
1/eps a step is rounding noise, and which rows fail there depends on each backend's order
of summation.

The training loss reported by ``als_loss`` is::

    [Σ_{u,i} c_ui (p_ui − x_uᵀy_i)² + λ(‖X‖² + ‖Y‖²)] / Σ_{u,i} c_ui

summed over *all* (u, i) pairs, stored or not.

Top-k retrieval
---------------
For queries ``Q`` (m x d) and items ``V`` (n x d), the score of item j for query i is::

    s_ij = (q_i · v_j) * scale_j + bias_j         (scale 1 and bias 0 when not given)

Item j *qualifies* for query i when it is allowed (``mask[j]``), not excluded (no stored
entry (i, j) in ``exclude``, whatever its value) and ``s_ij > -inf`` (a NaN score, from a
NaN or an inf inside the item table, never qualifies). Row i of the result holds the
``min(k, qualifying)`` best qualifying items, by score descending and ties by smaller id,
then padding: id -1 and score -inf.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

CG_TOLERANCE = 1e-20
CONFIDENCE_MODES = ("linear", "raw")


def confidence_and_preference(values: np.ndarray, alpha: float, confidence: str = "linear"):
    """Return ``(c, p)`` for stored values: the confidence and the preference [r > 0]."""
    values = np.asarray(values)
    if values.dtype.kind != "f":  # integer or bool values: confidences like 1 + 0.5 * 3 are not
        values = values.astype(np.float64)  # whole numbers, so never computed in (or cast to) ints
    if confidence == "linear":
        c = 1 + alpha * values
    elif confidence == "raw":
        c = np.abs(values)
    else:
        raise ValueError(f"confidence must be one of {CONFIDENCE_MODES}, got {confidence!r}")
    return c.astype(values.dtype), (values > 0).astype(values.dtype)


def confidence_weights(values: np.ndarray, alpha: float, confidence: str = "linear"):
    """Return ``(w, q)`` for stored values: the extra weight ``c - 1`` and the target ``c * p``."""
    c, p = confidence_and_preference(values, alpha, confidence)
    return (c - 1).astype(c.dtype), (c * p).astype(c.dtype)


def canonical_csr(R, dtype) -> sp.csr_matrix:
    """A canonical copy of ``R`` with values in ``dtype``: repeated (row, col) entries summed
    (stored zeros kept), indices sorted."""
    matrix = sp.csr_matrix(R, dtype=dtype, copy=True)
    matrix.sum_duplicates()
    return matrix


def gram(Y: np.ndarray) -> np.ndarray:
    """YᵀY in Y's dtype."""
    return Y.T @ Y


def _row_system(R: sp.csr_matrix, u: int, Y, G, regularization, alpha, confidence,
                operator: bool = False):
    """(A, b) of row u; with ``operator``, A as the function v -> A v that the kernels
    compute: (G + λI) v + Σ_i w_i (y_i·v) y_i. (A formed in the dtype rounds its entries to
    eps·c of the largest confidence, which can swamp λ and make a CG step's p·Ap <= 0; the
    kernels' sum keeps w_i (y_i·p)² >= 0 exact to its own rounding.)"""
    start, end = R.indptr[u], R.indptr[u + 1]
    cols = R.indices[start:end]
    w, q = confidence_weights(R.data[start:end], alpha, confidence)
    Yu = Y[cols]
    G_reg = (G + regularization * np.eye(Y.shape[1], dtype=Y.dtype)).astype(Y.dtype)
    b = (Yu.T @ q).astype(Y.dtype)
    if operator:
        return lambda v: (G_reg @ v + Yu.T @ (w * (Yu @ v))).astype(Y.dtype), b
    return (G_reg + (Yu.T * w) @ Yu).astype(Y.dtype), b


def als_half_sweep(
    R: sp.csr_matrix,
    Y: np.ndarray,
    X: np.ndarray,
    *,
    regularization: float,
    alpha: float = 1.0,
    confidence: str = "linear",
    solver: str = "cg",
    cg_steps: int = 3,
) -> np.ndarray:
    """Return new row factors (a copy of ``X`` with every row re-solved).

    ``R`` is rows x cols CSR, ``Y`` cols x k, ``X`` rows x k (the CG starting point).
    All arithmetic happens in ``Y.dtype``.
    """
    return als_half_sweep_counted(R, Y, X, regularization=regularization, alpha=alpha,
                                  confidence=confidence, solver=solver, cg_steps=cg_steps)[0]


def als_half_sweep_counted(R, Y, X, *, regularization, alpha=1.0, confidence="linear",
                           solver="cg", cg_steps=3, fixed_gram=None) -> tuple[np.ndarray, int]:
    """``als_half_sweep`` that also returns the number of rows left unchanged (Cholesky rows
    whose system is not positive definite, and CG rows that failed as defined above). ``fixed_gram``: the YᵀY to use instead of
    ``Y``'s own, when ``Y`` holds only some of the fixed side's rows (a block of a
    distributed fit, whose Gram covers the whole side)."""
    dtype = Y.dtype
    failed = 0
    X = np.array(X, dtype=dtype, copy=True)
    R = canonical_csr(R, dtype)
    G = gram(Y) if fixed_gram is None else np.asarray(fixed_gram, dtype=dtype)
    for u in range(R.shape[0]):
        A, b = _row_system(R, u, Y, G, dtype.type(regularization), dtype.type(alpha), confidence,
                           operator=solver == "cg")
        if solver == "cholesky":
            # NumPy's Cholesky raises on a matrix that is not positive definite, but not on
            # inf or NaN entries (sums that overflowed the dtype): those rows fail too
            try:
                lower = np.linalg.cholesky(A) if np.isfinite(A).all() else None
            except np.linalg.LinAlgError:
                lower = None
            solved = None if lower is None else np.linalg.solve(lower.T, np.linalg.solve(lower, b))
            if solved is None or not np.isfinite(solved).all():
                failed += 1
                continue
            X[u] = solved
        elif solver == "cg":
            solved = conjugate_gradient(A, b, X[u], cg_steps)
            if solved is None:
                failed += 1
                continue
            X[u] = solved
        else:
            raise ValueError(f"solver must be 'cg' or 'cholesky', got {solver!r}")
    return X, failed


def conjugate_gradient(A, b: np.ndarray, x0: np.ndarray, steps: int) -> np.ndarray | None:
    """``steps`` steps of CG on the SPD system A x = b from x0 (the exact algorithm backends
    use), or None when the row fails: a step's p·Ap is not a positive finite number, or the
    result holds inf or NaN. ``A``: a matrix, or a function v -> A v."""
    times = A if callable(A) else A.__matmul__
    x = x0.copy()
    r = b - times(x)
    p = r.copy()
    rs_old = r @ r
    if rs_old < CG_TOLERANCE:
        return x
    for _ in range(steps):
        Ap = times(p)
        pAp = p @ Ap
        if not 0 < pAp <= np.finfo(pAp.dtype).max:
            return None
        step = rs_old / pAp
        x += step * p
        r -= step * Ap
        rs_new = r @ r
        if rs_new < CG_TOLERANCE:
            break
        p = r + (rs_new / rs_old) * p
        rs_old = rs_new
    return x if np.isfinite(x).all() else None


def als_loss(
    R: sp.csr_matrix,
    X: np.ndarray,
    Y: np.ndarray,
    *,
    regularization: float,
    alpha: float = 1.0,
    confidence: str = "linear",
) -> float:
    """The normalised weighted squared loss defined in the module docstring (float64)."""
    X64, Y64 = X.astype(np.float64), Y.astype(np.float64)
    full = X64 @ Y64.T  # every (u, i) prediction; the reference can afford it
    c = np.ones_like(full)
    p = np.zeros_like(full)
    coo = canonical_csr(R, np.float64).tocoo()  # one entry per (u, i): duplicates summed
    c[coo.row, coo.col], p[coo.row, coo.col] = confidence_and_preference(
        coo.data.astype(np.float64), alpha, confidence)
    total = (c * (p - full) ** 2).sum() + regularization * ((X64**2).sum() + (Y64**2).sum())
    normaliser = c.sum()
    return float(total / normaliser) if normaliser else 0.0


def topk_scores(queries, items, item_bias=None, item_scale=None) -> np.ndarray:
    """The full m x n score matrix s_ij of the top-k contract, in float64."""
    with np.errstate(invalid="ignore", over="ignore"):
        S = np.asarray(queries, np.float64) @ np.asarray(items, np.float64).T
        if item_scale is not None:
            S = S * np.asarray(item_scale, np.float64)
        if item_bias is not None:
            S = S + np.asarray(item_bias, np.float64)
    return S


def topk_qualifying(S: np.ndarray, exclude=None, mask=None) -> np.ndarray:
    """Boolean m x n: which items qualify for which query (see the module docstring)."""
    ok = S > -np.inf  # False for NaN too
    if mask is not None:
        ok &= np.asarray(mask, bool)[None, :]
    if exclude is not None:
        E = sp.csr_matrix(exclude)
        rows = np.repeat(np.arange(E.shape[0]), np.diff(E.indptr))
        ok[rows, E.indices] = False
    return ok


def topk(queries, items, k: int, *, exclude=None, mask=None, item_bias=None, item_scale=None):
    """(ids int64 m x k, scores float64 m x k) by full sort: the oracle of recfuse.topk."""
    S = topk_scores(queries, items, item_bias, item_scale)
    ok = topk_qualifying(S, exclude, mask)
    m = S.shape[0]
    ids = np.full((m, k), -1, dtype=np.int64)
    scores = np.full((m, k), -np.inf)
    for i in range(m):
        candidates = np.flatnonzero(ok[i])
        order = candidates[np.lexsort((candidates, -S[i, candidates]))][:k]
        ids[i, : order.size] = order
        scores[i, : order.size] = S[i, order]
    return ids, scores

# ============================================================================ starting factors
# The factor models start from normal draws made by counter: normal_draws(seed, n) is a pure
# function of the seed and the draw's index n (recfuse/random.hpp gives the definition), so
# a native fit writes a table straight into its training layout, in any row order, and every
# backend and SIMD level starts from the same bits. All of it is float32 arithmetic, one
# rounding per operation, in the order below (the native kernel's order).

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def splitmix64_draws(start, positions) -> np.ndarray:
    """Draw ``positions`` (1, 2, ...) of the splitmix64 streams that start at ``start``
    (uint64 arrays or ints, broadcast): mix(start + position γ), recfuse/random.hpp's
    splitmix64_draw. The counter-based draws of the starting factors, the SGD block shuffle
    and the distributed initial factors (``_splitmix64`` below steps the same stream)."""
    n = np.asarray(positions, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = np.asarray(start, dtype=np.uint64) + n * _GOLDEN
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _f32(value) -> np.float32:
    return np.float32(value)


def normal_draws(seed: int, indices) -> np.ndarray:
    """Standard normal draws number ``indices`` (int64 >= 0) of ``seed`` (0 <= seed < 2**64),
    float32: the Box-Muller transform of two uniforms from splitmix64 (see the comment)."""
    n = np.asarray(indices, dtype=np.uint64)
    x = splitmix64_draws(seed, (n >> np.uint64(1)) + np.uint64(1))  # one hash per pair
    radius_bits = (x >> np.uint64(41)).astype(np.int32)
    quarter = ((x >> np.uint64(38)) & np.uint64(3)).astype(np.int32)
    angle_bits = ((x >> np.uint64(16)) & np.uint64(0x3FFFFF)).astype(np.int32)

    u1 = (2 * radius_bits + 1).astype(np.float32) * _f32(2.0 ** -24)  # in (0, 1)
    bits = u1.view(np.int32)
    e = (bits >> 23) - 127
    m = ((bits & 0x7FFFFF) | 0x3F800000).view(np.float32)  # u1 = m 2^e, m in [1, 2)
    big = m > _f32(float.fromhex("0x1.6a09e6p+0"))  # m > sqrt(2): m / 2, e + 1
    m = np.where(big, m * _f32(0.5), m)
    e = e + big
    s = (m - _f32(1)) / (m + _f32(1))
    s2 = s * s
    c3, c5, c7, c9 = (_f32(1) / _f32(d) for d in (3, 5, 7, 9))
    series = _f32(1) + s2 * (c3 + s2 * (c5 + s2 * (c7 + s2 * c9)))
    ln_u1 = e.astype(np.float32) * _f32(float.fromhex("0x1.62e430p-1")) + (s + s) * series
    r = np.sqrt(ln_u1 * _f32(-2))

    a = (2 * angle_bits + 1 - (1 << 22)).astype(np.float32) * \
        _f32(float.fromhex("0x1.921fb6p-23"))  # pi/2 * 2^-23: a in (-pi/4, pi/4)
    a2 = a * a
    s3, s5, s7, s9 = (_f32(-1) / _f32(6), _f32(1) / _f32(120), _f32(-1) / _f32(5040),
                      _f32(1) / _f32(362880))
    k2, k4, k6, k8 = (_f32(-1) / _f32(2), _f32(1) / _f32(24), _f32(-1) / _f32(720),
                      _f32(1) / _f32(40320))
    sin_a = a * (_f32(1) + a2 * (s3 + a2 * (s5 + a2 * (s7 + a2 * s9))))
    cos_a = _f32(1) + a2 * (k2 + a2 * (k4 + a2 * (k6 + a2 * k8)))
    odd = (quarter & 1).astype(bool)  # (c, s) turned by quarter turns: swap for q = 1, 3
    first, second = np.where(odd, sin_a, cos_a), np.where(odd, cos_a, sin_a)
    first = np.where((quarter + 1) & 2, -first, first)  # negative for q = 1, 2
    second = np.where(quarter & 2, -second, second)     # negative for q = 2, 3
    return r * np.where((n & np.uint64(1)).astype(bool), second, first)


def normal_table(seed: int, rows: int, k: int, mean: float, std: float, dtype) -> np.ndarray:
    """(rows, k) starting factors: mean + std * normal_draws(seed, r * k + c), in ``dtype``
    (the draws are float32; the scaling is done in ``dtype``)."""
    dtype = np.dtype(dtype)
    z = normal_draws(seed, np.arange(rows * k, dtype=np.int64)).reshape(rows, k)
    return dtype.type(mean) + dtype.type(std) * z.astype(dtype)

# ============================================================================ SGD
# Explicit-feedback factorization (Funk SVD, SVD++) and BPR, one epoch at a time. Every
# function takes the ratings (or triples) and an ``order``: the epoch visits entry
# ``order[t]`` at step t. The parallel backends cut the ratings into blocks that share no
# user or item and hand each block to one thread; laid end to end in schedule order those
# blocks are an ``order`` for which these sequential loops give exactly the parallel result.
#
# Funk SVD, the update rules of Surprise (``surprise.SVD``), for a rating r of user u, item i:
#
#     e   = r − (μ + b_u + b_i + q_i·p_u)
#     b_u ← b_u + lr_bu (e − reg_bu b_u)            (biased only; μ = 0 when unbiased)
#     b_i ← b_i + lr_bi (e − reg_bi b_i)
#     p_u ← p_u + lr_pu (e q_i − reg_pu p_u)        (both from the values before this step)
#     q_i ← q_i + lr_qi (e p_u − reg_qi q_i)
#
# SVD++ (Koren 2008) predicts μ + b_u + b_i + q_i·(p_u + z_u) with the implicit term
# z_u = |N(u)|^(-1/2) Σ_{j∈N(u)} y_j over the items N(u) that u rated. Surprise recomputes z_u
# from the current y and updates every y_j, j ∈ N(u), after *each* rating: O(|N(u)|² k) per
# user and epoch. Here the epoch goes by *user passes*, maximal runs of consecutive ratings
# (in ``order``) of one user u. For each pass:
#
#     1. z_u from the current y;
#     2. for each rating of the pass: e = r − (μ + b_u + b_i + q_i·(p_u + z_u)); b_u, b_i,
#        p_u as in SVD; q_i ← q_i + lr_qi (e (p_u + z_u) − reg_qi q_i); g ← g + e q_i
#        (q_i, p_u before this step; g starts at 0; z_u held);
#     3. for each j ∈ N(u): y_j ← (1 − lr_yj reg_yj)^c y_j + lr_yj g / √|N(u)|, with c the
#        number of ratings in the pass.
#
# Step 3 is Surprise's per-rating y updates summed over the pass: the same gradients, the
# same total shrinkage (c factors of 1 − lr reg), applied once. A pass of one rating is
# exactly Surprise's update; with each user's ratings together (the order recfuse.SVDpp
# uses) an epoch costs O(|N(u)| k) per user instead of O(|N(u)|² k).
#
# BPR (Rendle et al. 2009) with item biases, for a triple (u, i, j): i seen by u, j not:
#
#     x   = p_u·(q_i − q_j) + b_i − b_j,   s = σ(−x) = 1 / (1 + e^x)
#     p_u ← p_u + lr (s (q_i − q_j) − reg p_u)
#     q_i ← q_i + lr (s p_u − reg q_i),   q_j ← q_j + lr (−s p_u − reg q_j)
#     b_i ← b_i + lr (s − reg b_i),       b_j ← b_j + lr (−s − reg b_j)
#
# (all right-hand sides from the values before the step; s computed as (1 − tanh(x/2)) / 2,
# which cannot overflow).

SVD_RATE_NAMES = ("bu", "bi", "pu", "qi")
SVDPP_RATE_NAMES = ("bu", "bi", "pu", "qi", "yj")


def _rates(value, names, dtype, what) -> tuple:
    """A scalar applies to every term; a tuple gives one value per name in ``names``."""
    if np.ndim(value) == 0:
        return tuple(dtype.type(value) for _ in names)
    if len(value) != len(names):
        raise ValueError(f"{what} must be a number or {len(names)} numbers {names}, got {value!r}")
    return tuple(dtype.type(v) for v in value)


def _order(order, n):
    return np.arange(n) if order is None else np.asarray(order, dtype=np.int64)


def svd_sgd_epoch(users, items, ratings, global_mean, user_bias, item_bias, P, Q, *,
                  lr, reg, biased: bool = True, order=None):
    """One epoch of Surprise's Funk SVD updates; returns new (user_bias, item_bias, P, Q).

    ``users``, ``items``, ``ratings``: one entry per rating. ``P`` (users x k) and ``Q``
    (items x k); all arithmetic in ``P.dtype``. ``lr`` and ``reg``: a number, or one per
    term (bu, bi, pu, qi). ``biased=False`` uses μ = 0 and leaves the biases alone.
    The inputs are not modified.
    """
    dtype = P.dtype
    lr_bu, lr_bi, lr_pu, lr_qi = _rates(lr, SVD_RATE_NAMES, dtype, "lr")
    reg_bu, reg_bi, reg_pu, reg_qi = _rates(reg, SVD_RATE_NAMES, dtype, "reg")
    bu, bi = np.array(user_bias, dtype=dtype), np.array(item_bias, dtype=dtype)
    P, Q = np.array(P, dtype=dtype), np.array(Q, dtype=dtype)
    mu = dtype.type(global_mean) if biased else dtype.type(0)
    r_all = np.asarray(ratings, dtype=dtype)
    for t in _order(order, len(r_all)):
        u, i, r = users[t], items[t], r_all[t]
        p, q = P[u].copy(), Q[i].copy()
        err = r - (mu + bu[u] + bi[i] + p @ q)
        if biased:
            bu[u] += lr_bu * (err - reg_bu * bu[u])
            bi[i] += lr_bi * (err - reg_bi * bi[i])
        P[u] = p + lr_pu * (err * q - reg_pu * p)
        Q[i] = q + lr_qi * (err * p - reg_qi * q)
    return bu, bi, P, Q


def svdpp_implicit_term(implicit: sp.csr_matrix, Y: np.ndarray) -> np.ndarray:
    """z_u = |N(u)|^(-1/2) Σ_{j∈N(u)} y_j for every row u of ``implicit`` (0 for empty rows)."""
    Z = np.zeros((implicit.shape[0], Y.shape[1]), dtype=Y.dtype)
    for u in range(implicit.shape[0]):
        cols = implicit.indices[implicit.indptr[u]:implicit.indptr[u + 1]]
        if cols.size:
            Z[u] = Y[cols].sum(axis=0) * Y.dtype.type(1 / np.sqrt(cols.size))
    return Z


def svdpp_sgd_epoch(users, items, ratings, global_mean, user_bias, item_bias, P, Q, Y,
                    implicit: sp.csr_matrix, *, lr, reg, order=None):
    """One SVD++ epoch by user passes as defined above; returns new (user_bias, item_bias,
    P, Q, Y).

    ``implicit`` is a users x items CSR whose row u lists N(u) (values ignored). ``lr`` and
    ``reg``: a number, or one per term (bu, bi, pu, qi, yj). The inputs are not modified.
    """
    dtype = P.dtype
    lr_bu, lr_bi, lr_pu, lr_qi, lr_yj = _rates(lr, SVDPP_RATE_NAMES, dtype, "lr")
    reg_bu, reg_bi, reg_pu, reg_qi, reg_yj = _rates(reg, SVDPP_RATE_NAMES, dtype, "reg")
    bu, bi = np.array(user_bias, dtype=dtype), np.array(item_bias, dtype=dtype)
    P, Q, Y = np.array(P, dtype=dtype), np.array(Q, dtype=dtype), np.array(Y, dtype=dtype)
    mu = dtype.type(global_mean)
    r_all = np.asarray(ratings, dtype=dtype)
    shrink = dtype.type(1) - lr_yj * reg_yj
    sequence = _order(order, len(r_all))
    start = 0
    while start < sequence.size:
        u = users[sequence[start]]
        end = start
        while end < sequence.size and users[sequence[end]] == u:
            end += 1
        cols = implicit.indices[implicit.indptr[u]:implicit.indptr[u + 1]]
        inv_sqrt = dtype.type(1 / np.sqrt(cols.size)) if cols.size else dtype.type(0)
        z = Y[cols].sum(axis=0) * inv_sqrt if cols.size else np.zeros(P.shape[1], dtype=dtype)
        g = np.zeros(P.shape[1], dtype=dtype)
        for t in sequence[start:end]:
            i, r = items[t], r_all[t]
            p, q = P[u].copy(), Q[i].copy()
            err = r - (mu + bu[u] + bi[i] + q @ (p + z))
            bu[u] += lr_bu * (err - reg_bu * bu[u])
            bi[i] += lr_bi * (err - reg_bi * bi[i])
            P[u] = p + lr_pu * (err * q - reg_pu * p)
            Q[i] = q + lr_qi * (err * (p + z) - reg_qi * q)
            g += err * q
        # NumPy's float64 power, as the kernels' double pow: inf past its range, where a
        # Python float's power raises OverflowError (the fit's check says "diverged")
        decay = dtype.type(np.float64(shrink) ** np.float64(end - start))
        step = g * (lr_yj * inv_sqrt)
        for j in cols:
            Y[j] = decay * Y[j] + step
        start = end
    return bu, bi, P, Q, Y


def bpr_sgd_epoch(users, positives, negatives, P, Q, item_bias, *, lr, reg, order=None):
    """One BPR epoch over triples (users[t], positives[t], negatives[t]); returns new
    (P, Q, item_bias). Requires positives[t] != negatives[t]. Inputs are not modified."""
    dtype = P.dtype
    lr, reg = dtype.type(lr), dtype.type(reg)
    P, Q = np.array(P, dtype=dtype), np.array(Q, dtype=dtype)
    b = np.array(item_bias, dtype=dtype)
    half = dtype.type(0.5)
    for t in _order(order, len(users)):
        u, i, j = users[t], positives[t], negatives[t]
        if i == j:
            raise ValueError(f"triple {t} has the same positive and negative item {i}")
        p, qi, qj = P[u].copy(), Q[i].copy(), Q[j].copy()
        x = p @ (qi - qj) + b[i] - b[j]
        s = half * (dtype.type(1) - np.tanh(half * x))
        P[u] = p + lr * (s * (qi - qj) - reg * p)
        Q[i] = qi + lr * (s * p - reg * qi)
        Q[j] = qj + lr * (-s * p - reg * qj)
        b[i] += lr * (s - reg * b[i])
        b[j] += lr * (-s - reg * b[j])
    return P, Q, b


# Negative sampling for BPR, shared by every backend so that all draw the same items.
# Entries come grouped by block as for the epochs (block b = s * grid + r, column bin
# c = (r + s) mod grid). Block b draws from its own splitmix64 stream, seeded with
# seed XOR (0xD1B54A32D192ED03 * (b + 1)) mod 2^64; each draw picks candidates[x mod n]
# among the n items of bin c, and is redrawn while the user has seen that item, at most
# max_tries times (then the entry is skipped: -1).
_MASK64 = (1 << 64) - 1


def _splitmix64(state: int) -> tuple[int, int]:
    state = (state + 0x9E3779B97F4A7C15) & _MASK64
    z = ((state ^ (state >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return state, z ^ (z >> 31)


def bpr_sample_negatives(users, offsets, grid: int, seen: sp.csr_matrix, bin_items, bin_offsets,
                         seed: int, max_tries: int) -> np.ndarray:
    """The negative item of every entry (int32; -1 where none was found), as defined above."""
    negatives = np.full(len(users), -1, dtype=np.int32)
    for block in range(grid * grid):
        s, r = divmod(block, grid)
        c = (r + s) % grid
        candidates = np.asarray(bin_items[bin_offsets[c]:bin_offsets[c + 1]])
        state = (int(seed) ^ (0xD1B54A32D192ED03 * (block + 1))) & _MASK64
        for t in range(offsets[block], offsets[block + 1]):
            u = users[t]
            row = set(seen.indices[seen.indptr[u]:seen.indptr[u + 1]].tolist())
            for _ in range(max_tries if candidates.size else 0):
                state, x = _splitmix64(state)
                j = int(candidates[x % candidates.size])
                if j not in row:
                    negatives[t] = j
                    break
    return negatives


# ---------------------------------------------------------------------- MLP scoring
#
# A model is a list of dense layers (W, b, activation): W has shape (out, in) like
# torch.nn.Linear.weight, b shape (out,) or None, and layer l computes
# h_{l+1} = act(h_l @ W.T + b). The last layer has one output: the score.
#
# Candidate scoring gathers, for candidate c of user u with item id i, the input row
#
#     x_c = [user_vectors[u] | user_features[u] | item_table[i] | item_features[i] |
#            candidate_features[c]]
#
# (absent blocks are left out) and scores it with the model. Candidates are given CSR-like:
# user u owns candidate_ids[indptr[u]:indptr[u + 1]] (a user may have none).
#
# Ranking keeps, per user, the k best candidates by score descending, ties by the smaller
# item id, each id once (a repeated candidate counts once, at its best score: repeats differ
# when their candidate features do), and only candidates whose score is a number above
# -inf; rows are padded with id -1 and score -inf.
#
# precision="bfloat16" rounds the weights and the input of every layer between the first
# and the last to bfloat16 (nearest, ties to even) and accumulates the products exactly
# (here: float64); the bias is added unrounded. The first layer (raw features: rounding
# them costs the most accuracy for the least work) and the last (the score) stay float32.
# "float32" computes in float64 from the float32 values.
#
# precision="int8" quantizes the same middle layers (quantize_int8_rows): each weight row
# once, each input row of such a layer per candidate; the layer's output is the exact
# integer sum of products times (input row's scale x weight row's scale), plus the bias.
#
# Ranking under bfloat16 or int8 (mlp_rank_rescored) chooses and orders candidates by
# float32 scores: per user, a band of the best candidates by their rough (bfloat16 or int8)
# score (repeated ids included) is rescored in float32 and ranked by those scores (each id
# at its best). The band starts at max(2k, 16) and doubles until it holds every candidate
# or the float32 k-th score beats the band's lowest rough score by more than
# MLP_RESCORE_MARGIN times the largest |rough - float32| gap seen in the band (a candidate
# outside would need a rough-score error that much larger than any seen to belong to the
# top k).

MLP_RESCORE_MIN_BAND = 16
MLP_RESCORE_MARGIN = 4.0
MLP_ACTIVATIONS = ("relu", "gelu", "sigmoid", "tanh", "identity")


def mlp_activation(name: str, x: np.ndarray) -> np.ndarray:
    """The activation ``name`` elementwise. gelu is the exact form x * Φ(x) with the erf
    (torch.nn.GELU's default, approximate="none"), not the tanh approximation."""
    if name == "relu":
        return np.maximum(x, 0.0)
    if name == "gelu":
        from scipy.special import erf

        with np.errstate(invalid="ignore"):  # -inf * 0 at x = -inf: NaN, as torch's GELU
            return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))
    if name == "sigmoid":
        with np.errstate(over="ignore"):
            return 1.0 / (1.0 + np.exp(-x))
    if name == "tanh":
        return np.tanh(x)
    if name == "identity":
        return x
    raise ValueError(f"activation must be one of {MLP_ACTIVATIONS}, got {name!r}")


def round_to_bfloat16(x) -> np.ndarray:
    """float32 values rounded to the nearest bfloat16 (ties to even), as float32.
    NaN stays NaN; values beyond bfloat16's range become inf."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    out = rounded.astype(np.uint32).view(np.float32)
    return np.where(np.isnan(x), np.float32(np.nan), out)


INT8_ZERO_ROW = 2.0**-120  # below this largest magnitude a row quantizes to zeros
INT8_MAX_INPUTS = (2**31 - 1) // 127**2  # 133,144: an int8 layer's exact sum fits int32


def quantize_int8_rows(x, xp=np) -> tuple[np.ndarray, np.ndarray]:
    """(q, scale): each row of the float32 matrix x in int8 values (as float32) and its
    scale, so that x ≈ q * scale[:, None]. In float32: m = max |x|, q = rint(x * (127 / m))
    (ties to even) clipped to [-127, 127], scale = m / 127. A row whose m is below
    INT8_ZERO_ROW is zeros with scale 0; a row holding NaN or inf is zeros with scale NaN
    (its outputs are NaN). ``xp``: the array module (NumPy, or CuPy for its backend)."""
    x = xp.asarray(x, dtype=xp.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        m = xp.abs(x).max(axis=1) if x.shape[1] else xp.zeros(x.shape[0], xp.float32)
        finite = xp.isfinite(x).all(axis=1)
        scaled = finite & (m >= xp.float32(INT8_ZERO_ROW))
        inverse = xp.float32(127) / xp.where(scaled, m, xp.float32(1))
        q = xp.clip(xp.rint(x * inverse[:, None]), -127, 127).astype(xp.float32)
        q[~scaled] = 0
        scale = xp.where(scaled, m / xp.float32(127),
                         xp.where(finite, xp.float32(0), xp.float32(xp.nan)))
    return q, scale.astype(xp.float32)


def mlp_forward(layers, X, precision: str = "float32") -> np.ndarray:
    """The model's outputs for the rows of X (n x in), in float64: (n, out_last)."""
    h = np.asarray(X, dtype=np.float64)
    for position, (W, b, activation) in enumerate(layers):
        W = np.asarray(W, dtype=np.float32)
        middle = 0 < position < len(layers) - 1
        if precision == "bfloat16" and middle:
            W = round_to_bfloat16(W)
            h = round_to_bfloat16(h.astype(np.float32))
        if precision == "int8" and middle:
            q, scale = quantize_int8_rows(h.astype(np.float32))
            q_w, scale_w = quantize_int8_rows(W)
            with np.errstate(invalid="ignore"):  # NaN rows: NaN outputs
                z = (q.astype(np.float64) @ q_w.astype(np.float64).T) * (
                    scale[:, None] * scale_w[None, :]).astype(np.float64)
        else:
            z = np.asarray(h, np.float64) @ W.astype(np.float64).T
        if b is not None:
            z = z + np.asarray(b, np.float32).astype(np.float64)
        h = mlp_activation(activation, z)
    return h


def mlp_gather(user_vectors, indptr, candidate_ids, item_table, user_features=None,
               item_features=None, candidate_features=None) -> np.ndarray:
    """The concatenated input rows of every candidate (total x in), in float64."""
    indptr = np.asarray(indptr, dtype=np.int64)
    ids = np.asarray(candidate_ids, dtype=np.int64)
    users = np.repeat(np.arange(indptr.size - 1), np.diff(indptr))
    blocks = [np.asarray(user_vectors, np.float64)[users]]
    if user_features is not None:
        blocks.append(np.asarray(user_features, np.float64)[users])
    blocks.append(np.asarray(item_table, np.float64)[ids])
    if item_features is not None:
        blocks.append(np.asarray(item_features, np.float64)[ids])
    if candidate_features is not None:
        blocks.append(np.asarray(candidate_features, np.float64))
    return np.concatenate(blocks, axis=1)


def mlp_score_candidates(layers, user_vectors, indptr, candidate_ids, item_table,
                         user_features=None, item_features=None, candidate_features=None,
                         precision: str = "float32") -> np.ndarray:
    """The score of every candidate (total,), in float64."""
    X = mlp_gather(user_vectors, indptr, candidate_ids, item_table, user_features,
                   item_features, candidate_features)
    return mlp_forward(layers, X, precision)[:, 0]


def mlp_rank_scores(indptr, candidate_ids, scores, k: int):
    """(ids int64 users x k, scores float64 users x k): each user's k best candidates by
    full sort (score descending, ties by smaller id, each id once, NaN and -inf dropped)."""
    indptr = np.asarray(indptr, dtype=np.int64)
    ids_all = np.asarray(candidate_ids, dtype=np.int64)
    scores_all = np.asarray(scores, dtype=np.float64)
    users = indptr.size - 1
    ids = np.full((users, k), -1, dtype=np.int64)
    out = np.full((users, k), -np.inf)
    for u in range(users):
        cand = ids_all[indptr[u]:indptr[u + 1]]
        s = scores_all[indptr[u]:indptr[u + 1]]
        keep = s > -np.inf
        cand, s = cand[keep], s[keep]
        order = np.lexsort((cand, -s))
        cand, s = cand[order], s[order]
        first = first_occurrences(cand)
        cand, s = cand[first][:k], s[first][:k]
        ids[u, : cand.size] = cand
        out[u, : cand.size] = s
    return ids, out


def first_occurrences(ids: np.ndarray) -> np.ndarray:
    """The sorted positions of each distinct value's first occurrence in ``ids``."""
    return np.sort(np.unique(ids, return_index=True)[1])


def mlp_rank_rescored(indptr, candidate_ids, rough, exact, k: int):
    """(ids int64 users x k, scores float64 users x k): the bfloat16 and int8 ranking rule
    (see above). ``rough``: every candidate's bfloat16 (int8) score; ``exact(positions)``: the float32
    scores of the candidates at those positions (of the flat candidate list)."""
    indptr = np.asarray(indptr, dtype=np.int64)
    ids_all = np.asarray(candidate_ids, dtype=np.int64)
    rough = np.asarray(rough, dtype=np.float64)
    users = indptr.size - 1
    ids = np.full((users, k), -1, dtype=np.int64)
    out = np.full((users, k), -np.inf)
    for u in range(users):
        positions = np.arange(indptr[u], indptr[u + 1])
        positions = positions[rough[positions] > -np.inf]
        order = positions[np.lexsort((positions, ids_all[positions], -rough[positions]))]
        want = max(2 * k, MLP_RESCORE_MIN_BAND)
        while True:
            band = order[:want]  # best bfloat16 score first
            scores = np.asarray(exact(band), dtype=np.float64)
            keep = scores > -np.inf
            ranked = np.lexsort((ids_all[band][keep], -scores[keep]))
            ranked = ranked[first_occurrences(ids_all[band][keep][ranked])][:k]
            top, top_scores = band[keep][ranked], scores[keep][ranked]
            if band.size < want:
                break
            with np.errstate(invalid="ignore"):  # inf - inf: a NaN gap (dropped), not done
                gaps = np.abs(rough[band] - scores)
                error = gaps[np.isfinite(gaps)].max(initial=0.0)
                if top.size == k and top_scores[-1] - rough[band[-1]] > MLP_RESCORE_MARGIN * error:
                    break
            want *= 2
        ids[u, : top.size] = ids_all[top]
        out[u, : top.size] = top_scores
    return ids, out

# ============================================================================ explicit ALS
# Alternating least squares for ratings with weighted-λ regularisation (Zhou, Wilkinson,
# Schreiber, Pan 2008, "ALS-WR"), optionally with biases. The model predicts
# r̂_ui = μ + b_u + b_i + x_u·y_i (biased) or x_u·y_i (μ = 0, no biases). A half-sweep
# re-solves every row u of a ratings matrix R (rows x cols; repeated (u, i) entries each
# count once more) with the other side fixed. With z_i = (y_i, 1) and unknowns w_u = (x_u, b_u)
# when biased (z_i = y_i and w_u = x_u otherwise), and n_u the number of entries of row u:
#
#     (Σ_i z_i z_iᵀ + n_u D) w_u = Σ_i (r_ui − μ − b_i) z_i,    D = diag(λ, …, λ, λ_b)
#
# the exact minimiser of Σ_i (r_ui − μ − b_i − b_u − x_u·y_i)² + n_u (λ‖x_u‖² + λ_b b_u²).
# A row without entries gets x_u = 0 (and b_u = 0). A row whose system is not positive
# definite in the model's precision (impossible with λ > 0 in exact arithmetic; also inf or
# NaN sums), or whose solution is not finite in the model's dtype, keeps its previous values
# and is counted. The reference solves in float64, the kernels in the model's dtype: a row
# whose sums overflow that dtype fails in the kernels and may still be solved here, and on
# systems conditioned far beyond the dtype's 1/eps which rows fail depends on rounding;
# elsewhere (zero pivots, solutions past the dtype) they agree. The item half-sweep is the
# same with the roles swapped.


def explicit_als_half_sweep(R: sp.csr_matrix, Y, X, *, reg: float, reg_bias: float | None = None,
                            global_mean: float = 0.0, other_bias=None, own_bias=None):
    """One explicit ALS half-sweep as defined above; returns (X, own_bias, failed).

    ``R``: CSR (rows x cols) of ratings; its stored entries are used as they are (duplicates
    included, zeros included). ``Y``: cols x k fixed; ``X``: rows x k. Biased when
    ``other_bias`` (cols) and ``own_bias`` (rows) are given, else μ is ignored and the
    returned own_bias is None. Solved in float64, returned in ``X.dtype``; inputs unchanged.
    """
    dtype = np.asarray(X).dtype
    X = np.array(X, dtype=dtype)
    Y64 = np.asarray(Y, dtype=np.float64)
    if (other_bias is None) != (own_bias is None):
        raise ValueError("explicit_als_half_sweep is biased with other_bias and own_bias "
                         "both given, unbiased with neither; got one of them")
    own = None if own_bias is None else np.array(own_bias, dtype=dtype)
    biased = own is not None
    k = Y64.shape[1]
    reg_bias = reg if reg_bias is None else reg_bias
    diagonal = np.r_[np.full(k, float(reg)), [float(reg_bias)] if biased else []]
    failed = 0
    for u in range(R.shape[0]):
        cols = R.indices[R.indptr[u]:R.indptr[u + 1]]
        values = np.asarray(R.data[R.indptr[u]:R.indptr[u + 1]], dtype=np.float64)
        if cols.size == 0:
            X[u] = 0
            if own is not None:
                own[u] = 0
            continue
        Z = Y64[cols]
        target = values
        if biased:
            Z = np.c_[Z, np.ones(cols.size)]
            target = values - float(global_mean) - np.asarray(other_bias, dtype=np.float64)[cols]
        A = Z.T @ Z + cols.size * np.diag(diagonal)
        # as in als_half_sweep_counted: NumPy's Cholesky does not raise on inf or NaN entries
        # (sums that overflowed float64), so those rows, and unsolvable ones, fail here
        try:
            L = np.linalg.cholesky(A) if np.isfinite(A).all() else None
        except np.linalg.LinAlgError:
            L = None
        w = None if L is None else np.linalg.solve(L.T, np.linalg.solve(L, Z.T @ target))
        with np.errstate(over="ignore"):  # a solution past the model's dtype fails too
            w = None if w is None else w.astype(dtype)
        if w is None or not np.isfinite(w).all():
            failed += 1
            continue
        X[u] = w[:k]
        if own is not None:
            own[u] = w[k]
    return X, own, failed

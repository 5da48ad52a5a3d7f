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
Entries that are not stored have ``c = 1`` and ``p = 0``.

``solver="cholesky"`` solves exactly; a row whose system is not positive definite (possible
only with regularization 0 or negative values) keeps its previous vector, and
``als_half_sweep_counted`` reports how many did. ``solver="cg"`` runs ``cg_steps`` steps of
conjugate gradient from the current ``x_u`` (the algorithm below, step for step), and
stops early when the squared residual norm falls below ``CG_TOLERANCE``.

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


def gram(Y: np.ndarray) -> np.ndarray:
    """YᵀY in Y's dtype."""
    return Y.T @ Y


def _row_system(R: sp.csr_matrix, u: int, Y, G, regularization, alpha, confidence):
    start, end = R.indptr[u], R.indptr[u + 1]
    cols = R.indices[start:end]
    w, q = confidence_weights(R.data[start:end], alpha, confidence)
    Yu = Y[cols]
    A = G + regularization * np.eye(Y.shape[1], dtype=Y.dtype) + (Yu.T * w) @ Yu
    b = Yu.T @ q
    return A.astype(Y.dtype), b.astype(Y.dtype)


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
                           solver="cg", cg_steps=3) -> tuple[np.ndarray, int]:
    """``als_half_sweep`` that also returns the number of rows left unchanged (Cholesky rows
    whose system is not positive definite)."""
    dtype = Y.dtype
    failed = 0
    X = np.array(X, dtype=dtype, copy=True)
    G = gram(Y)
    for u in range(R.shape[0]):
        A, b = _row_system(R, u, Y, G, dtype.type(regularization), dtype.type(alpha), confidence)
        if solver == "cholesky":
            try:
                lower = np.linalg.cholesky(A)
            except np.linalg.LinAlgError:
                failed += 1
                continue
            X[u] = np.linalg.solve(lower.T, np.linalg.solve(lower, b))
        elif solver == "cg":
            X[u] = conjugate_gradient(A, b, X[u], cg_steps)
        else:
            raise ValueError(f"solver must be 'cg' or 'cholesky', got {solver!r}")
    return X, failed


def conjugate_gradient(A: np.ndarray, b: np.ndarray, x0: np.ndarray, steps: int) -> np.ndarray:
    """``steps`` steps of CG on the SPD system A x = b from x0 (the exact algorithm backends use)."""
    x = x0.copy()
    r = b - A @ x
    p = r.copy()
    rs_old = r @ r
    if rs_old < CG_TOLERANCE:
        return x
    for _ in range(steps):
        Ap = A @ p
        step = rs_old / (p @ Ap)
        x += step * p
        r -= step * Ap
        rs_new = r @ r
        if rs_new < CG_TOLERANCE:
            break
        p = r + (rs_new / rs_old) * p
        rs_old = rs_new
    return x


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
    coo = R.tocoo()
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

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
# item id, each id once (a repeated candidate counts once), and only candidates whose score
# is a number above -inf; rows are padded with id -1 and score -inf.
#
# precision="bfloat16" rounds the weights and the input of every layer between the first
# and the last to bfloat16 (nearest, ties to even) and accumulates the products exactly
# (here: float64); the bias is added unrounded. The first layer (raw features: rounding
# them costs the most accuracy for the least work) and the last (the score) stay float32.
# "float32" computes in float64 from the float32 values.

MLP_ACTIVATIONS = ("relu", "gelu", "sigmoid", "tanh", "identity")


def mlp_activation(name: str, x: np.ndarray) -> np.ndarray:
    """The activation ``name`` elementwise. gelu is the exact form x * Φ(x) with the erf
    (torch.nn.GELU's default, approximate="none"), not the tanh approximation."""
    if name == "relu":
        return np.maximum(x, 0.0)
    if name == "gelu":
        from scipy.special import erf

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


def mlp_forward(layers, X, precision: str = "float32") -> np.ndarray:
    """The model's outputs for the rows of X (n x in), in float64: (n, out_last)."""
    h = np.asarray(X, dtype=np.float64)
    for position, (W, b, activation) in enumerate(layers):
        W = np.asarray(W, dtype=np.float32)
        if precision == "bfloat16" and 0 < position < len(layers) - 1:
            W = round_to_bfloat16(W)
            h = round_to_bfloat16(h.astype(np.float32))
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
        first = np.ones(cand.size, dtype=bool)
        first[1:] = cand[1:] != cand[:-1]  # a repeated id sorts next to itself (same score)
        cand, s = cand[first][:k], s[first][:k]
        ids[u, : cand.size] = cand
        out[u, : cand.size] = s
    return ids, out

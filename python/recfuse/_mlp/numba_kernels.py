"""The Numba kernels of the MLP backend (``numba_backend``), imported on first use.

Module-level functions, not closures: Numba's disk cache keys a function by its bytecode and
the pickled contents of its closure, and a dispatcher captured there pickles differently in
every process, so a kernel that called one compiled anew in each process (seconds) and added
another entry to the cache."""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import prange


@numba.njit(cache=True)
def round_bf16(h):
    flat = h.reshape(-1).view(np.uint32)
    for i in range(flat.size):
        b = flat[i]
        if (b & np.uint32(0x7FFFFFFF)) <= np.uint32(0x7F800000):
            wide = np.uint64(b) + np.uint64(0x7FFF) + np.uint64((b >> np.uint32(16)) & np.uint32(1))
            flat[i] = np.uint32(wide & np.uint64(0xFFFF0000))


@numba.njit(cache=True)
def activate(h, code):
    for i in range(h.shape[0]):
        for j in range(h.shape[1]):
            x = h[i, j]
            if code == 1:
                h[i, j] = 0.0 if x < 0 else x
            elif code == 2:
                h[i, j] = 0.5 * x * (1.0 + math.erf(x * 0.7071067811865476))
            elif code == 3:
                h[i, j] = 1.0 / (1.0 + math.exp(-x)) if x > -80.0 else math.exp(x)
            elif code == 4:
                h[i, j] = math.tanh(x)


@numba.njit(cache=True)
def quantize_int8(h):
    """(q, scale): reference.quantize_int8_rows of the rows of h (float32)."""
    n, K = h.shape
    q = np.zeros((n, K), np.float32)
    scale = np.zeros(n, np.float32)
    for i in range(n):
        m = np.float32(0.0)
        finite = True
        for k in range(K):
            x = h[i, k]
            finite = finite and np.isfinite(x)
            if abs(x) > m:
                m = abs(x)
        if not finite:
            scale[i] = np.nan
        elif m >= np.float32(2.0**-120):
            inverse = np.float32(127.0) / m
            for k in range(K):
                q[i, k] = min(max(np.rint(h[i, k] * inverse), np.float32(-127.0)),
                              np.float32(127.0))
            scale[i] = m / np.float32(127.0)
    return q, scale


@numba.njit(cache=True)
def layers_after_first(z, rest_t, rest_bias, rest_scale, codes, mode):
    """Activate the first layer's sums z and run the later layers (one block); the middle
    layers' inputs are rounded to bfloat16 (mode 1) or quantized to int8 (mode 2)."""
    activate(z, codes[0])
    h = z
    for layer in range(len(rest_t)):
        middle = layer < len(rest_t) - 1
        if mode == 1 and middle:
            round_bf16(h)
        if mode == 2 and middle:
            q, scale = quantize_int8(h)
            h2 = np.dot(q, rest_t[layer])
            scale_w = rest_scale[layer]
            for i in range(h2.shape[0]):
                for j in range(h2.shape[1]):
                    h2[i, j] = h2[i, j] * (scale[i] * scale_w[j]) + rest_bias[layer][j]
        else:
            h2 = np.dot(h, rest_t[layer])
            for i in range(h2.shape[0]):
                h2[i] += rest_bias[layer]
        activate(h2, codes[layer + 1])
        h = h2
    return h[:, 0].copy()


# nogil: concurrent MLPScorer calls from Python threads run side by side, as the ALS, SGD and
# top-k kernels do
@numba.njit(parallel=True, nogil=True, cache=True)
def forward(row_user, ids, user_part, item_part, use_item_part, item_blocks, n_item_blocks,
            cand, cand_width, W0, rest_t, rest_bias, rest_scale, codes, mode, out):
    total = row_user.size
    blocks = (total + 63) // 64
    K0 = W0.shape[0]
    H1 = W0.shape[1]
    for block in prange(blocks):
        r0 = block * 64
        n = min(total, r0 + 64) - r0
        X = np.zeros((n, max(K0, 1)), np.float32)
        for i in range(n):
            r = r0 + i
            col = 0
            for b in range(n_item_blocks):
                B = item_blocks[b]
                w = B.shape[1]
                X[i, col:col + w] = B[ids[r]]
                col += w
            if cand_width > 0:
                X[i, col:col + cand_width] = cand[r]
        if K0 > 0:
            z = np.dot(X, W0)
        else:
            z = np.zeros((n, H1), np.float32)
        for i in range(n):
            for j in range(H1):
                z[i, j] += user_part[row_user[r0 + i], j]
                if use_item_part:
                    z[i, j] += item_part[ids[r0 + i], j]
        out[r0:r0 + n] = layers_after_first(z, rest_t, rest_bias, rest_scale, codes, mode)

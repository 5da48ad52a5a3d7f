"""The Numba MLP backend: candidates in blocks of 64 rows over Numba's threads; each block
is gathered into a small buffer and run through every layer (np.dot, float32). bfloat16 is
emulated by rounding the middle layers' weights and inputs. Ranking sorts each user's scores like the
reference. Compiled on first use (cached on disk by Numba afterwards)."""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from .. import reference
from .._als.numba_backend import _thread_count, availability  # noqa: F401 - same probe as ALS
from . import Candidates, common

NAME = "numba"
_CODES = {"identity": 0, "relu": 1, "gelu": 2, "sigmoid": 3, "tanh": 4}
BLOCK_ROWS = 64


class Model(NamedTuple):
    first_t: np.ndarray    # W1ᵀ (in, out1), float32
    bias0: np.ndarray
    rest_t: object         # numba typed List of later Wᵀ (rounded under bfloat16)
    rest_bias: object
    codes: np.ndarray      # activation code per layer
    precision: str
    part_width: int
    float32_twin: object = None  # bfloat16: the float32 model rank rescores with


@functools.lru_cache(maxsize=None)
def _kernels():
    import math

    import numba
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
    def layers_after_first(z, rest_t, rest_bias, codes, bf16):
        """Activate the first layer's sums z and run the later layers (one block); under
        bfloat16 the inputs of the middle layers are rounded."""
        activate(z, codes[0])
        h = z
        for layer in range(len(rest_t)):
            if bf16 and layer < len(rest_t) - 1:
                round_bf16(h)
            h2 = np.dot(h, rest_t[layer])
            for i in range(h2.shape[0]):
                h2[i] += rest_bias[layer]
            activate(h2, codes[layer + 1])
            h = h2
        return h[:, 0].copy()

    @numba.njit(parallel=True, cache=True)
    def forward(row_user, ids, user_part, item_part, use_item_part, item_blocks, n_item_blocks,
                cand, cand_width, W0, rest_t, rest_bias, codes, bf16, out):
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
            out[r0:r0 + n] = layers_after_first(z, rest_t, rest_bias, codes, bf16)

    return numba, forward


def prepare(layers, precision: str, kernel: str = "auto") -> Model:
    if kernel not in ("auto",):
        raise ValueError(f"the numba backend has one kernel ('auto'), got kernel={kernel!r}")
    from numba.typed import List

    def rounded(W):
        return reference.round_to_bfloat16(W) if precision == "bfloat16" else W

    W0, b0, _ = layers[0]
    rest_t, rest_bias = List(), List()
    for position, (W, b, _) in enumerate(layers[1:], start=1):
        middle = position < len(layers) - 1
        rest_t.append(np.ascontiguousarray((rounded(W) if middle else W).T))
        rest_bias.append(np.zeros(W.shape[0], np.float32) if b is None else b)
    if len(rest_t) == 0:  # typed lists need one element to know their type
        rest_t.append(np.zeros((1, 1), np.float32))
        rest_bias.append(np.zeros(1, np.float32))
        rest_t.pop()
        rest_bias.pop()
    return Model(np.ascontiguousarray(W0.T), np.zeros(W0.shape[0], np.float32) if b0 is None else b0, rest_t, rest_bias,
                 np.array([_CODES[a] for _, _, a in layers], np.int64), precision,
                 -(-W0.shape[0] // common.PANEL) * common.PANEL,
                 prepare(layers, "float32") if precision == "bfloat16" else None)


def kernel_name(model) -> str:
    return "numba-" + model.precision


def part_width(model) -> int:
    return model.part_width


def _run(model: Model, call: Candidates, num_threads: int):
    from numba.typed import List

    numba, forward = _kernels()
    indptr = call.indptr
    users = indptr.size - 1
    total = int(indptr[-1])
    out = np.empty(total, np.float32)
    if total == 0:
        return out
    row_user = np.repeat(np.arange(users, dtype=np.int64), np.diff(indptr))
    user_part = np.tile(model.bias0, (max(users, 1), 1))
    column = 0
    for block in call.user_blocks:
        user_part += block @ model.first_t[column:column + block.shape[1]]
        column += block.shape[1]
    if call.item_part is not None:
        column += call.item_part_columns
    blocks = List()
    for block in call.item_blocks:
        blocks.append(block)
    count = len(blocks)
    if count == 0:
        blocks.append(np.zeros((1, 1), np.float32))
    cand = call.candidate_block if call.candidate_block is not None else np.zeros((1, 1), np.float32)
    cand_width = 0 if call.candidate_block is None else cand.shape[1]
    item_part = call.item_part if call.item_part is not None else np.zeros((1, 1), np.float32)
    ids = call.ids if call.ids is not None else np.zeros(total, np.int64)
    with _thread_count(numba, num_threads):
        forward(row_user, ids, user_part.astype(np.float32), item_part,
                call.item_part is not None, blocks, count, cand, cand_width,
                np.ascontiguousarray(model.first_t[column:]), model.rest_t,
                model.rest_bias, model.codes, model.precision == "bfloat16", out)
    return out


def score(model, inputs, num_threads: int = 0):
    n = inputs.shape[0]
    call = Candidates(np.array([0, n], np.int64), None, 0, [], [], inputs, None, 0)
    return _run(model, call, num_threads)


def item_part(model, item_blocks, column: int, num_threads: int = 0):
    X = np.concatenate(item_blocks, axis=1)
    part = np.zeros((X.shape[0], model.part_width), np.float32)
    part[:, : model.first_t.shape[1]] = X @ model.first_t[column:column + X.shape[1]]
    return part


def score_candidates(model, call: Candidates, num_threads: int = 0):
    return _run(model, call, num_threads)


def rank(model, call: Candidates, k: int, num_threads: int = 0):
    scores = _run(model, call, num_threads)
    return common.rank_candidates(call, scores, k, model.precision,
                                  lambda sub: _run(model.float32_twin, sub, num_threads))

"""The Numba MLP backend: candidates in blocks of 64 rows over Numba's threads; each block
is gathered into a small buffer and run through every layer (np.dot, float32). bfloat16 is
emulated by rounding the middle layers' weights and inputs, int8 by their int8 values in
float32 (exact sums up to 1,040 inputs). Ranking sorts each user's scores like the
reference. Compiled on first use (cached on disk by Numba afterwards)."""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from .. import _validation as check
from .. import reference
from .._als.numba_backend import _thread_count, availability  # noqa: F401 - same probe as ALS
from . import Candidates, common

NAME = "numba"
_CODES = {"identity": 0, "relu": 1, "gelu": 2, "sigmoid": 3, "tanh": 4}
BLOCK_ROWS = 64
_MODES = {"float32": 0, "bfloat16": 1, "int8": 2}  # numba_kernels.layers_after_first's mode


class Model(NamedTuple):
    first_t: np.ndarray    # W1ᵀ (in, out1), float32
    bias0: np.ndarray
    rest_t: object         # numba typed List of later Wᵀ (rounded under bfloat16, int8 values)
    rest_bias: object
    rest_scale: object     # typed List: int8 weight-row scales of each later layer (or empty)
    codes: np.ndarray      # activation code per layer
    precision: str
    part_width: int
    float32_twin: object = None  # bfloat16, int8: the float32 model rank rescores with


@functools.lru_cache(maxsize=None)
def _kernels():
    import numba

    from . import numba_kernels  # imports numba: only when the backend is used

    return numba, numba_kernels.forward


def prepare(layers, precision: str, kernel: str = "auto") -> Model:
    if kernel not in ("auto",):
        raise ValueError(f"the numba backend has one kernel ('auto'), got kernel={kernel!r}")
    from numba.typed import List

    def multiplied(W):  # (W as the layer multiplies it, int8 row scales or an empty array)
        if precision == "bfloat16":
            return reference.round_to_bfloat16(W), np.zeros(0, np.float32)
        if precision == "int8":
            return reference.quantize_int8_rows(W)
        return W, np.zeros(0, np.float32)

    W0, b0, _ = layers[0]
    rest_t, rest_bias, rest_scale = List(), List(), List()
    for position, (W, b, _) in enumerate(layers[1:], start=1):
        middle = position < len(layers) - 1
        W, scale = multiplied(W) if middle else (W, np.zeros(0, np.float32))
        rest_t.append(np.ascontiguousarray(W.T))
        rest_bias.append(np.zeros(W.shape[0], np.float32) if b is None else b)
        rest_scale.append(scale)
    if len(rest_t) == 0:  # typed lists need one element to know their type
        rest_t.append(np.zeros((1, 1), np.float32))
        rest_bias.append(np.zeros(1, np.float32))
        rest_scale.append(np.zeros(0, np.float32))
        rest_t.pop()
        rest_bias.pop()
        rest_scale.pop()
    return Model(np.ascontiguousarray(W0.T), np.zeros(W0.shape[0], np.float32) if b0 is None else b0, rest_t, rest_bias,
                 rest_scale, np.array([_CODES[a] for _, _, a in layers], np.int64), precision,
                 -(-W0.shape[0] // common.PANEL) * common.PANEL,
                 prepare(layers, "float32") if precision != "float32" else None)


def kernel_name(model) -> str:
    return "numba-" + model.precision


def part_width(model) -> int:
    return model.part_width


@common._ieee  # the first layer's NumPy products follow IEEE silently, as on every backend
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
    # read-only views, one numba type for every block: a typed List takes its first element's
    # type, and a read-only block after a writable one (np.load(mmap_mode="r")) was cast to
    # it with a NumbaTypeSafetyWarning
    for block in call.item_blocks:
        blocks.append(check.read_only_view(block))
    count = len(blocks)
    if count == 0:
        blocks.append(check.read_only_view(np.zeros((1, 1), np.float32)))
    cand = call.candidate_block if call.candidate_block is not None else np.zeros((1, 1), np.float32)
    cand_width = 0 if call.candidate_block is None else cand.shape[1]
    item_part = call.item_part if call.item_part is not None else np.zeros((1, 1), np.float32)
    ids = call.ids
    with _thread_count(numba, num_threads):
        forward(row_user, ids, user_part.astype(np.float32), item_part,
                call.item_part is not None, blocks, count, cand, cand_width,
                np.ascontiguousarray(model.first_t[column:]), model.rest_t,
                model.rest_bias, model.rest_scale, model.codes,
                _MODES[model.precision], out)
    return out


def score(model, inputs, num_threads: int = 0):
    n = inputs.shape[0]
    # every input given as a candidate row: the ids index no item block
    call = Candidates(np.array([0, n], np.int64), np.zeros(n, np.int64), 0, [], [], inputs,
                      None, 0)
    return _run(model, call, num_threads)


@common._ieee
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


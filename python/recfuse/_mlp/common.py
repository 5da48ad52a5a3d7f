"""The MLP scorer written once over an array module (NumPy or CuPy): the numpy and cupy
backends. Rows are processed in bounded chunks so that no full concatenated input matrix
is built for large calls."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import reference
from . import Candidates

PANEL = 32  # item parts are padded like the native kernel's (recfuse._core part_width)
CHUNK_ROWS = 16384


class Model(NamedTuple):
    layers: list          # (W (out, in), b (out,), activation) as xp float32 arrays
    rounded: list         # W, rounded to bfloat16 (as float32) in the middle layers under bf16
    precision: str
    xp: object


def prepare(xp, layers, precision: str) -> Model:
    host = [(W, np.zeros(W.shape[0], np.float32) if b is None else b, a) for W, b, a in layers]
    moved = [(xp.asarray(W), xp.asarray(b), a) for W, b, a in host]
    middle = range(1, len(host) - 1) if precision == "bfloat16" else range(0)
    rounded = [xp.asarray(reference.round_to_bfloat16(W)) if i in middle else xp.asarray(W)
               for i, (W, _, _) in enumerate(host)]
    return Model(moved, rounded, precision, xp)


def part_width(model: Model) -> int:
    out = model.layers[0][0].shape[0]
    return -(-out // PANEL) * PANEL


def _round(model: Model, x, layer: int):
    """The input of ``layer``, rounded to bfloat16 where that precision rounds it."""
    if model.precision != "bfloat16" or not 0 < layer < len(model.layers) - 1:
        return x
    xp = model.xp
    bits = x.astype(xp.float32).view(xp.uint32).astype(xp.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).astype(xp.uint32)
    return xp.where(xp.isnan(x), xp.float32(xp.nan), rounded.view(xp.float32))


def _activate(xp, name: str, z):
    if name == "gelu":  # erf through the array module: CuPy has it in cupyx.scipy.special
        if xp is np:
            from scipy.special import erf
        else:
            from cupyx.scipy.special import erf
        return (0.5 * z * (1.0 + erf(z * np.float32(0.7071067811865476)))).astype(xp.float32)
    if name == "relu":
        return xp.where(z < 0, xp.float32(0), z)
    if name == "sigmoid":
        with np.errstate(over="ignore"):
            return (1.0 / (1.0 + xp.exp(-z))).astype(xp.float32)
    if name == "tanh":
        return xp.tanh(z)
    return z


def _rest(model: Model, z, first: int = 0):
    """Activate layer ``first`` and run the layers after it on the rows of z."""
    xp = model.xp
    h = _activate(xp, model.layers[first][2], z)
    for layer in range(first + 1, len(model.layers)):
        _, b, activation = model.layers[layer]
        h = _activate(xp, activation, _round(model, h, layer) @ model.rounded[layer].T + b)
    return h[:, 0]


def score(model: Model, inputs):
    xp = model.xp
    X = xp.asarray(inputs)
    W, b, _ = model.layers[0]
    out = xp.empty(X.shape[0], dtype=xp.float32)
    for r in range(0, X.shape[0], CHUNK_ROWS):
        chunk = X[r:r + CHUNK_ROWS]
        out[r:r + chunk.shape[0]] = _rest(model, chunk @ W.T + b)
    return out


def item_part(model: Model, item_blocks, column: int):
    xp = model.xp
    W = model.layers[0][0]
    X = xp.concatenate([xp.asarray(b) for b in item_blocks], axis=1)
    part = xp.zeros((X.shape[0], part_width(model)), dtype=xp.float32)
    part[:, : W.shape[0]] = X @ W[:, column:column + X.shape[1]].T
    return part


def score_candidates(model: Model, call: Candidates):
    xp = model.xp
    W, b, _ = model.layers[0]
    out_width = W.shape[0]
    indptr = np.asarray(call.indptr)
    users = np.repeat(np.arange(indptr.size - 1), np.diff(indptr))
    user_cols = sum(block.shape[1] for block in call.user_blocks)
    U = ([xp.asarray(block) for block in call.user_blocks])
    user_part = xp.zeros((indptr.size - 1, out_width), dtype=xp.float32) + b
    column = 0
    for block in U:
        user_part += block @ W[:, column:column + block.shape[1]].T
        column += block.shape[1]
    total = int(indptr[-1])
    out = xp.empty(total, dtype=xp.float32)
    ids = xp.asarray(call.ids)
    for r in range(0, total, CHUNK_ROWS):
        rows = slice(r, min(total, r + CHUNK_ROWS))
        z = user_part[xp.asarray(users[rows])]
        column = user_cols
        if call.item_part is not None:
            z = z + xp.asarray(call.item_part)[ids[rows], :out_width]
            column += call.item_part_columns
        blocks = [xp.asarray(block)[ids[rows]] for block in call.item_blocks]
        if call.candidate_block is not None:
            blocks.append(xp.asarray(call.candidate_block[rows]))
        if blocks:
            X = xp.concatenate(blocks, axis=1)
            z = z + X @ W[:, column:].T
        out[rows] = _rest(model, z)
    return out


def rank_scores(indptr, ids, scores, k: int):
    """Per-user top-k of given scores (host arrays): the reference's full sort, float32."""
    top_ids, top_scores = reference.mlp_rank_scores(indptr, ids, scores, k)
    return top_ids, top_scores.astype(np.float32)


def float32_twin(model: Model) -> Model:
    """The float32 model of the same weights (what bfloat16 ranking rescores with)."""
    return model._replace(rounded=[W for W, _, _ in model.layers], precision="float32")


def rank_candidates(call: Candidates, scores, k: int, precision: str, score_float32):
    """Per-user top-k of a call whose scores (host, in ``precision``) are given: a full sort
    in float32; under bfloat16 the reference's rescoring rule (``reference.mlp_rank_rescored``)
    with every user's band rescored in one call per round: ``score_float32(sub_call)`` gives
    the float32 scores (host) of a sub-call of several users (one call per user cost a device
    round trip each)."""
    if precision != "bfloat16":
        return rank_scores(call.indptr, call.ids, scores, k)
    indptr = np.asarray(call.indptr, dtype=np.int64)
    ids_all = np.asarray(call.ids, dtype=np.int64)
    # The backends' scores are float32: ordering by them as float32 keys is exact.
    rough = np.asarray(scores, dtype=np.float32).astype(np.float64)
    users = indptr.size - 1
    top_ids = np.full((users, k), -1, dtype=np.int64)
    top_scores = np.full((users, k), -np.inf, dtype=np.float32)
    orders = _rescoring_orders(indptr, ids_all, rough)
    want = np.full(users, max(2 * k, reference.MLP_RESCORE_MIN_BAND), dtype=np.int64)
    pending = np.arange(users)
    while pending.size:  # a round: every pending user's band, rescored in one call
        bands = [orders[u][:want[u]] for u in pending]
        sub_call = _subset(call, pending, bands)
        exact = (np.asarray(score_float32(sub_call), dtype=np.float64) if sub_call.ids.size
                 else np.zeros(0))
        cuts = np.cumsum([band.size for band in bands])[:-1]
        unfinished = []
        for u, band, band_scores in zip(pending, bands, np.split(exact, cuts)):
            keep = band_scores > -np.inf  # the rest of the round is the reference's, per user
            ranked = np.lexsort((ids_all[band][keep], -band_scores[keep]))[:k]
            top, values = band[keep][ranked], band_scores[keep][ranked]
            if band.size == want[u]:
                gaps = np.abs(rough[band] - band_scores)
                error = gaps[np.isfinite(gaps)].max(initial=0.0)
                if not (top.size == k and values[-1] - rough[band[-1]]
                        > reference.MLP_RESCORE_MARGIN * error):
                    want[u] *= 2
                    unfinished.append(u)
                    continue
            top_ids[u, :top.size] = ids_all[top]
            top_scores[u, :top.size] = values
        pending = np.asarray(unfinished, dtype=np.int64)
    return top_ids, top_scores


def _rescoring_orders(indptr, ids_all, rough) -> list:
    """Per user, the positions of its candidates with a score above -inf, by bfloat16 score
    descending, then id, then position, less each candidate whose id is its predecessor's
    (as in the reference). One stable sort of (user, score) packed in an integer key, then
    a lexsort of the tied runs only (a lexsort of the whole call took 4x as long)."""
    users = indptr.size - 1
    owner = np.repeat(np.arange(users, dtype=np.uint64), np.diff(indptr))
    positions = np.flatnonzero(rough > -np.inf)
    score = (rough[positions].astype(np.float32) + np.float32(0)).view(np.uint32)  # -0 is +0
    ascending = np.where(score >> 31, ~score, score | np.uint32(1 << 31))  # float order
    key = (owner[positions] << np.uint64(32)) | (~ascending).astype(np.uint64)
    sorted_at = np.argsort(key, kind="stable")
    order, key = positions[sorted_at], key[sorted_at]
    tied = np.zeros(order.size, dtype=bool)  # members of runs of equal (user, score)
    tied[1:] = key[1:] == key[:-1]
    tied[:-1] |= tied[1:]
    if tied.any():  # reorder each run by id (then position: the stable sort kept it)
        at = np.flatnonzero(tied)
        run = np.cumsum(~(np.concatenate([[False], key[at][1:] == key[at][:-1]])))
        order[at] = order[at][np.lexsort((order[at], ids_all[order[at]], run))]
    first = np.ones(order.size, dtype=bool)
    user = key >> np.uint64(32)
    first[1:] = (ids_all[order][1:] != ids_all[order][:-1]) | (user[1:] != user[:-1])
    order = order[first]
    counts = np.bincount(owner[order].astype(np.int64), minlength=users)
    return np.split(order, np.cumsum(counts)[:-1])


def _subset(call: Candidates, users, bands) -> Candidates:
    """The candidates at ``bands[j]`` (positions of the flat list, all of user ``users[j]``)
    as a call of those users, in that order."""
    positions = np.concatenate(bands) if bands else np.zeros(0, np.int64)
    indptr = np.zeros(len(bands) + 1, dtype=np.int64)
    np.cumsum([band.size for band in bands], out=indptr[1:])
    block = call.candidate_block
    return call._replace(
        indptr=indptr, ids=call.ids[positions],
        user_blocks=[np.ascontiguousarray(b[users]) for b in call.user_blocks],
        candidate_block=None if block is None else np.ascontiguousarray(block[positions]))

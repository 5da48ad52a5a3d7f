"""The MLP scorer written once over an array module (NumPy or CuPy): the numpy and cupy
backends. Rows are processed in bounded chunks so that no full concatenated input matrix
is built for large calls."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import numpy as np

from .. import reference
from .._validation import _native_usable
from . import Candidates

PANEL = 32  # item parts are padded like the native kernel's (recfuse._core part_width)
CHUNK_ROWS = 16384


def _ieee(function):
    """``function`` with NumPy's overflow and invalid-value warnings off: scores follow IEEE
    arithmetic silently, as the native kernels' do (an item row holding inf, which is not
    checked per call, or products that overflow give inf or NaN scores, which rank drops);
    the warnings were errors where warnings are. (A new errstate per call: one errstate
    object cannot be entered twice, nested or from two threads.)"""
    @functools.wraps(function)
    def quiet(*arguments):
        with np.errstate(over="ignore", invalid="ignore"):
            return function(*arguments)
    return quiet


class Model(NamedTuple):
    layers: list          # (W (out, in), b (out,), activation) as xp float32 arrays
    rounded: list         # W as multiplied: in the middle layers bfloat16-rounded, or int8 values
    scales: list          # int8: the middle layers' weight-row scales (None elsewhere)
    precision: str
    xp: Any  # the array module: numpy or cupy


def prepare(xp, layers, precision: str) -> Model:
    host = [(W, np.zeros(W.shape[0], np.float32) if b is None else b, a) for W, b, a in layers]
    moved = [(xp.asarray(W), xp.asarray(b), a) for W, b, a in host]
    rounded, scales = [], []
    for position, (W, _, _) in enumerate(host):
        scale = None
        if 0 < position < len(host) - 1 and precision == "bfloat16":
            W = reference.round_to_bfloat16(W)
        elif 0 < position < len(host) - 1 and precision == "int8":
            W, scale = reference.quantize_int8_rows(W)
        rounded.append(xp.asarray(W))
        scales.append(None if scale is None else xp.asarray(scale))
    return Model(moved, rounded, scales, precision, xp)


def part_width(model: Model) -> int:
    out = model.layers[0][0].shape[0]
    return -(-out // PANEL) * PANEL


def _dense(model: Model, h, layer: int):
    """Layer ``layer``'s sums (before its activation) for the rows h, in the model's
    precision (reference.mlp_forward)."""
    b = model.layers[layer][1]
    scale_w = model.scales[layer]
    if scale_w is None:
        return _round(model, h, layer) @ model.rounded[layer].T + b
    q, scale = reference.quantize_int8_rows(h, model.xp)  # int8: exact integer sums
    return (q @ model.rounded[layer].T) * (scale[:, None] * scale_w[None, :]) + b


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
        h = _activate(xp, model.layers[layer][2], _dense(model, h, layer))
    return h[:, 0]


@_ieee
def score(model: Model, inputs):
    xp = model.xp
    X = xp.asarray(inputs)
    W, b, _ = model.layers[0]
    out = xp.empty(X.shape[0], dtype=xp.float32)
    for r in range(0, X.shape[0], CHUNK_ROWS):
        chunk = X[r:r + CHUNK_ROWS]
        out[r:r + chunk.shape[0]] = _rest(model, chunk @ W.T + b)
    return out


@_ieee
def item_part(model: Model, item_blocks, column: int):
    xp = model.xp
    W = model.layers[0][0]
    X = xp.concatenate([xp.asarray(b) for b in item_blocks], axis=1)
    part = xp.zeros((X.shape[0], part_width(model)), dtype=xp.float32)
    part[:, : W.shape[0]] = X @ W[:, column:column + X.shape[1]].T
    return part


@_ieee
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
    """Per-user top-k of given float32 scores (host arrays): the reference's full sort
    (``reference.mlp_rank_scores``), run natively over users (the reference's loop took 20
    ms of host time for 64 users x 1,000 candidates, against 0.6 ms on a GPU to score them)."""
    if not _native_usable():  # the reference's own loop (the numba and numpy backends
        # work without the native module)
        top_ids, top_scores = reference.mlp_rank_scores(indptr, ids, scores, k)
        return top_ids, top_scores.astype(np.float32)
    from .. import _core

    return _core.mlp_rank_scores(np.ascontiguousarray(indptr, dtype=np.int64),
                                 np.ascontiguousarray(ids, dtype=np.int64),
                                 np.ascontiguousarray(scores, dtype=np.float32), k)


def float32_twin(model: Model) -> Model:
    """The float32 model of the same weights (what bfloat16 and int8 ranking rescore with)."""
    return model._replace(rounded=[W for W, _, _ in model.layers],
                          scales=[None] * len(model.layers), precision="float32")


def rank_candidates(call: Candidates, scores, k: int, precision: str, score_float32):
    """Per-user top-k of a call whose scores (host, in ``precision``) are given: a full sort
    in float32; under bfloat16 and int8 the reference's rescoring rule (``reference.mlp_rank_rescored``)
    with every user's band rescored in one call per round: ``score_float32(sub_call)`` gives
    the float32 scores (host) of a sub-call of several users (one call per user cost a device
    round trip each). A round's bookkeeping is vectorised over its users: 64 users x 1,000
    candidates took 7-15 ms of host time per call when each user's candidates were fully
    sorted and checked in a Python loop, against 0.44 ms for the device's bfloat16 pass."""
    if precision == "float32":
        return rank_scores(call.indptr, call.ids, scores, k)
    indptr = np.asarray(call.indptr, dtype=np.int64)
    ids_all = np.asarray(call.ids, dtype=np.int64)
    rough = np.asarray(scores, dtype=np.float32)  # the reference's float64 of these is exact
    users = indptr.size - 1
    top_ids = np.full((users, k), -1, dtype=np.int64)
    top_scores = np.full((users, k), -np.inf, dtype=np.float32)
    want = np.full(users, max(2 * k, reference.MLP_RESCORE_MIN_BAND), dtype=np.int64)
    pending = np.arange(users)
    while pending.size:  # a round: every pending user's band, rescored in one call
        positions, sizes = _bands(indptr, ids_all, rough, pending, want[pending])
        sub_call = _subset(call, pending, positions, sizes)
        exact = (np.asarray(score_float32(sub_call), dtype=np.float64) if positions.size
                 else np.zeros(0))
        owner = np.repeat(np.arange(pending.size), sizes)
        # Each user's kept band by float32 score descending, then id (stable: then band
        # order), each id at its first (best) place.
        kept = np.flatnonzero(exact > -np.inf)
        ranked = kept[np.lexsort((ids_all[positions[kept]], -exact[kept], owner[kept]))]
        ranked = ranked[_first_pairs(owner[ranked], ids_all[positions[ranked]])]
        rank = np.arange(ranked.size) - np.searchsorted(owner[ranked], owner[ranked])
        top, top_rank = ranked[rank < k], rank[rank < k]
        counts = np.bincount(owner[top], minlength=pending.size)
        kth = np.full(pending.size, -np.inf)
        kth[owner[top[top_rank == k - 1]]] = exact[top[top_rank == k - 1]]
        # Done: the band held every candidate left, or the float32 k-th score beats the band's
        # lowest bfloat16 score by the margin times the largest finite gap seen in the band.
        with np.errstate(invalid="ignore"):  # inf - inf: a NaN gap, dropped below
            gaps = np.abs(rough[positions].astype(np.float64) - exact)
        gaps[~np.isfinite(gaps)] = 0.0
        error = np.zeros(pending.size)
        np.maximum.at(error, owner, gaps)
        full = sizes == want[pending]
        lowest = np.full(pending.size, np.nan)
        lowest[full] = rough[positions[np.cumsum(sizes)[full] - 1]].astype(np.float64)
        with np.errstate(invalid="ignore"):  # inf - inf: not done, the band widens
            done = ~full | ((counts == k) & (kth - lowest > reference.MLP_RESCORE_MARGIN * error))
        finished = done[owner[top]]
        rows, columns, at = pending[owner[top[finished]]], top_rank[finished], top[finished]
        top_ids[rows, columns] = ids_all[positions[at]]
        top_scores[rows, columns] = exact[at]
        want[pending[~done]] *= 2
        pending = pending[~done]
    return top_ids, top_scores


def _bands(indptr, ids_all, rough, users, wants) -> tuple[np.ndarray, np.ndarray]:
    """(positions, sizes): per user ``users[j]``, in turn, the first ``wants[j]`` positions
    of its candidates with a score above -inf, by bfloat16 score descending, then id, then
    position (as in the reference; repeated ids included).

    Only a prefix is ever needed, so each user's candidates are not all sorted: the ones at
    or above its want-th best score (a partition) are, and their order is the prefix of the
    full one (everything below comes after them). Users go in groups of one want and of
    lengths within a factor of two, each group's scores padded into one matrix."""
    lengths = indptr[users + 1] - indptr[users]
    # floor(log2(length)) + 1, 0 for none: the lengths of one bucket are within 2x
    buckets = np.where(lengths > 0, np.log2(np.maximum(lengths, 1)).astype(np.int64) + 1, 0)
    if users.size and np.all(wants == wants[0]) and np.all(buckets == buckets[0]):
        owner, positions = _group_bands(indptr, ids_all, rough, users, int(wants[0]))
    else:
        owners, bands = [], []
        for want, bucket in np.unique(np.stack([wants, buckets]), axis=1).T:
            group = np.flatnonzero((wants == want) & (buckets == bucket))
            row, at = _group_bands(indptr, ids_all, rough, users[group], int(want))
            owners.append(group[row])
            bands.append(at)
        owner = np.concatenate(owners) if owners else np.zeros(0, np.int64)
        order = np.argsort(owner, kind="stable")
        positions = (np.concatenate(bands) if bands else owner)[order]
    return positions.astype(np.int64, copy=False), np.bincount(owner, minlength=users.size)


def _group_bands(indptr, ids_all, rough, users, want: int) -> tuple[np.ndarray, np.ndarray]:
    """_bands for users of one want whose lengths are within 2x of each other, as (row in
    ``users``, position) pairs, ordered by row and then along each band."""
    starts = indptr[users]
    lengths = indptr[users + 1] - starts
    width = int(lengths.max(initial=0))
    if lengths.min() == width and np.all(starts == starts[0] + width * np.arange(users.size)):
        values = rough[starts[0]:starts[0] + width * users.size].reshape(users.size, width)
    else:  # padded with -inf
        column = np.arange(width)
        inside = column[None, :] < lengths[:, None]
        values = np.full((users.size, width), -np.inf, dtype=rough.dtype)
        values[inside] = rough[(starts[:, None] + column[None, :])[inside]]
    values = np.where(values > -np.inf, values, -np.inf)  # NaN: not a candidate either
    if width > want:
        threshold = np.partition(values, width - want, axis=1)[:, width - want]
        chosen = values >= threshold[:, None]
        if not np.all(threshold > -np.inf):  # fewer than want candidates in some row
            chosen &= values > -np.inf
    else:
        chosen = values > -np.inf
    row, col = np.nonzero(chosen)
    positions = starts[row] + col
    order = np.lexsort((positions, ids_all[positions], -rough[positions], row))
    positions, row = positions[order], row[order]
    keep = np.arange(row.size) - np.searchsorted(row, row) < want  # rank along the band
    return row[keep], positions[keep]


def _subset(call: Candidates, users, positions, sizes) -> Candidates:
    """The candidates at ``positions`` of the flat list (``sizes[j]`` of them for user
    ``users[j]``, in turn) as a call of those users, in that order."""
    indptr = np.zeros(sizes.size + 1, dtype=np.int64)
    np.cumsum(sizes, out=indptr[1:])
    block = call.candidate_block
    return call._replace(
        indptr=indptr, ids=call.ids[positions],
        user_blocks=[np.ascontiguousarray(b[users]) for b in call.user_blocks],
        candidate_block=None if block is None else np.ascontiguousarray(block[positions]))


def _first_pairs(owners: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The sorted positions of each distinct (owner, id) pair's first occurrence: as
    ``reference.first_occurrences`` of one key per pair, but without forming owner * span +
    id, which wraps in int64 for ids near 2**63 / users (then users collided)."""
    order = np.lexsort((np.arange(owners.size), ids, owners))
    sorted_owners, sorted_ids = owners[order], ids[order]
    first = np.ones(order.size, dtype=bool)
    first[1:] = (sorted_owners[1:] != sorted_owners[:-1]) | (sorted_ids[1:] != sorted_ids[:-1])
    return np.sort(order[first])

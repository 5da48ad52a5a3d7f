"""The NumPy SGD backend: the reference loops themselves (slow; always available).

An epoch runs with NumPy's floating-point errors ignored, as the native and Numba kernels
run: a diverging fit overflows to inf/NaN quietly and the model's own check refuses it with
"diverged" (a ValueError). Under ``np.seterr(all="raise")`` or ``-W error`` NumPy's
FloatingPointError or RuntimeWarning would otherwise escape instead, on this backend only.
"""

from __future__ import annotations

import numpy as np

from .. import reference
from .common import Blocks, Pattern

NAME = "numpy"


def availability() -> tuple[bool, str]:
    return True, ""


@np.errstate(all="ignore")
def svd_epoch(blocks: Blocks, ratings, global_mean, user_bias, item_bias, P, Q, lr, reg, biased,
              num_threads) -> None:
    user_bias[...], item_bias[...], P[...], Q[...] = reference.svd_sgd_epoch(
        blocks.users, blocks.items, ratings, global_mean, user_bias, item_bias, P, Q,
        lr=lr[:4], reg=reg[:4], biased=biased)


@np.errstate(all="ignore")
def svdpp_epoch(blocks: Blocks, ratings, global_mean, user_bias, item_bias, P, Q, Y,
                implicit: Pattern, lr, reg) -> None:
    user_bias[...], item_bias[...], P[...], Q[...], Y[...] = reference.svdpp_sgd_epoch(
        blocks.users, blocks.items, ratings, global_mean, user_bias, item_bias, P, Q, Y,
        implicit.to_scipy(Q.shape[0]), lr=lr, reg=reg)


@np.errstate(all="ignore")
def bpr_epoch(blocks: Blocks, seen: Pattern, P, Q, item_bias, lr, reg, seed, max_tries,
              negatives, num_threads) -> int:
    negatives[...] = reference.bpr_sample_negatives(
        blocks.users, blocks.offsets, blocks.grid, seen.to_scipy(Q.shape[0]), blocks.bin_items,
        blocks.bin_offsets, seed, max_tries)
    kept = (negatives >= 0).nonzero()[0]
    P[...], Q[...], item_bias[...] = reference.bpr_sgd_epoch(
        blocks.users, blocks.items, negatives, P, Q, item_bias, lr=lr, reg=reg, order=kept)
    return int(negatives.size - kept.size)


@np.errstate(all="ignore")
def explicit_als_half_sweep(R, Y, X, other_bias, own_bias, global_mean, reg, reg_bias,
                            num_threads) -> int:
    X[...], bias, failed = reference.explicit_als_half_sweep(
        R.to_scipy(), Y, X, reg=reg, reg_bias=reg_bias, global_mean=global_mean,
        other_bias=other_bias, own_bias=own_bias)
    if own_bias is not None:
        own_bias[...] = bias
    return failed

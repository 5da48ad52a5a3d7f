"""The native CPU SGD backend: recfuse._core (C++17, OpenMP, block scheduling, runtime SIMD)."""

from __future__ import annotations

from .._als.cpu import _IMPORT_ERROR, _core
from .common import Blocks, Pattern

NAME = "cpu"
# Fits hand this backend factor rows padded to whole cache lines (common.training_rows).
ROW_ALIGNMENT = 64


def availability() -> tuple[bool, str]:
    if _core is None:
        return False, _IMPORT_ERROR
    return True, f"SIMD level {_core.simd_level()}"


def svd_epoch(blocks: Blocks, ratings, global_mean, user_bias, item_bias, P, Q, lr, reg, biased,
              num_threads) -> None:
    _core.svd_epoch(blocks.users, blocks.items, ratings, blocks.offsets, blocks.grid,
                    float(global_mean), user_bias, item_bias, P, Q, lr, reg, biased, num_threads)


def svdpp_epoch(blocks: Blocks, ratings, global_mean, user_bias, item_bias, P, Q, Y,
                implicit: Pattern, lr, reg) -> None:
    _core.svdpp_epoch(blocks.users, blocks.items, ratings, blocks.offsets, blocks.grid,
                      float(global_mean), user_bias, item_bias, P, Q, Y, implicit.indptr,
                      implicit.indices, lr, reg)


def bpr_epoch(blocks: Blocks, seen: Pattern, P, Q, item_bias, lr, reg, seed, max_tries,
              negatives, num_threads) -> int:
    return _core.bpr_epoch(blocks.users, blocks.items, blocks.offsets, blocks.grid, seen.indptr,
                           seen.indices, blocks.bin_items, blocks.bin_offsets, P, Q, item_bias,
                           float(lr), float(reg), int(seed), int(max_tries), negatives,
                           num_threads)


def explicit_als_half_sweep(R, Y, X, other_bias, own_bias, global_mean, reg, reg_bias,
                            num_threads) -> int:
    return _core.explicit_als_half_sweep(R.indptr, R.indices, R.data, Y, X, other_bias, own_bias,
                                         float(global_mean), float(reg), float(reg_bias),
                                         num_threads)

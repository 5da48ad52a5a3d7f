"""The CUDA SGD backend: Funk SVD by batch-Hogwild SGD (recfuse._cuda, cuda/sgd.cu).

Only ``svd_epoch`` runs on the device: SVD++, BPR and explicit ALS have no CUDA kernel, so
``resolve_backend(..., needs=...)`` skips this module for them under ``backend="auto"``
and names the alternatives when it is asked for by name. One warp updates a batch of
consecutive ratings (in the order of the block layout); warps race on shared rows as
Hogwild does, so results are not bitwise reproducible, unlike the CPU block schedule.
Each call copies the ratings and factors to the device and back (one epoch per call, so
that progress and callbacks see every epoch). The kernel has NOT YET RUN ON A GPU:
tests/test_gpu_sgd.py checks it against the sequential reference where a device exists.
"""

from __future__ import annotations

from .._als.cuda import _module
from .._als.cuda import availability as _device_availability
from .common import Blocks

NAME = "cuda"


def availability() -> tuple[bool, str]:
    available, detail = _device_availability()
    return available, (f"SVD only (batch-Hogwild) on {detail}" if available else detail)


def svd_epoch(blocks: Blocks, ratings, global_mean, user_bias, item_bias, P, Q, lr, reg, biased,
              num_threads) -> None:
    del num_threads  # the device decides its own parallelism
    _module().svd_epochs_hogwild(blocks.users, blocks.items, ratings, float(global_mean),
                                 user_bias, item_bias, P, Q, tuple(lr), tuple(reg), bool(biased),
                                 1)

"""The CUDA SGD backend: Funk SVD by batch-Hogwild SGD (recfuse._cuda, cuda/sgd.cu).

Only Funk SVD runs on the device: SVD++, BPR and explicit ALS have no CUDA kernel, so
``resolve_backend(..., needs=...)`` skips this module for them under ``backend="auto"``
and names the alternatives when it is asked for by name. One warp updates a batch of
consecutive ratings (in the order of the block layout); warps race on shared rows as
Hogwild does, so results are not bitwise reproducible, unlike the CPU block schedule.

``svd_trainer`` keeps one fit on the device (``recfuse.SVD`` uses it: the ratings and
factors are uploaded once per fit and copied back only when the model reads them, after
the last epoch or for a callback); ``svd_epoch``, the backend contract's one-epoch call,
copies everything there and back each time. tests/test_gpu_sgd.py checks both on a device.
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


def svd_trainer(blocks: Blocks, ratings, user_bias, item_bias, P, Q):
    """A device-resident fit (``recfuse._cuda.SvdHogwildFloat32/64``) of these ratings from
    these host biases and factors: ``epochs(mean, lr, reg, biased, epochs)`` trains on the
    device, ``download(user_bias, item_bias, P, Q)`` copies the model back into them."""
    return _module().svd_hogwild(blocks.users, blocks.items, ratings, user_bias, item_bias, P, Q)

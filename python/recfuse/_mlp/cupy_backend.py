"""The CuPy MLP backend: recfuse._mlp.common over CuPy (cuBLAS matrix products in float32;
bfloat16 emulated by rounding). Host arrays in and out; the weights stay on the device.
Written for GPU machines without recfuse._cuda; CuPy is imported only when used.

Its tests ran on an NVIDIA H200 (2026-11-28); elsewhere they skip with the reason."""

from __future__ import annotations

import numpy as np

from .._als.cupy_backend import availability  # noqa: F401 - the same probe as the ALS family
from . import Candidates, common

NAME = "cupy"


def _cupy():
    import cupy

    return cupy


def prepare(layers, precision: str, kernel: str = "auto"):
    if kernel not in ("auto",):
        raise ValueError(f"the cupy backend has one kernel ('auto'), got kernel={kernel!r}")
    return common.prepare(_cupy(), layers, precision)


def kernel_name(model) -> str:
    return "cupy-" + model.precision


def part_width(model) -> int:
    return common.part_width(model)


def score(model, inputs, num_threads: int = 0):
    return _cupy().asnumpy(common.score(model, inputs))


def item_part(model, item_blocks, column: int, num_threads: int = 0):
    return _cupy().asnumpy(common.item_part(model, item_blocks, column))


def score_candidates(model, call: Candidates, num_threads: int = 0):
    return _cupy().asnumpy(common.score_candidates(model, call))


def rank(model, call: Candidates, k: int, num_threads: int = 0):
    cupy = _cupy()
    scores = cupy.asnumpy(common.score_candidates(model, call))
    twin = common.float32_twin(model)
    return common.rank_candidates(call, np.asarray(scores), k, model.precision,
                                  lambda sub: cupy.asnumpy(common.score_candidates(twin, sub)))

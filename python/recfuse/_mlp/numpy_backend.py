"""The NumPy MLP backend: recfuse._mlp.common over NumPy (float32 matrix products by BLAS;
bfloat16 emulated by rounding weights and inputs). Slow for ranking: the reference's
full sort per user."""

from __future__ import annotations

import numpy as np

from . import Candidates, common

NAME = "numpy"


def availability() -> tuple[bool, str]:
    return True, ""


def prepare(layers, precision: str, kernel: str = "auto"):
    if kernel not in ("auto",):
        raise ValueError(f"the numpy backend has one kernel ('auto'), got kernel={kernel!r}")
    return common.prepare(np, layers, precision)


def kernel_name(model) -> str:
    return "numpy-" + model.precision


def part_width(model) -> int:
    return common.part_width(model)


def score(model, inputs, num_threads: int = 0):
    return common.score(model, inputs)


def item_part(model, item_blocks, column: int, num_threads: int = 0):
    return common.item_part(model, item_blocks, column)


def score_candidates(model, call: Candidates, num_threads: int = 0):
    return common.score_candidates(model, call)


def rank(model, call: Candidates, k: int, num_threads: int = 0):
    scores = common.score_candidates(model, call)
    twin = common.float32_twin(model)
    return common.rank_candidates(call, scores, k, model.precision,
                                  lambda sub: common.score_candidates(twin, sub))

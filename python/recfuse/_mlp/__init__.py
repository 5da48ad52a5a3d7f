"""MLP scorer backends, one module per backend (see recfuse._backend.FAMILIES).

Each module implements the contract of ``recfuse.reference.mlp_*`` through:

``prepare(layers, precision, kernel) -> model``
    layers: list of (W float32 C-contiguous (out, in), b float32 (out,) or None, activation
    name), checked to chain and end in one output; precision "float32", "bfloat16" or
    "int8" (the cuda backend: not int8);
    kernel "auto" or a native kernel name (the cpu and cuda backends have several).
``score(model, inputs, num_threads) -> float32 (n,)``
    inputs: float32 C-contiguous (n, in).
``item_part(model, item_blocks, column, num_threads) -> float32 (items, part_width(model))``
    The first layer's contribution of item blocks that start at input column ``column``
    (no bias): ``[blocks] @ W1[:, column:column + width].T``, zero padded on the right.
``score_candidates(model, call, num_threads) -> float32 (total,)``
``rank(model, call, k, num_threads) -> (ids int64 (users, k), scores float32 (users, k))``
    call: a ``Candidates`` (below), validated by recfuse.ranking. Under bfloat16 and int8:
    ``reference.mlp_rank_rescored`` on the bfloat16 (int8) scores, rescoring in float32
    (``common.rank_candidates`` does it for the array-module and cuda backends; the cpu
    backend in its native code).
``kernel_name(model) -> str``, ``part_width(model) -> int``

Under precision="bfloat16" every backend rounds the weights and inputs of the layers
between the first and the last to bfloat16 and accumulates in float32; the first and the
last layer stay float32 (recfuse.reference). Under precision="int8" the same layers
quantize their weights (once) and inputs (per row, per call) to int8
(``reference.quantize_int8_rows``) and sum the products exactly: the cpu backend in integers,
the numba, numpy and cupy backends in float32, exact up to 1,040 inputs per layer.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Candidates(NamedTuple):
    """The candidates of one call; see recfuse.reference.mlp_gather for the input row."""

    indptr: np.ndarray            # int64 (users + 1,)
    ids: np.ndarray               # int64 (total,)
    items: int                    # rows of the item blocks (ids lie in [0, items))
    user_blocks: list             # float32 (users, width) each, in column order
    item_blocks: list             # float32 (items, width) each; empty when item_part is set
    candidate_block: np.ndarray | None  # float32 (total, width)
    item_part: np.ndarray | None  # float32 (items, part_width): replaces the item blocks
    item_part_columns: int        # input columns the item part covers

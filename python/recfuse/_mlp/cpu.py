"""The native CPU MLP backend: recfuse._core.MlpModel (C++17, OpenMP, runtime SIMD level;
AVX512-BF16 or AMX kernels for bfloat16; the int8 kernel on AVX2, scalar below it)."""

from __future__ import annotations

from .._als.cpu import _core, availability  # noqa: F401 - the same probe as the ALS family
from . import Candidates

NAME = "cpu"


def prepare(layers, precision: str, kernel: str = "auto"):
    supported = {name: (ok, why) for name, ok, why in _core.mlp_kernels()}
    if kernel != "auto" and kernel not in supported:  # as the other backends say it
        raise ValueError(f"the cpu backend's kernel must be one of {('auto', *supported)}, "
                         f"got kernel={kernel!r}")
    if kernel == "auto":
        kernel = {"float32": "float32", "bfloat16": "avx512bf16", "int8": "int8"}[precision]
        # AMX is never picked by itself: that kernel has not yet run on an AMX CPU.
    if precision == "bfloat16" and kernel == "avx512bf16" and not supported[kernel][0]:
        raise ValueError(
            f"precision='bfloat16' on the cpu backend needs AVX512-BF16 (or AMX, "
            f"kernel='amx'): {supported[kernel][1]}; use precision='float32', or "
            f"backend='numba'/'numpy' (bfloat16 emulated in float32, slow)")
    weights = [W for W, _, _ in layers]
    biases = [b for _, b, _ in layers]
    activations = [a for _, _, a in layers]
    return _core.MlpModel(weights, biases, activations, precision, kernel)


def kernel_name(model) -> str:
    return model.kernel


def part_width(model) -> int:
    return model.part_width


def score(model, inputs, num_threads: int = 0):
    return model.score(inputs, num_threads)


def item_part(model, item_blocks, column: int, num_threads: int = 0):
    return model.item_part(item_blocks, column, num_threads)


def _arguments(call: Candidates):
    return (call.indptr, call.ids, call.items, call.user_blocks, call.item_blocks,
            call.candidate_block, call.item_part, call.item_part_columns)


# Positional arguments: pybind11 matches keywords by name on every call (about 1.5 µs a
# call).
def score_candidates(model, call: Candidates, num_threads: int = 0):
    return model.score_candidates(*_arguments(call), num_threads)


def rank(model, call: Candidates, k: int, num_threads: int = 0):
    return model.rank(*_arguments(call), k, num_threads)
